//go:build !amd64 || purego

package blas

// haveAVX is false: no assembly micro-kernel on this platform or build.
const haveAVX = false

func mulAdd6x16(a []float32, lda int, b []float32, kc int, c *[96]float32) {
	mulAdd6x16Go(a, lda, b, kc, c)
}

func dot8(a, b []float32, ldb int, c *[8]float32) { dot8Go(a, b, ldb, c) }

func axpy(s float32, x, y []float32) { axpyGo(s, x, y) }

func gemv4x16(a, b []float32, ldp int, c *[64]float32) { gemv4x16Go(a, b, ldp, c) }

func gemv1x16(a, b []float32, c *[16]float32) { gemv1x16Go(a, b, c) }

// haveAVX512 is false: no assembly micro-kernel on this platform or build.
const haveAVX512 = false

func mulAdd6x32(a []float32, lda int, b []float32, ldp, kc int, c *[192]float32) {
	mulAdd6x32Go(a, lda, b, ldp, kc, c)
}

func axpyRows(p, v []float32, ldv int, y []float32) { axpyRowsGo(p, v, ldv, y) }
