package cuda

import (
	"fmt"
	"math"
)

// DType is the storage type of weights and KV on the device. Activations
// between kernels and every accumulation are fp32 whatever the DType.
type DType int

const (
	// BF16 is bfloat16 (8-bit exponent, 7-bit mantissa): the default, the
	// range of fp32 with ~3 significant decimal digits.
	BF16 DType = iota
	// F16 is IEEE half precision (5-bit exponent, 10-bit mantissa).
	F16
	// F32 stores fp32: twice the memory of BF16, used to check the kernels
	// against the cpu backend at fp32 tolerances.
	F32
)

func (d DType) String() string {
	switch d {
	case BF16:
		return "bf16"
	case F16:
		return "f16"
	case F32:
		return "f32"
	}
	return fmt.Sprintf("DType(%d)", int(d))
}

// ParseDType parses "bf16", "f16"/"fp16" or "f32"/"fp32".
func ParseDType(s string) (DType, error) {
	switch s {
	case "bf16", "bfloat16":
		return BF16, nil
	case "f16", "fp16", "float16":
		return F16, nil
	case "f32", "fp32", "float32":
		return F32, nil
	}
	return 0, fmt.Errorf("cuda: unknown dtype %q (supported: bf16, f16, f32)", s)
}

// Size is the number of bytes of one element.
func (d DType) Size() int {
	if d == F32 {
		return 4
	}
	return 2
}

// Round returns x rounded to the precision of d, as the device would store
// it (round to nearest, ties to even).
func (d DType) Round(x float32) float32 {
	switch d {
	case BF16:
		return BF16ToF32(F32ToBF16(x))
	case F16:
		return F16ToF32(F32ToF16(x))
	}
	return x
}

// F32ToBF16 rounds x to bfloat16, to nearest with ties to even. NaNs stay
// NaN (quiet), infinities and overflow give infinities.
func F32ToBF16(x float32) uint16 {
	b := math.Float32bits(x)
	if b&0x7fffffff > 0x7f800000 { // NaN: keep sign, force a quiet mantissa bit
		return uint16(b>>16) | 0x40
	}
	// Add 0x7fff plus the lowest kept bit: ties round to the even result.
	b += 0x7fff + (b>>16)&1
	return uint16(b >> 16)
}

// BF16ToF32 widens a bfloat16 exactly.
func BF16ToF32(h uint16) float32 { return math.Float32frombits(uint32(h) << 16) }

// F32ToF16 rounds x to IEEE half, to nearest with ties to even, with
// subnormal results and overflow to infinity. NaNs stay NaN.
func F32ToF16(x float32) uint16 {
	b := math.Float32bits(x)
	sign := uint16(b>>16) & 0x8000
	exp := int32(b>>23) & 0xff
	man := b & 0x7fffff
	switch {
	case exp == 0xff: // Inf or NaN
		if man != 0 {
			return sign | 0x7e00
		}
		return sign | 0x7c00
	case exp == 0: // fp32 zero or subnormal: far below half's range
		return sign
	}
	e := exp - 127 + 15 // rebias
	if e >= 0x1f {
		return sign | 0x7c00
	}
	if e <= 0 {
		// Subnormal half (or zero): shift the full significand right.
		if e < -10 {
			return sign
		}
		m := man | 0x800000     // implicit bit
		shift := uint32(14 - e) // 24-bit significand to 10-bit field at e<=0
		half := uint32(1) << (shift - 1)
		r := m >> shift
		rem := m & (1<<shift - 1)
		if rem > half || (rem == half && r&1 == 1) {
			r++ // may carry into the smallest normal: still the right encoding
		}
		return sign | uint16(r)
	}
	r := uint32(e)<<10 | man>>13
	rem := man & 0x1fff
	if rem > 0x1000 || (rem == 0x1000 && r&1 == 1) {
		r++ // a carry into the exponent is correct, up to infinity
	}
	return sign | uint16(r)
}

// F16ToF32 widens an IEEE half exactly.
func F16ToF32(h uint16) float32 {
	sign := uint32(h&0x8000) << 16
	exp := uint32(h>>10) & 0x1f
	man := uint32(h & 0x3ff)
	switch {
	case exp == 0x1f:
		return math.Float32frombits(sign | 0x7f800000 | man<<13)
	case exp == 0:
		if man == 0 {
			return math.Float32frombits(sign)
		}
		// Subnormal: value = man * 2^-24.
		f := float32(man) * (1.0 / (1 << 24))
		if sign != 0 {
			f = -f
		}
		return f
	}
	return math.Float32frombits(sign | (exp+127-15)<<23 | man<<13)
}

// encode converts src to d's device representation: []uint16 for BF16 and
// F16, []float32 (a copy) for F32.
func (d DType) encode(src []float32) any {
	switch d {
	case BF16:
		out := make([]uint16, len(src))
		for i, x := range src {
			out[i] = F32ToBF16(x)
		}
		return out
	case F16:
		out := make([]uint16, len(src))
		for i, x := range src {
			out[i] = F32ToF16(x)
		}
		return out
	}
	return append([]float32(nil), src...)
}

// decode widens a device representation produced by encode.
func (d DType) decode(dst []float32, src any) {
	switch s := src.(type) {
	case []uint16:
		for i, h := range s {
			if d == BF16 {
				dst[i] = BF16ToF32(h)
			} else {
				dst[i] = F16ToF32(h)
			}
		}
	case []float32:
		copy(dst, s)
	default:
		panic(fmt.Sprintf("cuda: decode of %T", src))
	}
}
