// Package blas holds the dense float32 kernels the model runtime is built on:
// a blocked, cache-aware GEMM in Go, parallel over the machine's cores. On
// amd64 with AVX a small assembly micro-kernel (6 rows × 16 outputs,
// vectorised across outputs, no FMA) computes the bulk of large products;
// everywhere else, and with the build tag purego, scalar Go kernels do, with
// bit-identical results. Constant weights can be packed once (Pack) for
// MatMulTPacked, which skips the per-call repacking and, on CPUs with
// AVX-512, runs a 6×32 kernel in 512-bit registers (same operations per
// lane, same bits).
// Backends with faster kernels (OpenBLAS, CUDA) live in leaf packages behind
// build tags and register themselves with package model; they can also be
// installed here, process-wide, with SetKernel.
//
// # Summation order
//
// Every output element of the pure-Go kernel is one dot product accumulated
// in float32, strictly in order of increasing k:
//
//	out[i,j] = (((0 + a[i,0]·b[j,0]) + a[i,1]·b[j,1]) + ...) + a[i,k-1]·b[j,k-1]
//
// whatever the shape, the blocking, the micro-kernel that computed the
// element, or the number of goroutines. So a row computed alone (decode,
// m=1) is bit-identical to the same row computed inside a batch (prefill),
// and MatMul equals MatMulT on the transposed b. The model's exactness
// ladder (incremental decode == full recompute, chunked prefill == one
// shot) relies on this. Kernels installed with SetKernel (OpenBLAS) do not
// promise it.
package blas

import (
	"fmt"
	"sync/atomic"
)

// Kernel is a dense float32 GEMM implementation. Implementations must be safe
// for concurrent use and must not retain the slices after returning.
//
// The openblas backend (package model/openblas, build tag openblas)
// implements it; install one process-wide with SetKernel.
type Kernel interface {
	// MatMulT computes out[m,n] = a[m,k] · b[n,k]^T; see the package function.
	MatMulT(out, a, b []float32, m, n, k int)
	// MatMul computes out[m,n] = a[m,k] · b[k,n]; see the package function.
	MatMul(out, a, b []float32, m, n, k int)
}

// Go is the pure-Go kernel of this package. It is always available and is
// the reference other kernels are tested against.
var Go Kernel = goKernel{}

type kernelBox struct{ k Kernel }

var current atomic.Pointer[kernelBox]

// SetKernel makes k the kernel behind the package functions MatMulT and
// MatMul and returns the previous one. SetKernel(nil) restores Go.
// It is safe to call concurrently with MatMulT; calls already running finish
// on the kernel they started with.
func SetKernel(k Kernel) (prev Kernel) {
	if k == nil {
		k = Go
	}
	old := current.Swap(&kernelBox{k})
	if old == nil {
		return Go
	}
	return old.k
}

// Current returns the kernel behind the package functions.
func Current() Kernel {
	if b := current.Load(); b != nil {
		return b.k
	}
	return Go
}

// MatMulT computes out[m,n] = a[m,k] · b[n,k]^T.
//
// b is row-major [n,k], the layout weights are stored in ([out,in]), so this
// is the product every linear layer needs. out is overwritten.
// Shapes: len(a) >= m*k, len(b) >= n*k, len(out) >= m*n.
// It panics on negative dimensions or short slices (a caller bug, like an
// out-of-range index).
func MatMulT(out, a, b []float32, m, n, k int) {
	if bx := current.Load(); bx != nil {
		bx.k.MatMulT(out, a, b, m, n, k)
		return
	}
	goKernel{}.MatMulT(out, a, b, m, n, k)
}

// MatMul computes out[m,n] = a[m,k] · b[k,n] (both row-major). out is overwritten.
// Shapes: len(a) >= m*k, len(b) >= k*n, len(out) >= m*n. It panics like MatMulT.
func MatMul(out, a, b []float32, m, n, k int) {
	if bx := current.Load(); bx != nil {
		bx.k.MatMul(out, a, b, m, n, k)
		return
	}
	goKernel{}.MatMul(out, a, b, m, n, k)
}

// CheckShapes panics with a descriptive message unless out, a and b are long
// enough for an [m,k]·[k,n] product and every dimension is non-negative.
// Kernels call it first so that every implementation fails the same way.
func CheckShapes(op string, out, a, b []float32, m, n, k int) {
	if m < 0 || n < 0 || k < 0 {
		panic(fmt.Sprintf("blas.%s: negative dimension m=%d n=%d k=%d", op, m, n, k))
	}
	// The products are computed in int64-safe form: m*k etc. may not overflow
	// int on 64-bit hosts for any slice that can exist, but check anyway.
	need := func(name string, have, r, c int) {
		if r != 0 && c > (int(^uint(0)>>1))/r {
			panic(fmt.Sprintf("blas.%s: %s is [%d,%d], which overflows int", op, name, r, c))
		}
		if have < r*c {
			panic(fmt.Sprintf("blas.%s: len(%s)=%d < %d*%d (m=%d n=%d k=%d)", op, name, have, r, c, m, n, k))
		}
	}
	need("a", len(a), m, k)
	need("b", len(b), n, k)
	need("out", len(out), m, n)
}
