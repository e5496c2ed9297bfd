//go:build !unix

package kvstore

import (
	"errors"
	"os"
)

const canMmap = false

func mapFile(f *os.File, size int) ([]byte, func() error, error) {
	return nil, nil, errors.New("kvstore: mmap not supported on this platform")
}

// lockDir is a no-op where flock is unavailable: one store per directory is
// then the caller's duty.
func lockDir(dir string) (func() error, error) { return func() error { return nil }, nil }
