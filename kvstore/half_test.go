package kvstore

import (
	"math"
	"math/rand/v2"
	"sort"
	"testing"
)

// Exactness: binary16 and bfloat16 values are exactly representable in
// float32, so decoding is exact and encoding is checked bit for bit against a
// brute-force round-to-nearest-even reference in float64 (exact for these
// magnitudes); no tolerance anywhere.

// refNearest returns the code among the non-negative codes [0, maxFinite+1]
// nearest to a (>= 0), ties to the even code; value(maxFinite+1) is the
// value one ulp past the largest finite, standing in for infinity (IEEE
// overflow rounds to infinity exactly when this "next value" would win).
func refNearest(a float64, maxFinite uint16, value func(uint16) float64) uint16 {
	n := int(maxFinite) + 2
	// Largest code with value <= a.
	lo := sort.Search(n, func(i int) bool { return value(uint16(i)) > a }) - 1
	if lo < 0 {
		lo = 0
	}
	if lo >= n-1 {
		return uint16(n - 1)
	}
	dl, dh := a-value(uint16(lo)), value(uint16(lo+1))-a
	switch {
	case dl < dh:
		return uint16(lo)
	case dh < dl:
		return uint16(lo + 1)
	case lo%2 == 0:
		return uint16(lo)
	}
	return uint16(lo + 1)
}

func f16Value(h uint16) float64 {
	if h == 0x7c00 {
		return 65536 // one ulp past 65504
	}
	return float64(Float16ToFloat32(h))
}

func bf16Value(h uint16) float64 {
	if h == 0x7f80 {
		return math.Ldexp(1, 128) // one ulp past the largest finite bf16
	}
	return float64(BFloat16ToFloat32(h))
}

func refF16(f float32) uint16 {
	sign := uint16(0)
	if math.Signbit(float64(f)) {
		sign = 0x8000
	}
	return sign | refNearest(math.Abs(float64(f)), 0x7bff, f16Value)
}

func refBF16(f float32) uint16 {
	sign := uint16(0)
	if math.Signbit(float64(f)) {
		sign = 0x8000
	}
	return sign | refNearest(math.Abs(float64(f)), 0x7f7f, bf16Value)
}

// TestFloat16AllCodes: every binary16 code decodes to the value IEEE defines
// and encodes back to itself (NaN stays NaN).
func TestFloat16AllCodes(t *testing.T) {
	for c := range 1 << 16 {
		h := uint16(c)
		f := Float16ToFloat32(h)
		exp, mant := h>>10&0x1f, float64(h&0x3ff)
		var want float64
		switch {
		case exp == 0x1f && mant != 0:
			if !math.IsNaN(float64(f)) {
				t.Fatalf("%#04x: got %v, want NaN", h, f)
			}
			if back := Float32ToFloat16(f); back&0x7c00 != 0x7c00 || back&0x3ff == 0 {
				t.Fatalf("%#04x: NaN re-encoded as %#04x", h, back)
			}
			continue
		case exp == 0x1f:
			want = math.Inf(1)
		case exp == 0:
			want = mant * math.Ldexp(1, -24)
		default:
			want = (1 + mant/1024) * math.Ldexp(1, int(exp)-15)
		}
		if h&0x8000 != 0 {
			want = -want
		}
		if float64(f) != want || math.Signbit(float64(f)) != (h&0x8000 != 0) {
			t.Fatalf("%#04x decodes to %v, want %v", h, f, want)
		}
		if back := Float32ToFloat16(f); back != h {
			t.Fatalf("%#04x -> %v -> %#04x", h, f, back)
		}
	}
}

// float32 inputs that stress rounding: every code's value, the exact
// midpoints between neighbours, and one float32 ulp either side of them.
func roundingProbes(codes int, value func(uint16) float32) []float32 {
	var out []float32
	for c := 0; c+1 < codes; c++ {
		a, b := value(uint16(c)), value(uint16(c+1))
		if math.IsInf(float64(b), 0) || math.IsNaN(float64(b)) {
			continue
		}
		mid := float32((float64(a) + float64(b)) / 2) // exact: one extra bit fits in float32
		out = append(out, a, mid, math.Nextafter32(mid, 0), math.Nextafter32(mid, float32(math.Inf(1))))
	}
	return out
}

func TestFloat32ToFloat16RNE(t *testing.T) {
	probes := roundingProbes(0x7c00, Float16ToFloat32)
	r := rand.New(rand.NewPCG(1, 2))
	for range 200000 {
		probes = append(probes, math.Float32frombits(r.Uint32()))
	}
	probes = append(probes, 65504, 65519.996, 65520, 65536, 1e30, float32(math.Inf(1)),
		math.Float32frombits(1), float32(math.Ldexp(1, -25)), math.Nextafter32(float32(math.Ldexp(1, -25)), 1), float32(math.Ldexp(1, -26)))
	for _, p := range probes {
		for _, f := range []float32{p, -p} {
			if math.IsNaN(float64(f)) {
				if h := Float32ToFloat16(f); h&0x7c00 != 0x7c00 || h&0x3ff == 0 {
					t.Fatalf("NaN %#08x -> %#04x", math.Float32bits(f), h)
				}
				continue
			}
			if got, want := Float32ToFloat16(f), refF16(f); got != want {
				t.Fatalf("Float32ToFloat16(%g = %#08x) = %#04x, want %#04x", f, math.Float32bits(f), got, want)
			}
		}
	}
}

func TestFloat32ToBFloat16RNE(t *testing.T) {
	// Probes around every 64th bf16 code and random bit patterns.
	var probes []float32
	for c := 0; c < 0x7f7f; c += 63 {
		a, b := BFloat16ToFloat32(uint16(c)), BFloat16ToFloat32(uint16(c+1))
		mid := math.Float32frombits((math.Float32bits(a) + math.Float32bits(b)) / 2) // exact midpoint: bf16 spacing is 2^16 float32 ulps
		probes = append(probes, a, mid, math.Nextafter32(mid, 0), math.Nextafter32(mid, float32(math.Inf(1))))
	}
	r := rand.New(rand.NewPCG(3, 4))
	for range 200000 {
		probes = append(probes, math.Float32frombits(r.Uint32()))
	}
	probes = append(probes, math.MaxFloat32, float32(math.Inf(1)), math.Float32frombits(1))
	for _, p := range probes {
		for _, f := range []float32{p, -p} {
			if math.IsNaN(float64(f)) {
				if h := Float32ToBFloat16(f); h&0x7f80 != 0x7f80 || h&0x7f == 0 {
					t.Fatalf("NaN %#08x -> %#04x", math.Float32bits(f), h)
				}
				continue
			}
			if got, want := Float32ToBFloat16(f), refBF16(f); got != want {
				t.Fatalf("Float32ToBFloat16(%g = %#08x) = %#04x, want %#04x", f, math.Float32bits(f), got, want)
			}
		}
	}
	for c := range 1 << 16 {
		h := uint16(c)
		if f := BFloat16ToFloat32(h); !math.IsNaN(float64(f)) && Float32ToBFloat16(f) != h {
			t.Fatalf("bf16 %#04x does not round-trip", h)
		}
	}
}

func TestEncodeDecodeFloat32Slices(t *testing.T) {
	src := []float32{0, -0, 1, -1.5, 3.14159, 65504, 1e-8, float32(math.Inf(-1))}
	for _, dt := range []DType{Float32, Float16, BFloat16} {
		buf := make([]byte, len(src)*dt.Size())
		EncodeFloat32(buf, src, dt)
		got := make([]float32, len(src))
		DecodeFloat32(got, buf, dt)
		for i, f := range src {
			var want float32
			switch dt {
			case Float32:
				want = f
			case Float16:
				want = Float16ToFloat32(Float32ToFloat16(f))
			case BFloat16:
				want = BFloat16ToFloat32(Float32ToBFloat16(f))
			}
			if math.Float32bits(got[i]) != math.Float32bits(want) {
				t.Errorf("%s[%d]: got %v, want %v", dt, i, got[i], want)
			}
		}
	}
	EncodeFloat32(nil, nil, Float16) // empty is fine
	DecodeFloat32(nil, nil, Float16)
}
