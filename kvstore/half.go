package kvstore

import (
	"encoding/binary"
	"math"
)

// Float32ToFloat16 converts f to IEEE 754 binary16 with round-to-nearest-even.
// Values at or beyond 65520 become infinity, values below half the smallest
// subnormal (2^-25) become signed zero, NaNs stay NaN (quieted, payload
// truncated to its top bits).
func Float32ToFloat16(f float32) uint16 {
	b := math.Float32bits(f)
	sign := uint16(b>>16) & 0x8000
	// Fast path, branch-free rounding: |f| in [2^-14, 65520), the range that
	// rounds to a normal binary16. Adding 0xfff plus the lowest kept bit
	// rounds the 13 dropped bits to nearest even, carrying into the exponent
	// when needed; then rebias the exponent from 127 to 15.
	if abs := b & 0x7fffffff; abs-0x38800000 < 0x477ff000-0x38800000 {
		abs += 0xfff + (abs>>13)&1
		return sign | uint16(abs>>13-112<<10)
	}
	exp := int32(b>>23) & 0xff
	mant := b & 0x7fffff
	if exp == 0xff {
		if mant == 0 {
			return sign | 0x7c00
		}
		return sign | 0x7e00 | uint16(mant>>13)
	}
	e := exp - 127 + 15
	if e >= 0x1f {
		return sign | 0x7c00
	}
	if e <= 0 {
		// Subnormal in binary16 (or zero). The value is m * 2^(exp-150) with the
		// 24-bit significand m; a binary16 subnormal is s * 2^-24, so
		// s = m >> (14 - e) before rounding.
		if e < -10 {
			return sign
		}
		m := mant | 0x800000
		shift := uint32(14 - e)
		r := m >> shift
		rem := m & (1<<shift - 1)
		half := uint32(1) << (shift - 1)
		if rem > half || (rem == half && r&1 == 1) {
			r++ // may carry into the exponent: the smallest normal, correctly
		}
		return sign | uint16(r)
	}
	r := uint32(e)<<10 | mant>>13
	rem := mant & 0x1fff
	if rem > 0x1000 || (rem == 0x1000 && r&1 == 1) {
		r++ // a carry out of the largest finite value gives 0x7c00 = infinity
	}
	return sign | uint16(r)
}

// Float16ToFloat32 converts an IEEE 754 binary16 value to float32 exactly.
func Float16ToFloat32(h uint16) float32 {
	sign := uint32(h&0x8000) << 16
	exp := uint32(h>>10) & 0x1f
	mant := uint32(h & 0x3ff)
	switch exp {
	case 0x1f:
		return math.Float32frombits(sign | 0x7f800000 | mant<<13)
	case 0:
		if mant == 0 {
			return math.Float32frombits(sign)
		}
		e := uint32(127 - 15 + 1)
		for mant&0x400 == 0 {
			mant <<= 1
			e--
		}
		return math.Float32frombits(sign | e<<23 | (mant&0x3ff)<<13)
	}
	return math.Float32frombits(sign | (exp+127-15)<<23 | mant<<13)
}

// Float32ToBFloat16 converts f to bfloat16 (the top half of a float32) with
// round-to-nearest-even; NaNs stay NaN (quieted).
func Float32ToBFloat16(f float32) uint16 {
	b := math.Float32bits(f)
	if b&0x7fffffff > 0x7f800000 {
		return uint16(b>>16) | 0x40
	}
	b += 0x7fff + (b>>16)&1
	return uint16(b >> 16)
}

// BFloat16ToFloat32 converts a bfloat16 value to float32 exactly.
func BFloat16ToFloat32(h uint16) float32 { return math.Float32frombits(uint32(h) << 16) }

// EncodeFloat32 writes src into dst in dtype dt, little-endian. dst must hold
// len(src)*dt.Size() bytes.
func EncodeFloat32(dst []byte, src []float32, dt DType) {
	if len(src) == 0 {
		return
	}
	switch dt {
	case Float32:
		_ = dst[4*len(src)-1]
		for i, f := range src {
			binary.LittleEndian.PutUint32(dst[4*i:], math.Float32bits(f))
		}
	case Float16:
		_ = dst[2*len(src)-1]
		for i, f := range src {
			binary.LittleEndian.PutUint16(dst[2*i:], Float32ToFloat16(f))
		}
	case BFloat16:
		_ = dst[2*len(src)-1]
		for i, f := range src {
			binary.LittleEndian.PutUint16(dst[2*i:], Float32ToBFloat16(f))
		}
	default:
		panic("kvstore: EncodeFloat32 with invalid dtype " + dt.String())
	}
}

// DecodeFloat32 reads len(dst) values of dtype dt from src into dst.
func DecodeFloat32(dst []float32, src []byte, dt DType) {
	if len(dst) == 0 {
		return
	}
	switch dt {
	case Float32:
		_ = src[4*len(dst)-1]
		for i := range dst {
			dst[i] = math.Float32frombits(binary.LittleEndian.Uint32(src[4*i:]))
		}
	case Float16:
		_ = src[2*len(dst)-1]
		for i := range dst {
			dst[i] = Float16ToFloat32(binary.LittleEndian.Uint16(src[2*i:]))
		}
	case BFloat16:
		_ = src[2*len(dst)-1]
		for i := range dst {
			dst[i] = BFloat16ToFloat32(binary.LittleEndian.Uint16(src[2*i:]))
		}
	default:
		panic("kvstore: DecodeFloat32 with invalid dtype " + dt.String())
	}
}
