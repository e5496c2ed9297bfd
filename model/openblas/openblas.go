//go:build openblas

package openblas

/*
#cgo LDFLAGS: -lopenblas
#include <cblas.h>
*/
import "C"

import (
	"math"
	"unsafe"

	"github.com/fusionrag/fusionrag/model"
	"github.com/fusionrag/fusionrag/model/blas"
)

// Name is the name the backend is registered under.
const Name = "openblas"

func init() {
	model.RegisterBackend(Name, func() (model.Backend, error) { return Kernel{}, nil })
}

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
	sgemm(out, a, b, m, n, k, C.CblasTrans, k)
}

// MatMul computes out[m,n] = a[m,k] · b[k,n] with cblas_sgemm
// (RowMajor, NoTrans, NoTrans).
func (Kernel) MatMul(out, a, b []float32, m, n, k int) {
	blas.CheckShapes("MatMul", out, a, b, m, n, k)
	if !fits(m, n, k) {
		blas.Go.MatMul(out, a, b, m, n, k)
		return
	}
	sgemm(out, a, b, m, n, k, C.CblasNoTrans, n)
}

// sgemm runs out[m,n] = a[m,k] · op(b) in row-major order, op(b) = b when
// transB is CblasNoTrans (b is [k,n], ldb = n) and b^T when CblasTrans (b is
// [n,k], ldb = k). Empty products write nothing; k == 0 zeroes out.
func sgemm(out, a, b []float32, m, n, k int, transB C.enum_CBLAS_TRANSPOSE, ldb int) {
	if m == 0 || n == 0 {
		return
	}
	if k == 0 {
		clear(out[:m*n])
		return
	}
	C.cblas_sgemm(C.CblasRowMajor, C.CblasNoTrans, transB,
		C.blasint(m), C.blasint(n), C.blasint(k),
		1, ptr(a), C.blasint(k), ptr(b), C.blasint(ldb),
		0, ptr(out), C.blasint(n))
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
