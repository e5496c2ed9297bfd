//go:build unix

package kvstore

import (
	"os"

	"golang.org/x/sys/unix"
)

const canMmap = true

// mapFile maps size bytes of f read-only; unmap releases the mapping.
func mapFile(f *os.File, size int) (data []byte, unmap func() error, err error) {
	data, err = unix.Mmap(int(f.Fd()), 0, size, unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return nil, nil, err
	}
	_ = unix.Madvise(data, unix.MADV_SEQUENTIAL) // a hint; failure is harmless
	return data, func() error { return unix.Munmap(data) }, nil
}

// lockFile takes an exclusive flock on f, a temporary file being written,
// held until f is closed (see Disk.cleanTemp).
func lockFile(f *os.File) error {
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX)
		if err != unix.EINTR {
			return err
		}
	}
}

// tryLockFile takes an exclusive flock on f without waiting: false when
// another descriptor (a live writer, in any process) holds one.
func tryLockFile(f *os.File) (bool, error) {
	err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
	if err == unix.EWOULDBLOCK {
		return false, nil
	}
	return err == nil, err
}
