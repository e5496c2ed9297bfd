package model

import (
	"math"
	"math/rand/v2"
	"testing"
)

// TestRopeLlama3Frequencies checks the llama3-scaled inverse frequencies of
// Llama 3.1 8B (theta 500000, head dim 128, factor 8, low 1, high 4,
// original 8192) against values computed independently in float64 from the
// published formula: pair 20 is kept (wavelength < 2048), pair 30
// interpolated, pairs >= 40 divided by 8. Tolerance 1e-12 relative.
func TestRopeLlama3Frequencies(t *testing.T) {
	c := Config{HeadDim: 128, RopeTheta: 500000,
		RopeScaling: &RopeScaling{Type: "llama3", Factor: 8, LowFreqFactor: 1, HighFreqFactor: 4, OriginalMaxPositions: 8192}}
	r := newRope(c)
	for _, tc := range []struct {
		i    int
		want float64
	}{{0, 1}, {1, 0.8146172338565447}, {20, 0.016560440080994446}, {30, 0.0013718935677611381},
		{40, 3.428102195952591e-05}, {45, 1.2297638677963614e-05}, {46, 1.0017868402809974e-05},
		{50, 4.411534674558404e-06}, {63, 3.068925988914511e-07}} {
		if got := r.freq[tc.i]; math.Abs(got-tc.want) > 1e-12*tc.want {
			t.Errorf("freq[%d] = %.17g, want %.17g", tc.i, got, tc.want)
		}
	}
}

// TestRopeLayouts: rotate_half on permuted vectors equals the interleaved
// rotation (the HF conversion identity), rotations keep norms, and q·k
// depends only on the position difference (what makes moving a chunk exact
// up to rounding).
func TestRopeLayouts(t *testing.T) {
	const hd, heads = 16, 2
	base := Config{HeadDim: hd, RopeTheta: 10000}
	inter, half := base, base
	inter.RopeInterleaved = true
	ri, rh := newRope(inter), newRope(half)
	rng := rand.New(rand.NewPCG(1, 2))
	vec := func() []float32 {
		v := make([]float32, heads*hd)
		for i := range v {
			v[i] = float32(rng.NormFloat64())
		}
		return v
	}
	scratch := make([]float32, hd)
	for _, p := range []int32{0, 1, 7, 300, 20000} { // 20000 > table: computed on the fly
		x := vec()
		a := append([]float32(nil), x...)
		ri.apply(a, heads, p, scratch)
		b := permuteRotateHalf(x, heads, hd, 1)
		rh.apply(b, heads, p, scratch)
		want := permuteRotateHalf(a, heads, hd, 1)
		var n0, n1 float64
		for i := range b {
			if math.Abs(float64(b[i]-want[i])) > 1e-6 {
				t.Fatalf("pos %d: rotate_half(P x)[%d] = %g, P interleaved(x) = %g", p, i, b[i], want[i])
			}
			n0 += float64(x[i]) * float64(x[i])
			n1 += float64(a[i]) * float64(a[i])
		}
		if math.Abs(n0-n1) > 1e-4*n0 {
			t.Errorf("pos %d: norm %g -> %g", p, n0, n1)
		}
	}
	q, k := vec(), vec()
	dotAt := func(pq, pk int32) float64 {
		a, b := append([]float32(nil), q...), append([]float32(nil), k...)
		rh.apply(a, heads, pq, scratch)
		rh.apply(b, heads, pk, scratch)
		var s float64
		for i := range a {
			s += float64(a[i]) * float64(b[i])
		}
		return s
	}
	if d0, d1 := dotAt(10, 3), dotAt(510, 503); math.Abs(d0-d1) > 1e-4 {
		t.Errorf("q·k at (10,3) = %g, at (510,503) = %g: not relative", d0, d1)
	}
}
