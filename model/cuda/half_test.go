package cuda

import (
	"math"
	"math/rand/v2"
	"sort"
	"testing"
)

// halfValues returns every finite value of a 16-bit format, sorted, with its
// encoding, for brute-force nearest-value checks.
func halfValues(widen func(uint16) float32) (vals []float64, codes []uint16) {
	type pair struct {
		v float64
		c uint16
	}
	var ps []pair
	for c := 0; c < 1<<16; c++ {
		f := widen(uint16(c))
		if math.IsNaN(float64(f)) || math.IsInf(float64(f), 0) {
			continue
		}
		if f == 0 && c != 0 { // keep +0 only
			continue
		}
		ps = append(ps, pair{float64(f), uint16(c)})
	}
	sort.Slice(ps, func(i, j int) bool { return ps[i].v < ps[j].v })
	for _, p := range ps {
		vals = append(vals, p.v)
		codes = append(codes, p.c)
	}
	return vals, codes
}

// nearest is the reference rounding: the closest representable value, ties
// to the even encoding; beyond the largest finite value by at least half an
// ulp, infinity (IEEE overflow rule), which we report as ok=false.
func nearest(x float64, vals []float64, codes []uint16) (float64, bool) {
	i := sort.SearchFloat64s(vals, x)
	if i < len(vals) && vals[i] == x {
		return x, true
	}
	if i == 0 || i == len(vals) {
		return 0, false
	}
	lo, hi := vals[i-1], vals[i]
	switch d1, d2 := x-lo, hi-x; {
	case d1 < d2:
		return lo, true
	case d2 < d1:
		return hi, true
	}
	if codes[i-1]&1 == 0 {
		return lo, true
	}
	return hi, true
}

func TestHalfRoundTripExhaustive(t *testing.T) {
	for _, tc := range []struct {
		name   string
		widen  func(uint16) float32
		narrow func(float32) uint16
	}{
		{"bf16", BF16ToF32, F32ToBF16},
		{"f16", F16ToF32, F32ToF16},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for c := 0; c < 1<<16; c++ {
				f := tc.widen(uint16(c))
				got := tc.narrow(f)
				if math.IsNaN(float64(f)) {
					if !math.IsNaN(float64(tc.widen(got))) {
						t.Fatalf("NaN %#04x narrowed to non-NaN %#04x", c, got)
					}
					continue
				}
				if got != uint16(c) {
					t.Fatalf("%#04x -> %g -> %#04x", c, f, got)
				}
			}
		})
	}
}

func TestHalfRoundingMatchesNearest(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, tc := range []struct {
		name   string
		widen  func(uint16) float32
		narrow func(float32) uint16
		maxExp float64
	}{
		{"bf16", BF16ToF32, F32ToBF16, 127},
		{"f16", F16ToF32, F32ToF16, 16},
	} {
		t.Run(tc.name, func(t *testing.T) {
			vals, codes := halfValues(tc.widen)
			check := func(x float32) {
				t.Helper()
				want, ok := nearest(math.Abs(float64(x)), vals, codes)
				got := tc.widen(tc.narrow(x))
				if !ok {
					if !math.IsInf(float64(got), 0) && math.Abs(float64(got)) != vals[len(vals)-1] {
						t.Fatalf("%g (%#08x): got %g, want overflow", x, math.Float32bits(x), got)
					}
					return
				}
				if math.Abs(float64(got)) != want || math.Signbit(float64(got)) != math.Signbit(float64(x)) {
					t.Fatalf("%g (%#08x): got %g, want %g", x, math.Float32bits(x), got, math.Copysign(want, float64(x)))
				}
			}
			// Exact ties and neighbours of every representable value.
			for _, v := range vals {
				if v == 0 {
					continue
				}
				f := float32(v)
				for _, d := range []float32{math.Nextafter32(f, 0), f, math.Nextafter32(f, float32(math.Inf(1)))} {
					check(d)
					check(-d)
				}
			}
			for i := 0; i+1 < len(vals); i++ {
				mid := float32((vals[i] + vals[i+1]) / 2) // exact in fp32 for both formats
				check(mid)
				check(math.Nextafter32(mid, 0))
				check(math.Nextafter32(mid, float32(math.Inf(1))))
			}
			for range 200000 {
				e := (rng.Float64()*2 - 1) * tc.maxExp * 1.1
				x := float32(math.Pow(2, e) * (1 + rng.Float64()))
				if rng.IntN(2) == 0 {
					x = -x
				}
				check(x)
			}
		})
	}
}

func TestHalfSpecials(t *testing.T) {
	for _, tc := range []struct {
		name string
		got  float32
		want float32
	}{
		{"bf16 inf", BF16ToF32(F32ToBF16(float32(math.Inf(1)))), float32(math.Inf(1))},
		{"bf16 -inf", BF16ToF32(F32ToBF16(float32(math.Inf(-1)))), float32(math.Inf(-1))},
		{"bf16 max overflow", BF16ToF32(F32ToBF16(math.MaxFloat32)), float32(math.Inf(1))},
		{"f16 overflow", F16ToF32(F32ToF16(70000)), float32(math.Inf(1))},
		{"f16 max", F16ToF32(F32ToF16(65504)), 65504},
		{"f16 tiny", F16ToF32(F32ToF16(1e-10)), 0},
		{"f16 min subnormal", F16ToF32(F32ToF16(5.9604645e-08)), 5.9604645e-08},
		{"f16 one", F16ToF32(0x3c00), 1},
		{"bf16 one", BF16ToF32(0x3f80), 1},
	} {
		if tc.got != tc.want {
			t.Errorf("%s: got %g, want %g", tc.name, tc.got, tc.want)
		}
	}
	for _, d := range []DType{BF16, F16} {
		if !math.IsNaN(float64(d.Round(float32(math.NaN())))) {
			t.Errorf("%v: NaN not kept", d)
		}
	}
	if _, err := ParseDType("int8"); err == nil {
		t.Error("ParseDType(int8): no error")
	}
}

// FuzzHalfRounding checks, for any float32 bit pattern, that rounding to
// bf16 and f16 is idempotent, keeps the sign, and lands on a representable
// value no farther from x than the next one on either side.
func FuzzHalfRounding(f *testing.F) {
	for _, seed := range []uint32{0, 0x3f800000, 0x7f7fffff, 0x00000001, 0x38800000, 0x477fe000, 0x477ff000, 0xc7800000, 0x7fc00000, 0x33800000} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, bits uint32) {
		x := math.Float32frombits(bits)
		for _, tc := range []struct {
			name   string
			widen  func(uint16) float32
			narrow func(float32) uint16
		}{{"bf16", BF16ToF32, F32ToBF16}, {"f16", F16ToF32, F32ToF16}} {
			h := tc.narrow(x)
			r := tc.widen(h)
			if math.IsNaN(float64(x)) {
				if !math.IsNaN(float64(r)) {
					t.Fatalf("%s: NaN %#08x rounded to %g", tc.name, bits, r)
				}
				continue
			}
			if tc.narrow(r) != h {
				t.Fatalf("%s: not idempotent: %g -> %#04x -> %g -> %#04x", tc.name, x, h, r, tc.narrow(r))
			}
			if r != 0 && math.Signbit(float64(r)) != math.Signbit(float64(x)) {
				t.Fatalf("%s: sign of %g lost: %g", tc.name, x, r)
			}
			if math.IsInf(float64(r), 0) {
				continue // overflow: checked exhaustively by TestHalfRoundingMatchesNearest
			}
			// The neighbours of h (same sign) are no closer to x.
			d := math.Abs(float64(r) - float64(x))
			for _, nb := range []uint16{h + 1, h - 1} {
				if nb&0x7fff == 0x7fff || (h&0x7fff == 0 && nb == h-1) {
					continue
				}
				v := tc.widen(nb)
				if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) || math.Signbit(float64(v)) != math.Signbit(float64(r)) {
					continue
				}
				if dv := math.Abs(float64(v) - float64(x)); dv < d {
					t.Fatalf("%s: %g rounded to %g, but %g is closer", tc.name, x, r, v)
				}
			}
		}
	})
}
