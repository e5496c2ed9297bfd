package kvstore

import (
	"fmt"
	"runtime/debug"
)

// copyMapped copies src, a file mapping, into dst and turns a fault while
// reading it into an error instead of a dead process. A mapped file that is
// truncated underneath us (by an operator, another process, a bad restore),
// or whose page cannot be read back from the device, raises SIGBUS on the
// access; by default the Go runtime treats that as fatal. With
// debug.SetPanicOnFault it panics instead, with a runtime.Error that has an
// Addr method, which this recovers.
//
// SetPanicOnFault is per goroutine, so it is armed and restored around the
// copy on the calling goroutine only; the fault must happen here, not in a
// later reader, which is why no mapping ever leaves this package: the disk
// tier copies out of it (see Disk.read) and unmaps before returning.
func copyMapped(dst, src []byte) (err error) {
	old := debug.SetPanicOnFault(true)
	defer func() {
		debug.SetPanicOnFault(old)
		if r := recover(); r != nil {
			f, ok := r.(interface{ Addr() uintptr })
			if !ok {
				panic(r) // not a memory fault: a real bug, keep it loud
			}
			err = &mappedFaultError{addr: f.Addr()}
		}
	}()
	copy(dst, src)
	return nil
}

// mappedFaultError is a fault (SIGBUS/SIGSEGV) reading a file mapping: the
// file shrank while mapped or its page could not be read.
type mappedFaultError struct{ addr uintptr }

func (e *mappedFaultError) Error() string {
	return fmt.Sprintf("fault reading mapped file at %#x (truncated while mapped, or an I/O error)", e.addr)
}
