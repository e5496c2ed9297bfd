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

// lockDir takes an exclusive advisory lock on dir/LOCK, so that two stores
// (in this process or another) never share a directory.
func lockDir(dir string) (unlock func() error, err error) {
	f, err := os.OpenFile(dir+"/LOCK", os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if err == unix.EWOULDBLOCK {
			return nil, ErrDirLocked
		}
		return nil, err
	}
	return f.Close, nil // closing the descriptor releases the lock
}
