// Package blas holds the dense float32 kernels the model runtime is built on:
// a blocked, cache-aware GEMM in pure Go, parallel over the machine's cores.
// Backends with faster kernels (OpenBLAS, CUDA) live in leaf packages behind
// build tags and register themselves with package model.
package blas

// MatMulT computes out[m,n] = a[m,k] · b[n,k]^T.
//
// b is row-major [n,k], the layout weights are stored in ([out,in]), so this
// is the product every linear layer needs. out is overwritten.
// Shapes: len(a) >= m*k, len(b) >= n*k, len(out) >= m*n.
func MatMulT(out, a, b []float32, m, n, k int) {
	panic("blas.MatMulT: not implemented yet")
}

// MatMul computes out[m,n] = a[m,k] · b[k,n] (both row-major). out is overwritten.
func MatMul(out, a, b []float32, m, n, k int) {
	panic("blas.MatMul: not implemented yet")
}
