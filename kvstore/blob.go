package kvstore

import (
	"encoding/binary"
	"fmt"
	"math/bits"
	"unsafe"

	"github.com/fusionrag/fusionrag/fingerprint"
	"github.com/zeebo/xxh3"
)

// DType is the element type of a blob's payload.
type DType uint8

const (
	Float32  DType = 1 // IEEE binary32
	Float16  DType = 2 // IEEE binary16
	BFloat16 DType = 3 // bfloat16
)

// Size returns the bytes per element, 0 for an invalid dtype.
func (d DType) Size() int {
	switch d {
	case Float32:
		return 4
	case Float16, BFloat16:
		return 2
	}
	return 0
}

// String returns "f32", "f16" or "bf16".
func (d DType) String() string {
	switch d {
	case Float32:
		return "f32"
	case Float16:
		return "f16"
	case BFloat16:
		return "bf16"
	}
	return fmt.Sprintf("DType(%d)", uint8(d))
}

// ParseDType parses the String form of a dtype.
func ParseDType(s string) (DType, error) {
	switch s {
	case "f32", "fp32", "float32":
		return Float32, nil
	case "f16", "fp16", "float16":
		return Float16, nil
	case "bf16", "bfloat16":
		return BFloat16, nil
	}
	return 0, fmt.Errorf("kvstore: unknown dtype %q (want f32, f16 or bf16)", s)
}

// Meta describes a blob: its shape, placement and identity.
type Meta struct {
	DType   DType
	Layers  int
	KVHeads int
	HeadDim int
	Tokens  int
	// PositionFree marks K stored before RoPE; BasePos is then 0. Otherwise K
	// has RoPE applied for positions [BasePos, BasePos+Tokens).
	PositionFree bool
	BasePos      int64
	// Key is the fingerprint the blob is stored under, Check verifies a hit.
	Key   fingerprint.Key
	Check fingerprint.Check
}

// maxDim bounds each dimension so that sizes cannot overflow and a corrupt
// header cannot ask for absurd allocations.
const maxDim = 1 << 24

// PayloadSize returns the payload bytes: layers x {K, V} x [tokens, kvHeads,
// headDim] elements of DType.
func (m Meta) PayloadSize() (int64, error) {
	if m.DType.Size() == 0 {
		return 0, fmt.Errorf("kvstore: invalid dtype %d", uint8(m.DType))
	}
	for _, d := range []struct {
		name string
		v    int
	}{{"layers", m.Layers}, {"kvHeads", m.KVHeads}, {"headDim", m.HeadDim}, {"tokens", m.Tokens}} {
		if d.v < 1 || d.v > maxDim {
			return 0, fmt.Errorf("kvstore: %s=%d out of range [1, %d]", d.name, d.v, maxDim)
		}
	}
	if m.PositionFree && m.BasePos != 0 {
		return 0, fmt.Errorf("kvstore: position-free blob with base position %d", m.BasePos)
	}
	if m.BasePos < 0 {
		return 0, fmt.Errorf("kvstore: negative base position %d", m.BasePos)
	}
	n := uint64(2 * m.DType.Size())
	for _, d := range []int{m.Layers, m.KVHeads, m.HeadDim, m.Tokens} {
		hi, lo := bits.Mul64(n, uint64(d))
		if hi != 0 || lo > maxPayload {
			return 0, fmt.Errorf("kvstore: payload of %dx%dx%dx%d %s exceeds %d bytes",
				m.Layers, m.Tokens, m.KVHeads, m.HeadDim, m.DType, uint64(maxPayload))
		}
		n = lo
	}
	return int64(n), nil
}

// maxPayload caps one blob at 16 GiB.
const maxPayload = 16 << 30

// LayerElems returns the elements of one layer's K (or V): tokens*kvHeads*headDim.
func (m Meta) LayerElems() int { return m.Tokens * m.KVHeads * m.HeadDim }

// Blob format, version 1. All integers little-endian; the payload starts at
// byte 128 so that a page-aligned mapping or an 8-aligned heap buffer leaves
// it aligned for any element type.
//
//	[0, 4)     magic "FRKV"
//	[4, 6)     version (1)
//	[6, 7)     dtype
//	[7, 8)     flags: bit 0 position-free; other bits zero
//	[8, 24)    layers, kvHeads, headDim, tokens (uint32 each)
//	[24, 32)   base position (int64)
//	[32, 48)   key
//	[48, 52)   check token count (uint32)
//	[52, 56)   zero
//	[56, 64)   check sum (uint64)
//	[64, 72)   payload length (uint64)
//	[72, 80)   xxh3-64 of the payload
//	[80, 120)  zero
//	[120, 128) xxh3-64 of bytes [0, 120)
//	[128, ...) payload: for each layer, K then V, each [tokens, kvHeads, headDim]
const (
	HeaderSize   = 128
	blobVersion  = 1
	flagPosFree  = 1
	headerSumOff = 120
)

var blobMagic = [4]byte{'F', 'R', 'K', 'V'}

// Blob is one KV cache in its stored form. The payload of a blob returned by
// a tier is read-only: it may be a view of the tier's memory or a file
// mapping. Call Release when done with it.
type Blob struct {
	Meta
	raw     []byte // HeaderSize + payload
	sealed  bool   // raw is a valid encoding (from Decode or Encode), never written again
	release func() error
}

// NewBlob returns a blob with a zeroed payload of m's shape.
func NewBlob(m Meta) (*Blob, error) {
	n, err := m.PayloadSize()
	if err != nil {
		return nil, err
	}
	return &Blob{Meta: m, raw: make([]byte, HeaderSize+n)}, nil
}

// FromFloat32 builds a blob from per-layer K and V, each
// [tokens, kvHeads, headDim] row-major float32, converting to m.DType with
// round-to-nearest-even.
func FromFloat32(m Meta, k, v [][]float32) (*Blob, error) {
	b, err := NewBlob(m)
	if err != nil {
		return nil, err
	}
	if len(k) != m.Layers || len(v) != m.Layers {
		return nil, fmt.Errorf("kvstore: got %d K and %d V layers, want %d", len(k), len(v), m.Layers)
	}
	n := m.LayerElems()
	for l := range m.Layers {
		if len(k[l]) != n || len(v[l]) != n {
			return nil, fmt.Errorf("kvstore: layer %d: K has %d and V %d elements, want %d", l, len(k[l]), len(v[l]), n)
		}
		EncodeFloat32(b.K(l), k[l], m.DType)
		EncodeFloat32(b.V(l), v[l], m.DType)
	}
	return b, nil
}

// Float32 returns per-layer K and V as float32 [tokens, kvHeads, headDim].
func (b *Blob) Float32() (k, v [][]float32) {
	n := b.LayerElems()
	k, v = make([][]float32, b.Layers), make([][]float32, b.Layers)
	for l := range b.Layers {
		k[l], v[l] = make([]float32, n), make([]float32, n)
		DecodeFloat32(k[l], b.K(l), b.DType)
		DecodeFloat32(v[l], b.V(l), b.DType)
	}
	return k, v
}

// DecodeLayer converts layer l's K and V into k and v, each
// [tokens, kvHeads, headDim] (LayerElems long), without allocating.
func (b *Blob) DecodeLayer(l int, k, v []float32) error {
	if l < 0 || l >= b.Layers {
		return fmt.Errorf("kvstore: layer %d out of [0, %d)", l, b.Layers)
	}
	if n := b.LayerElems(); len(k) != n || len(v) != n {
		return fmt.Errorf("kvstore: layer buffers hold %d and %d elements, want %d", len(k), len(v), n)
	}
	DecodeFloat32(k, b.K(l), b.DType)
	DecodeFloat32(v, b.V(l), b.DType)
	return nil
}

// Payload returns the payload bytes.
func (b *Blob) Payload() []byte { return b.raw[HeaderSize:] }

func (b *Blob) layerBytes() int { return b.LayerElems() * b.DType.Size() }

// K returns layer l's K bytes: [tokens, kvHeads, headDim] of DType.
func (b *Blob) K(l int) []byte {
	n := b.layerBytes()
	off := HeaderSize + 2*l*n
	return b.raw[off : off+n : off+n]
}

// V returns layer l's V bytes: [tokens, kvHeads, headDim] of DType.
func (b *Blob) V(l int) []byte {
	n := b.layerBytes()
	off := HeaderSize + (2*l+1)*n
	return b.raw[off : off+n : off+n]
}

// AsFloat32 views fp32 payload bytes (from K or V) as []float32 without
// copying. It reports false when the host is not little-endian or p is
// misaligned; use DecodeFloat32 then.
func AsFloat32(p []byte) ([]float32, bool) {
	if len(p) == 0 || len(p)%4 != 0 || !littleEndian || uintptr(unsafe.Pointer(&p[0]))%4 != 0 {
		return nil, false
	}
	return unsafe.Slice((*float32)(unsafe.Pointer(&p[0])), len(p)/4), true
}

var littleEndian = binary.NativeEndian.Uint16([]byte{1, 0}) == 1

// Size returns the encoded size: header plus payload.
func (b *Blob) Size() int { return len(b.raw) }

// Release returns what a tier lent for this blob (a file mapping); after it,
// the payload must not be touched. It is idempotent and a no-op for blobs
// held in ordinary memory.
func (b *Blob) Release() error {
	if b == nil || b.release == nil {
		return nil
	}
	r := b.release
	b.release = nil
	b.raw = nil
	return r()
}

// Clone returns a copy of b in ordinary memory.
func (b *Blob) Clone() *Blob {
	return &Blob{Meta: b.Meta, raw: append([]byte(nil), b.raw...), sealed: b.sealed}
}

// Encode returns the encoded blob: header, checksums, payload. For a blob
// built here it fills the header in place and returns the blob's own buffer
// (no copy); for a decoded blob it returns the bytes it was decoded from.
//
// Encode seals the blob: fill the payload (and Meta) before the first Encode
// or Put, which must not run concurrently with each other; afterwards the
// blob is immutable and safe to share, and Encode only returns its bytes.
func (b *Blob) Encode() ([]byte, error) {
	if b.sealed {
		if fingerprint.Key(b.raw[32:48]) != b.Key {
			return nil, fmt.Errorf("kvstore: blob key changed after Encode (%s, encoded %s)", b.Key, fingerprint.Key(b.raw[32:48]))
		}
		return b.raw, nil
	}
	n, err := b.PayloadSize()
	if err != nil {
		return nil, err
	}
	if int64(len(b.raw)) != HeaderSize+n {
		return nil, fmt.Errorf("kvstore: blob buffer holds %d payload bytes, shape needs %d", len(b.raw)-HeaderSize, n)
	}
	h := b.raw[:HeaderSize]
	clear(h)
	copy(h[0:4], blobMagic[:])
	binary.LittleEndian.PutUint16(h[4:], blobVersion)
	h[6] = byte(b.DType)
	if b.PositionFree {
		h[7] = flagPosFree
	}
	binary.LittleEndian.PutUint32(h[8:], uint32(b.Layers))
	binary.LittleEndian.PutUint32(h[12:], uint32(b.KVHeads))
	binary.LittleEndian.PutUint32(h[16:], uint32(b.HeadDim))
	binary.LittleEndian.PutUint32(h[20:], uint32(b.Tokens))
	binary.LittleEndian.PutUint64(h[24:], uint64(b.BasePos))
	copy(h[32:48], b.Key[:])
	binary.LittleEndian.PutUint32(h[48:], b.Check.Tokens)
	binary.LittleEndian.PutUint64(h[56:], b.Check.Sum)
	binary.LittleEndian.PutUint64(h[64:], uint64(n))
	binary.LittleEndian.PutUint64(h[72:], xxh3.Hash(b.raw[HeaderSize:]))
	binary.LittleEndian.PutUint64(h[headerSumOff:], xxh3.Hash(h[:headerSumOff]))
	b.sealed = true
	return b.raw, nil
}

// DecodeHeader parses and verifies the header of an encoded blob (its first
// HeaderSize bytes) and returns its Meta and payload length. Errors are
// *CorruptError.
func DecodeHeader(data []byte) (Meta, int64, error) {
	if len(data) < HeaderSize {
		return Meta{}, 0, corrupt("short header: %d bytes", len(data))
	}
	h := data[:HeaderSize]
	if [4]byte(h[0:4]) != blobMagic {
		return Meta{}, 0, corrupt("bad magic %q", h[0:4])
	}
	if got, want := binary.LittleEndian.Uint64(h[headerSumOff:]), xxh3.Hash(h[:headerSumOff]); got != want {
		return Meta{}, 0, corrupt("header checksum %016x, computed %016x", got, want)
	}
	if v := binary.LittleEndian.Uint16(h[4:]); v != blobVersion {
		return Meta{}, 0, corrupt("unsupported version %d", v)
	}
	if h[7]&^flagPosFree != 0 {
		return Meta{}, 0, corrupt("unknown flags %#x", h[7])
	}
	for _, z := range [][]byte{h[52:56], h[80:120]} {
		for _, c := range z {
			if c != 0 {
				return Meta{}, 0, corrupt("reserved header bytes not zero")
			}
		}
	}
	m := Meta{
		DType:        DType(h[6]),
		Layers:       int(binary.LittleEndian.Uint32(h[8:])),
		KVHeads:      int(binary.LittleEndian.Uint32(h[12:])),
		HeadDim:      int(binary.LittleEndian.Uint32(h[16:])),
		Tokens:       int(binary.LittleEndian.Uint32(h[20:])),
		PositionFree: h[7]&flagPosFree != 0,
		BasePos:      int64(binary.LittleEndian.Uint64(h[24:])),
		Key:          fingerprint.Key(h[32:48]),
		Check: fingerprint.Check{
			Tokens: binary.LittleEndian.Uint32(h[48:]),
			Sum:    binary.LittleEndian.Uint64(h[56:]),
		},
	}
	n, err := m.PayloadSize()
	if err != nil {
		return Meta{}, 0, corrupt("%v", err)
	}
	if pl := binary.LittleEndian.Uint64(h[64:]); pl != uint64(n) {
		return Meta{}, 0, corrupt("payload length %d, shape needs %d", pl, n)
	}
	return m, n, nil
}

// Decode verifies an encoded blob and returns it without copying: the blob's
// payload is a view of data, which must stay unchanged while the blob is in
// use. Errors are *CorruptError.
func Decode(data []byte) (*Blob, error) {
	m, n, err := DecodeHeader(data)
	if err != nil {
		return nil, err
	}
	if int64(len(data)) != HeaderSize+n {
		return nil, corrupt("blob is %d bytes, header says %d", len(data), HeaderSize+n)
	}
	if got, want := binary.LittleEndian.Uint64(data[72:]), xxh3.Hash(data[HeaderSize:]); got != want {
		return nil, corrupt("payload checksum %016x, computed %016x", got, want)
	}
	return &Blob{Meta: m, raw: data, sealed: true}, nil
}

func corrupt(format string, args ...any) *CorruptError {
	return &CorruptError{Reason: fmt.Sprintf(format, args...)}
}
