//go:build openblas

package openblas

/*
#cgo LDFLAGS: -lopenblas
#include <cblas.h>
*/
import "C"

import (
	"fmt"
	"math"
	"runtime"
	"slices"
	"sync"
	"unsafe"

	"golang.org/x/sys/cpu"

	"github.com/fusionrag/fusionrag/model"
	"github.com/fusionrag/fusionrag/model/blas"
)

// Name is the name the backend is registered under.
const Name = "openblas"

func init() {
	model.RegisterBackend(Name, newBackend)
}

// CoreEnv is the environment variable OpenBLAS reads, once when the library
// is loaded (before Go's main runs), to override its CPU detection.
const CoreEnv = "OPENBLAS_CORETYPE"

// avx2Cores are the OpenBLAS 0.3.x kernel sets (openblas_get_corename)
// with AVX2 or AVX-512 GEMM kernels.
var avx2Cores = []string{"Haswell", "Zen", "SkylakeX", "Cooperlake", "SapphireRapids"}

// ErrSlowCore is returned when OpenBLAS picked kernels older than the CPU
// (Debian's 0.3.21 detects some virtualised Xeons as "Prescott"): its SGEMM
// then runs about 3x slower than the cpu backend's, so the backend refuses
// rather than make the binary slower than without the tag.
var ErrSlowCore = fmt.Errorf("openblas: slow kernel set")

// newBackend checks the kernel set OpenBLAS chose and sets it to one
// thread: Kernel parallelises large products itself over GOMAXPROCS
// goroutines (one single-threaded sgemm each), so OpenBLAS's own thread
// pool, which spins after every call, never competes with Go's goroutines
// (attention, other requests) for the cores.
func newBackend() (model.Backend, error) {
	if err := checkCore(CoreName(), cpu.X86.HasAVX2); err != nil {
		return nil, err
	}
	SetThreads(1)
	return Kernel{}, nil
}

// checkCore refuses a pre-AVX2 kernel set on a CPU with AVX2.
func checkCore(core string, haveAVX2 bool) error {
	if !haveAVX2 || slices.Contains(avx2Cores, core) {
		return nil
	}
	return fmt.Errorf("%w: OpenBLAS chose its %q kernels on a CPU with AVX2, about 3x slower than the cpu backend; "+
		"start fusionrag with %s=Haswell (or SkylakeX on AVX-512 CPUs) in the environment, or use --backend cpu", ErrSlowCore, core, CoreEnv)
}

// CoreName is the kernel set OpenBLAS chose (openblas_get_corename).
func CoreName() string { return C.GoString(C.openblas_get_corename()) }

// Kernel computes GEMMs with OpenBLAS. The zero value is ready to use and
// safe for concurrent use (OpenBLAS ≥ 0.3.7 pthread builds lock internally).
// It implements model.Backend and blas.Kernel.
type Kernel struct{}

var (
	_ model.Backend = Kernel{}
	_ blas.Kernel   = Kernel{}
)

// Name returns "openblas".
func (Kernel) Name() string { return Name }

// MatMulT computes out[m,n] = a[m,k] · b[n,k]^T with cblas_sgemm
// (RowMajor, NoTrans, Trans). Shapes as blas.MatMulT; short slices panic
// the same way.
func (Kernel) MatMulT(out, a, b []float32, m, n, k int) {
	blas.CheckShapes("MatMulT", out, a, b, m, n, k)
	if !fits(m, n, k) {
		blas.Go.MatMulT(out, a, b, m, n, k)
		return
	}
	split(m, n, k, func(i0, i1, j0, j1 int) {
		sgemm(out[i0*n+j0:], a[i0*k:], b[j0*k:], i1-i0, j1-j0, k, C.CblasTrans, k, n)
	})
}

// MatMul computes out[m,n] = a[m,k] · b[k,n] with cblas_sgemm
// (RowMajor, NoTrans, NoTrans).
func (Kernel) MatMul(out, a, b []float32, m, n, k int) {
	blas.CheckShapes("MatMul", out, a, b, m, n, k)
	if !fits(m, n, k) {
		blas.Go.MatMul(out, a, b, m, n, k)
		return
	}
	split(m, n, k, func(i0, i1, j0, j1 int) {
		sgemm(out[i0*n+j0:], a[i0*k:], b[j0:], i1-i0, j1-j0, k, C.CblasNoTrans, n, n)
	})
}

// parallelFlops is the product size (m·n·k) from which split spreads a
// GEMM over goroutines: below it the goroutine hand-off costs more than
// it saves.
const parallelFlops = 1 << 18

// split runs part over blocks of out[m,n] on up to GOMAXPROCS goroutines:
// by rows when m has at least 4 per worker (prefill), else by columns in
// multiples of 16 (decode). Each part is one single-threaded sgemm.
func split(m, n, k int, part func(i0, i1, j0, j1 int)) {
	w := runtime.GOMAXPROCS(0)
	if w == 1 || m*n*k < parallelFlops {
		part(0, m, 0, n)
		return
	}
	var wg sync.WaitGroup
	if m >= 4*w {
		step := (m + w - 1) / w
		for i0 := 0; i0 < m; i0 += step {
			wg.Go(func() { part(i0, min(i0+step, m), 0, n) })
		}
	} else {
		step := ((n+w-1)/w + 15) &^ 15
		for j0 := 0; j0 < n; j0 += step {
			wg.Go(func() { part(0, m, j0, min(j0+step, n)) })
		}
	}
	wg.Wait()
}

// sgemm runs out[m,n] = a[m,k] · op(b) in row-major order, op(b) = b when
// transB is CblasNoTrans (b is [k,n] with row stride ldb) and b^T when
// CblasTrans (b is [n,k], row stride ldb); out has row stride ldc. Empty
// products write nothing; k == 0 zeroes out.
func sgemm(out, a, b []float32, m, n, k int, transB C.enum_CBLAS_TRANSPOSE, ldb, ldc int) {
	if m == 0 || n == 0 {
		return
	}
	if k == 0 {
		for i := range m {
			clear(out[i*ldc : i*ldc+n])
		}
		return
	}
	C.cblas_sgemm(C.CblasRowMajor, C.CblasNoTrans, transB,
		C.blasint(m), C.blasint(n), C.blasint(k),
		1, ptr(a), C.blasint(k), ptr(b), C.blasint(ldb),
		0, ptr(out), C.blasint(ldc))
}

// fits reports whether the dimensions fit OpenBLAS's blasint. Larger ones
// (never seen with real models) fall back to the pure-Go kernel rather than
// being truncated.
func fits(m, n, k int) bool {
	lim := int(math.MaxInt32)
	if unsafe.Sizeof(C.blasint(0)) == 8 {
		return true
	}
	return m <= lim && n <= lim && k <= lim
}

// ptr is the address of s[0]; callers ensure len(s) > 0. Passing it to C is
// allowed by the cgo rules: the memory holds no Go pointers and is not
// retained after the call.
func ptr(s []float32) *C.float { return (*C.float)(unsafe.Pointer(&s[0])) }

// Threads returns the number of threads OpenBLAS uses.
func Threads() int { return int(C.openblas_get_num_threads()) }

// SetThreads sets the number of threads OpenBLAS uses (n < 1: one).
func SetThreads(n int) { C.openblas_set_num_threads(C.int(max(n, 1))) }

// Config returns OpenBLAS's build description (version, core, threading).
func Config() string { return C.GoString(C.openblas_get_config()) }
