package blas

import (
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
)

// shapes covers the paths of the kernel: empty, GEMV (m=1), odd m and n
// (micro-kernel remainders), k not a multiple of blockK, several tiles, and
// sizes above serialFlops so the goroutine path runs.
var shapes = [][3]int{ // m, n, k
	{0, 0, 0}, {0, 3, 4}, {3, 0, 4}, {2, 3, 0},
	{1, 1, 1}, {1, 2, 3}, {1, 5, 7}, {1, 4, 256}, {1, 7, 257}, {1, 1000, 300}, {1, 203, 1031},
	{2, 3, 1}, {3, 3, 3}, {3, 4, 5}, {5, 7, 11}, {4, 97, 255},
	{7, 100, 513}, {65, 97, 129}, {64, 96, 256}, {130, 193, 300}, {33, 250, 700},
}

func randSlice(r *rand.Rand, n int) []float32 {
	s := make([]float32, n)
	for i := range s {
		s[i] = float32(r.NormFloat64())
	}
	return s
}

// refT is the float32 reference of the documented summation order: one
// accumulator per output, increasing p. The kernel must match it bit for bit.
func refT(a, b []float32, m, n, k int) []float32 {
	out := make([]float32, m*n)
	for i := range m {
		for j := range n {
			var c float32
			for p := range k {
				c += a[i*k+p] * b[j*k+p]
			}
			out[i*n+j] = c
		}
	}
	return out
}

// checkClose compares got against a float64 evaluation of a·b^T. The bound
// is the classic one for recursive summation in precision u = 2^-24:
// |err| <= γ_k · Σ_p |a_ip·b_jp| with γ_k = k·u/(1-k·u), doubled for the
// rounding of each product; any kernel (other orders, FMA, OpenBLAS) meets it.
func checkClose(t *testing.T, got, a, b []float32, m, n, k int, bT bool) {
	t.Helper()
	const u = 1.0 / (1 << 24)
	for i := range m {
		for j := range n {
			var s, abs float64
			for p := range k {
				bv := b[p*n+j]
				if bT {
					bv = b[j*k+p]
				}
				x := float64(a[i*k+p]) * float64(bv)
				s += x
				abs += math.Abs(x)
			}
			g := float64(k+1) * u / (1 - float64(k+1)*u)
			if d := math.Abs(float64(got[i*n+j]) - s); d > 2*g*abs+1e-30 {
				t.Fatalf("out[%d,%d] = %v, want %v ± %g (diff %g)", i, j, got[i*n+j], s, 2*g*abs, d)
			}
		}
	}
}

func TestMatMulT(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for _, s := range shapes {
		m, n, k := s[0], s[1], s[2]
		t.Run(fmt.Sprintf("%dx%dx%d", m, n, k), func(t *testing.T) {
			a, b := randSlice(r, m*k), randSlice(r, n*k)
			out := randSlice(r, m*n) // garbage: must be overwritten
			Go.MatMulT(out, a, b, m, n, k)
			want := refT(a, b, m, n, k)
			for i := range want {
				if math.Float32bits(out[i]) != math.Float32bits(want[i]) {
					t.Fatalf("out[%d,%d] = %v, want %v (bit-exact sequential order)", i/n, i%n, out[i], want[i])
				}
			}
			checkClose(t, out, a, b, m, n, k, true)
		})
	}
}

// TestRowIndependence is the property the model's exactness ladder needs:
// each row of a batched product equals the row computed alone (decode), and
// a sub-batch equals the same rows of the full batch (chunked prefill).
func TestRowIndependence(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	const m, n, k = 37, 301, 777
	a, b := randSlice(r, m*k), randSlice(r, n*k)
	full := make([]float32, m*n)
	MatMulT(full, a, b, m, n, k)
	one := make([]float32, n)
	for i := range m {
		MatMulT(one, a[i*k:(i+1)*k], b, 1, n, k)
		for j := range n {
			if math.Float32bits(one[j]) != math.Float32bits(full[i*n+j]) {
				t.Fatalf("row %d col %d alone = %v, in batch = %v", i, j, one[j], full[i*n+j])
			}
		}
	}
	part := make([]float32, 5*n)
	MatMulT(part, a[10*k:15*k], b, 5, n, k)
	for x := range part {
		if part[x] != full[10*n+x] {
			t.Fatalf("chunk element %d = %v, want %v", x, part[x], full[10*n+x])
		}
	}
}

func TestMatMul(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	for _, s := range shapes {
		m, n, k := s[0], s[1], s[2]
		t.Run(fmt.Sprintf("%dx%dx%d", m, n, k), func(t *testing.T) {
			a, b := randSlice(r, m*k), randSlice(r, k*n)
			out := randSlice(r, m*n)
			Go.MatMul(out, a, b, m, n, k)
			bt := make([]float32, n*k)
			for p := range k {
				for j := range n {
					bt[j*k+p] = b[p*n+j]
				}
			}
			want := refT(a, bt, m, n, k)
			for i := range want {
				if math.Float32bits(out[i]) != math.Float32bits(want[i]) {
					t.Fatalf("out[%d,%d] = %v, want %v (bit-exact sequential order)", i/n, i%n, out[i], want[i])
				}
			}
			checkClose(t, out, a, b, m, n, k, false)
		})
	}
}

func TestShortSlicesPanic(t *testing.T) {
	tests := []struct {
		name    string
		f       func()
		wantMsg string
	}{
		{"short a", func() { MatMulT(make([]float32, 4), make([]float32, 3), make([]float32, 4), 2, 2, 2) }, "len(a)=3"},
		{"short b", func() { MatMul(make([]float32, 4), make([]float32, 4), make([]float32, 1), 2, 2, 2) }, "len(b)=1"},
		{"short out", func() { MatMulT(make([]float32, 3), make([]float32, 4), make([]float32, 4), 2, 2, 2) }, "len(out)=3"},
		{"negative", func() { MatMulT(nil, nil, nil, -1, 2, 2) }, "negative dimension"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			defer func() {
				r := recover()
				if r == nil || !strings.Contains(fmt.Sprint(r), tt.wantMsg) {
					t.Fatalf("panic = %v, want one mentioning %q", r, tt.wantMsg)
				}
			}()
			tt.f()
		})
	}
}

type countingKernel struct {
	Kernel
	calls int
}

func (c *countingKernel) MatMulT(out, a, b []float32, m, n, k int) {
	c.calls++
	c.Kernel.MatMulT(out, a, b, m, n, k)
}

func TestSetKernel(t *testing.T) {
	ck := &countingKernel{Kernel: Go}
	if prev := SetKernel(ck); prev != Go {
		t.Fatalf("SetKernel returned %v, want Go", prev)
	}
	defer SetKernel(nil)
	if Current() != Kernel(ck) {
		t.Fatal("Current() is not the installed kernel")
	}
	out := make([]float32, 1)
	MatMulT(out, []float32{2}, []float32{3}, 1, 1, 1)
	if ck.calls != 1 || out[0] != 6 {
		t.Fatalf("calls=%d out=%v, want 1 call and 6", ck.calls, out[0])
	}
	if prev := SetKernel(nil); prev != Kernel(ck) {
		t.Fatal("SetKernel(nil) did not return the installed kernel")
	}
	if Current() != Go {
		t.Fatal("SetKernel(nil) did not restore Go")
	}
}

// TestWideKernel checks that the SIMD micro-kernel (where the platform has
// one) gives the same bits as the scalar kernels and as its Go reference,
// including subnormal, infinite and signed-zero inputs.
func TestWideKernel(t *testing.T) {
	if !haveAVX {
		t.Skip("no assembly micro-kernel on this platform/build")
	}
	r := rand.New(rand.NewPCG(7, 8))
	special := []float32{0, float32(math.Copysign(0, -1)), 1e-40, -3e-39, float32(math.Inf(1)), 1e30, -1e-30}
	for _, kc := range []int{0, 1, 2, 7, 256} {
		a, b := randSlice(r, 5*11+kc), randSlice(r, 16*kc)
		for i := range a {
			if i%5 == 0 {
				a[i] = special[i%len(special)]
			}
		}
		var c1, c2 [96]float32
		for i := range c1 {
			c1[i] = float32(r.NormFloat64())
		}
		c2 = c1
		mulAdd6x16(a, 11, b, kc, &c1)
		mulAdd6x16Go(a, 11, b, kc, &c2)
		for i := range c1 {
			if math.Float32bits(c1[i]) != math.Float32bits(c2[i]) {
				t.Fatalf("kc=%d c[%d]: asm %v, Go %v", kc, i, c1[i], c2[i])
			}
		}
	}
	for _, kc := range []int{0, 3, 8, 9, 64, 301} {
		const ldb = 333
		a, b := randSlice(r, kc), randSlice(r, 7*ldb+kc)
		for i := range b {
			if i%7 == 0 {
				b[i] = special[i%len(special)]
			}
		}
		var c1, c2 [8]float32
		for i := range c1 {
			c1[i] = float32(r.NormFloat64())
		}
		c2 = c1
		dot8(a, b, ldb, &c1)
		dot8Go(a, b, ldb, &c2)
		for i := range c1 {
			if math.Float32bits(c1[i]) != math.Float32bits(c2[i]) {
				t.Fatalf("GEMV kc=%d c[%d]: asm %v, Go %v", kc, i, c1[i], c2[i])
			}
		}
	}
	for _, s := range shapes {
		m, n, k := s[0], s[1], s[2]
		a, b := randSlice(r, m*k), randSlice(r, n*k)
		wide, scalar := make([]float32, m*n), make([]float32, m*n)
		Go.MatMulT(wide, a, b, m, n, k)
		useWide = false
		Go.MatMulT(scalar, a, b, m, n, k)
		useWide = true
		for i := range wide {
			if math.Float32bits(wide[i]) != math.Float32bits(scalar[i]) {
				t.Fatalf("%v: out[%d] wide %v, scalar %v", s, i, wide[i], scalar[i])
			}
		}
	}
}
