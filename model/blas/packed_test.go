package blas

import (
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
)

// packedShapes are the weights [n,k] TestMatMulTPacked runs every m in
// [1, 70] against: n around the panel (16), GEMV tile (64) and GEMM tile
// (96) widths, k around blockK (256) and odd.
var packedShapes = [][2]int{ // n, k
	{1, 1}, {3, 5}, {15, 7}, {16, 16}, {17, 31}, {63, 256}, {64, 257}, {65, 100},
	{96, 33}, {97, 255}, {130, 513},
}

// sameBits fails unless got and want are bit-identical.
func sameBits(t *testing.T, what string, got, want []float32) {
	t.Helper()
	for i := range want {
		if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
			t.Fatalf("%s: out[%d] = %v (%#08x), MatMulT gives %v (%#08x)", what, i,
				got[i], math.Float32bits(got[i]), want[i], math.Float32bits(want[i]))
		}
	}
}

// TestMatMulTPacked checks MatMulTPacked against Go.MatMulT bit for bit:
// every m in [1, 70] (GEMV, the few-row path, full and partial 6-row groups,
// one and two row tiles) on packedShapes, then the generic shapes and a few
// large ones that run on several goroutines.
func TestMatMulTPacked(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	check := func(m, n, k int) {
		t.Helper()
		a, b := randSlice(r, m*k), randSlice(r, n*k)
		want := make([]float32, m*n)
		Go.MatMulT(want, a, b, m, n, k)
		p := Pack(b, n, k)
		got := randSlice(r, m*n) // garbage: must be overwritten
		MatMulTPacked(got, a, p, m)
		sameBits(t, fmt.Sprintf("m=%d n=%d k=%d", m, n, k), got, want)
		if m == 1 {
			un := make([]float32, n*k)
			p.Unpack(un)
			sameBits(t, fmt.Sprintf("Unpack n=%d k=%d", n, k), un, b)
		}
	}
	for _, s := range packedShapes {
		for m := 1; m <= 70; m++ {
			check(m, s[0], s[1])
		}
	}
	for _, s := range shapes {
		check(s[0], s[1], s[2])
	}
	large := [][3]int{{640, 193, 300}, {16, 1376, 512}, {1, 1376, 512}, {150, 512, 1376}}
	if testing.Short() {
		large = large[1:3]
	}
	for _, s := range large {
		check(s[0], s[1], s[2])
	}
}

// TestMatMulTPackedScalar runs the same comparison with the SIMD kernel
// off, where Pack keeps b itself: the path of builds without AVX.
func TestMatMulTPackedScalar(t *testing.T) {
	if !useWide {
		t.Skip("the scalar path is the default here; TestMatMulTPacked runs it")
	}
	useWide = false
	defer func() { useWide = true }()
	r := rand.New(rand.NewPCG(5, 6))
	for _, s := range [][3]int{{1, 17, 9}, {5, 97, 257}, {33, 64, 100}} {
		m, n, k := s[0], s[1], s[2]
		a, b := randSlice(r, m*k), randSlice(r, n*k)
		want, got := make([]float32, m*n), make([]float32, m*n)
		Go.MatMulT(want, a, b, m, n, k)
		p := Pack(b, n, k)
		if p.Bytes() != 0 {
			t.Fatalf("scalar Pack holds %d bytes, want 0 (b itself)", p.Bytes())
		}
		MatMulTPacked(got, a, p, m)
		sameBits(t, fmt.Sprint(s), got, want)
		un := make([]float32, n*k)
		p.Unpack(un)
		sameBits(t, fmt.Sprint("Unpack ", s), un, b)
	}
}

// TestPackLayout pins the documented layout and memory cost.
func TestPackLayout(t *testing.T) {
	if !useWide {
		t.Skip("no panel layout without the SIMD kernel")
	}
	const n, k = 18, 3
	b := make([]float32, n*k)
	for i := range b {
		b[i] = float32(i + 1)
	}
	p := Pack(b, n, k)
	if gn, gk := p.Dims(); gn != n || gk != k {
		t.Fatalf("Dims() = %d,%d, want %d,%d", gn, gk, n, k)
	}
	if got, want := p.Bytes(), 4*32*k; got != want {
		t.Fatalf("Bytes() = %d, want %d (n padded to 32)", got, want)
	}
	for q := range 2 {
		for pp := range k {
			for l := range 16 {
				want := float32(0)
				if j := 16*q + l; j < n {
					want = b[j*k+pp]
				}
				if got := p.panels[(q*k+pp)*16+l]; got != want {
					t.Fatalf("panels[%d][%d][%d] = %v, want %v", q, pp, l, got, want)
				}
			}
		}
	}
	un := make([]float32, n*k)
	p.Unpack(un)
	for i := range b {
		if math.Float32bits(un[i]) != math.Float32bits(b[i]) {
			t.Fatalf("Unpack: [%d] = %v, want %v", i, un[i], b[i])
		}
	}
	clear(b) // Pack copied: the product must not change.
	out := make([]float32, n)
	a := []float32{1, 0, 0}
	MatMulTPacked(out, a, p, 1)
	if out[0] != 1 || out[17] != 52 {
		t.Fatalf("after clearing b: out = %v, want out[0]=1, out[17]=52", out)
	}
}

// TestPackedKernels checks the GEMV kernels against their Go references
// bit for bit, with subnormal, infinite and signed-zero inputs.
func TestPackedKernels(t *testing.T) {
	r := rand.New(rand.NewPCG(9, 10))
	special := []float32{0, float32(math.Copysign(0, -1)), 1e-40, -3e-39, float32(math.Inf(1)), 1e30, -1e-30}
	for _, kc := range []int{0, 1, 2, 7, 256, 301} {
		ldp := 16*kc + 5
		a, b := randSlice(r, kc), randSlice(r, 3*ldp+16*kc)
		for i := range b {
			if i%7 == 0 {
				b[i] = special[i%len(special)]
			}
		}
		var c1, c2 [64]float32
		for i := range c1 {
			c1[i] = float32(r.NormFloat64())
		}
		c2 = c1
		gemv4x16(a, b, ldp, &c1)
		gemv4x16Go(a, b, ldp, &c2)
		sameBits(t, fmt.Sprintf("gemv4x16 kc=%d", kc), c1[:], c2[:])
		var d1, d2 [16]float32
		copy(d1[:], c1[:])
		d2 = d1
		gemv1x16(a, b[ldp:], &d1)
		gemv1x16Go(a, b[ldp:], &d2)
		sameBits(t, fmt.Sprintf("gemv1x16 kc=%d", kc), d1[:], d2[:])
	}
}

func TestMatMulTPackedPanics(t *testing.T) {
	p := Pack(make([]float32, 12), 3, 4)
	for name, f := range map[string]func(){
		"nil packed": func() { MatMulTPacked(make([]float32, 3), make([]float32, 4), nil, 1) },
		"short a":    func() { MatMulTPacked(make([]float32, 6), make([]float32, 7), p, 2) },
		"short out":  func() { MatMulTPacked(make([]float32, 5), make([]float32, 8), p, 2) },
		"negative m": func() { MatMulTPacked(nil, nil, p, -1) },
		"short b":    func() { Pack(make([]float32, 11), 3, 4) },
		"short dst":  func() { p.Unpack(make([]float32, 11)) },
	} {
		func() {
			defer func() {
				msg, _ := recover().(string)
				if !strings.Contains(msg, "blas.") {
					t.Errorf("%s: panic %q, want a blas.* message", name, msg)
				}
			}()
			f()
		}()
	}
}

// TestKernel512 checks the 512-bit two-panel kernel against its Go
// reference bit for bit (special values included), and the packed product
// with it against the product without it.
func TestKernel512(t *testing.T) {
	if !haveAVX512 {
		t.Skip("no AVX-512 kernel on this CPU/build")
	}
	r := rand.New(rand.NewPCG(11, 12))
	special := []float32{0, float32(math.Copysign(0, -1)), 1e-40, -3e-39, float32(math.Inf(1)), 1e30, -1e-30}
	for _, kc := range []int{0, 1, 2, 7, 256} {
		const lda = 300
		ldp := 16*kc + 48
		a, b := randSlice(r, 5*lda+kc), randSlice(r, ldp+16*kc)
		for i := range a {
			if i%5 == 0 {
				a[i] = special[i%len(special)]
			}
		}
		var c1, c2 [192]float32
		for i := range c1 {
			c1[i] = float32(r.NormFloat64())
		}
		c2 = c1
		mulAdd6x32(a, lda, b, ldp, kc, &c1)
		mulAdd6x32Go(a, lda, b, ldp, kc, &c2)
		sameBits(t, fmt.Sprintf("mulAdd6x32 kc=%d", kc), c1[:], c2[:])
	}
	for _, s := range [][3]int{{70, 130, 513}, {7, 33, 17}, {640, 100, 300}} {
		m, n, k := s[0], s[1], s[2]
		a, b := randSlice(r, m*k), randSlice(r, n*k)
		p := Pack(b, n, k)
		with, without := make([]float32, m*n), make([]float32, m*n)
		MatMulTPacked(with, a, p, m)
		use512 = false
		MatMulTPacked(without, a, p, m)
		use512 = true
		sameBits(t, fmt.Sprint("512-bit vs 256-bit ", s), with, without)
	}
}
