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

// lockFile is a no-op where flock is unavailable.
func lockFile(f *os.File) error { return nil }

// tryLockFile reports a temporary file as unlocked where flock is
// unavailable: Disk.cleanTemp then goes by age alone (staleTempAge).
func tryLockFile(f *os.File) (bool, error) { return true, nil }
