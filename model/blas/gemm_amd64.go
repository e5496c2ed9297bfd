//go:build amd64 && !purego

package blas

import "golang.org/x/sys/cpu"

// haveAVX reports whether the AVX micro-kernel can run (CPU and OS support
// for the YMM registers).
var haveAVX = cpu.X86.HasAVX

//go:noescape
func mulAdd6x16AVX(a *float32, lda int, b *float32, kc int, c *[96]float32)

func mulAdd6x16(a []float32, lda int, b []float32, kc int, c *[96]float32) {
	if kc == 0 {
		return
	}
	// The assembly reads a[r*lda+p] for r < 6, p < kc and b[:16*kc].
	_ = a[5*lda+kc-1]
	_ = b[16*kc-1]
	mulAdd6x16AVX(&a[0], lda, &b[0], kc, c)
}
