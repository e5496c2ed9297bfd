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

//go:noescape
func dot8AVX(a *float32, b *float32, ldb int, kc8 int, c *[8]float32)

// dot8 continues c[j] += a[p]·b[j*ldb+p] for j < 8 over p in [0, len(a)),
// in increasing p: the assembly takes whole groups of 8 p, Go the rest.
func dot8(a, b []float32, ldb int, c *[8]float32) {
	kc := len(a)
	if kc8 := kc / 8; kc8 > 0 && haveAVX {
		_ = b[7*ldb+kc-1] // the assembly reads b[j*ldb+p], j < 8, p < 8·kc8
		dot8AVX(&a[0], &b[0], ldb, kc8, c)
		a, b = a[kc8*8:], b[kc8*8:]
		kc -= kc8 * 8
	}
	dot8Go(a, b, ldb, c)
}

//go:noescape
func axpyAVX(s float32, x *float32, y *float32, n int)

// axpy computes y += s·x (len(x) >= len(y)): the assembly takes whole groups
// of 32 elements, axpyGo the rest. Elements are independent, so the split
// changes no bits.
func axpy(s float32, x, y []float32) {
	n := len(y) &^ 31
	if n > 0 && haveAVX {
		x = x[:len(y)]
		axpyAVX(s, &x[0], &y[0], n)
		x, y = x[n:], y[n:]
	}
	axpyGo(s, x, y)
}

//go:noescape
func gemv4x16AVX(a *float32, b *float32, ldp int, kc int, c *[64]float32)

//go:noescape
func gemv1x16AVX(a *float32, b *float32, kc int, c *[16]float32)

// gemv4x16 continues c[q*16+l] += a[p]·b[q*ldp+p*16+l] for q < 4, l < 16,
// in increasing p over [0, len(a)): four packed panels ldp floats apart.
func gemv4x16(a, b []float32, ldp int, c *[64]float32) {
	kc := len(a)
	if kc == 0 {
		return
	}
	_ = b[3*ldp+16*kc-1] // the assembly reads b[q*ldp : q*ldp+16*kc], q < 4
	gemv4x16AVX(&a[0], &b[0], ldp, kc, c)
}

// gemv1x16 continues c[l] += a[p]·b[p*16+l] for l < 16 over p in
// [0, len(a)), in increasing p: one packed panel.
func gemv1x16(a, b []float32, c *[16]float32) {
	kc := len(a)
	if kc == 0 {
		return
	}
	_ = b[16*kc-1]
	gemv1x16AVX(&a[0], &b[0], kc, c)
}

// haveAVX512 reports whether the 512-bit two-panel micro-kernel can run
// (AVX-512 Foundation, with OS support for the ZMM registers).
var haveAVX512 = cpu.X86.HasAVX512F

//go:noescape
func mulAdd6x32AVX512(a *float32, lda int, b *float32, ldp int, kc int, c *[192]float32)

// mulAdd6x32 continues c[r*32+h*16+l] += a[r*lda+p]·b[h*ldp+p*16+l] for
// r < 6, h < 2, l < 16, in increasing p over [0, kc): the 6×16 kernel on the
// two panels b[0:] and b[ldp:] at once. Only with haveAVX512.
func mulAdd6x32(a []float32, lda int, b []float32, ldp, kc int, c *[192]float32) {
	if kc == 0 {
		return
	}
	_ = a[5*lda+kc-1]
	_ = b[ldp+16*kc-1]
	mulAdd6x32AVX512(&a[0], lda, &b[0], ldp, kc, c)
}
