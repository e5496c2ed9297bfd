// Package openblas is the "openblas" backend of package model: float32 GEMM
// through OpenBLAS's cblas_sgemm, via cgo.
//
// Everything but this comment is behind the build tag openblas, so the
// package compiles (empty) without OpenBLAS installed. With the tag, linking
// needs libopenblas (Debian: libopenblas-dev) and importing the package for
// its side effect registers the backend:
//
//	import _ "github.com/fusionrag/fusionrag/model/openblas" // go build -tags openblas
//
// The kernel also satisfies blas.Kernel, so blas.SetKernel(openblas.Kernel{})
// sends every blas.MatMulT of the process to OpenBLAS.
//
// The backend refuses to start (ErrSlowCore) when OpenBLAS picked a kernel
// set older than the CPU (Debian's 0.3.21 has detected virtualised Xeons as
// "Prescott", about 3x slower than the cpu backend): OpenBLAS reads
// OPENBLAS_CORETYPE when the library is loaded, before Go runs, so the fix
// is in the environment (OPENBLAS_CORETYPE=Haswell), not in code. It also
// sets OpenBLAS to one thread and splits large products over GOMAXPROCS
// goroutines itself: OpenBLAS's threads spin after each call and would
// otherwise compete with the Go goroutines of attention and of other
// requests.
//
// OpenBLAS does not promise the fixed summation order of model/blas: its
// results can differ in the last bits between a row computed alone and in a
// batch, or with the number of threads. Bit-exactness tests belong to the
// "cpu" backend; against it this one agrees within the float32 error bound
// of a k-term dot product.
package openblas
