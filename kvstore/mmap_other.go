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
