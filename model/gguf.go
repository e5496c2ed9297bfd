package model

// GGUF container codec (ggml's model file format, version 2 and 3; spec in
// llama.cpp's ggml/src/gguf.cpp and gguf-py):
//
//	magic "GGUF", uint32 version, uint64 n_tensors, uint64 n_kv,
//	n_kv x {string key, uint32 type, value},
//	n_tensors x {string name, uint32 n_dims, n_dims x uint64 ne, uint32 ggml_type, uint64 offset},
//	padding to general.alignment (default 32), tensor data (each offset
//	relative to the data start and a multiple of the alignment).
//
// Strings are uint64 length + bytes; arrays are uint32 element type, uint64
// count, elements. ne[0] is the fastest-varying dimension, so an HF
// [out, in] matrix is ne = [in, out].
//
// The header codec is written here rather than taken from a library: the one
// Go GGUF module in the proxy list (github.com/gpustack/gguf-parser-go) is a
// read-only parser with a large dependency tree (HTTP range reading, model
// estimators) and no writer, and the format is small. The reader takes the
// whole file as bytes and bounds every count and length by the bytes left, so
// a corrupt file is an error, never a panic or an allocation larger than the
// file.

import (
	"encoding/binary"
	"fmt"
	"io"
	"math"
)

const ggufMagic = "GGUF"

// ggufDefaultAlignment is used when general.alignment is absent.
const ggufDefaultAlignment = 32

// GGUF metadata value types.
const (
	ggufUint8   uint32 = 0
	ggufInt8    uint32 = 1
	ggufUint16  uint32 = 2
	ggufInt16   uint32 = 3
	ggufUint32  uint32 = 4
	ggufInt32   uint32 = 5
	ggufFloat32 uint32 = 6
	ggufBool    uint32 = 7
	ggufString  uint32 = 8
	ggufArray   uint32 = 9
	ggufUint64  uint32 = 10
	ggufInt64   uint32 = 11
	ggufFloat64 uint32 = 12
)

// ggufTypeSize is the encoded size of the fixed-size value types.
var ggufTypeSize = map[uint32]int{ggufUint8: 1, ggufInt8: 1, ggufUint16: 2, ggufInt16: 2, ggufUint32: 4,
	ggufInt32: 4, ggufFloat32: 4, ggufBool: 1, ggufUint64: 8, ggufInt64: 8, ggufFloat64: 8}

// ggmlType is a tensor element type (ggml.h enum ggml_type).
type ggmlType uint32

// The ggml tensor types the runtime reads (others are refused by name).
const (
	ggmlF32  ggmlType = 0
	ggmlF16  ggmlType = 1
	ggmlQ8_0 ggmlType = 8
	ggmlBF16 ggmlType = 30
)

// ggmlTypeNames names every ggml type for error messages.
var ggmlTypeNames = map[ggmlType]string{0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1",
	8: "Q8_0", 9: "Q8_1", 10: "Q2_K", 11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 15: "Q8_K",
	16: "IQ2_XXS", 17: "IQ2_XS", 18: "IQ3_XXS", 19: "IQ1_S", 20: "IQ4_NL", 21: "IQ3_S", 22: "IQ2_S",
	23: "IQ4_XS", 24: "I8", 25: "I16", 26: "I32", 27: "I64", 28: "F64", 29: "IQ1_M", 30: "BF16",
	34: "TQ1_0", 35: "TQ2_0", 39: "MXFP4"}

func (t ggmlType) String() string {
	if n, ok := ggmlTypeNames[t]; ok {
		return n
	}
	return fmt.Sprintf("ggml type %d", uint32(t))
}

// q8Block is the Q8_0 block: 32 values, an f16 scale then 32 int8.
const (
	q8BlockValues = 32
	q8BlockBytes  = 2 + 32
)

// byteSize is the number of bytes n values of type t take; ok false for
// types the runtime does not read or n that does not fit t's blocks.
func (t ggmlType) byteSize(n int64) (int64, bool) {
	switch t {
	case ggmlF32:
		return 4 * n, true
	case ggmlF16, ggmlBF16:
		return 2 * n, true
	case ggmlQ8_0:
		if n%q8BlockValues != 0 {
			return 0, false
		}
		return n / q8BlockValues * q8BlockBytes, true
	}
	return 0, false
}

// ggufKV is one metadata entry. Value is uint8, int8, uint16, int16, uint32,
// int32, float32, bool, string, uint64, int64, float64, or a ggufArr.
type ggufKV struct {
	Key   string
	Value any
}

// ggufArr is an array value: Elem is the element type and Values a typed
// slice ([]string, []float32, []int32, []uint32, ...). Nested arrays are
// refused by the reader.
type ggufArr struct {
	Elem   uint32
	Values any
}

// ggufTensor is one tensor-info entry; Data is its bytes (a view of the file
// when read).
type ggufTensor struct {
	Name   string
	Dims   []int64 // ne: Dims[0] fastest
	Type   ggmlType
	Offset uint64 // relative to the data section
	Data   []byte
}

// elements is the product of Dims.
func (t *ggufTensor) elements() int64 {
	n := int64(1)
	for _, d := range t.Dims {
		n *= d
	}
	return n
}

// ggufFile is a parsed GGUF file.
type ggufFile struct {
	Version   uint32
	KV        []ggufKV
	Tensors   []ggufTensor
	Alignment int
	index     map[string]int
	tensorIdx map[string]int
}

// get returns the value of key, nil when absent.
func (f *ggufFile) get(key string) any {
	if i, ok := f.index[key]; ok {
		return f.KV[i].Value
	}
	return nil
}

// tensor returns the named tensor.
func (f *ggufFile) tensor(name string) (*ggufTensor, bool) {
	i, ok := f.tensorIdx[name]
	if !ok {
		return nil, false
	}
	return &f.Tensors[i], true
}

// ggufReader decodes little-endian values from the file bytes, failing
// (sticky err) on the first read past the end.
type ggufReader struct {
	b   []byte
	off int
	err error
}

func (r *ggufReader) fail(format string, args ...any) {
	if r.err == nil {
		r.err = fmt.Errorf("%w: gguf: "+format, append([]any{ErrFormat}, args...)...)
	}
}

func (r *ggufReader) take(n int) []byte {
	if r.err != nil {
		return nil
	}
	if n < 0 || n > len(r.b)-r.off {
		r.fail("need %d bytes at offset %d, file has %d", n, r.off, len(r.b))
		return nil
	}
	s := r.b[r.off : r.off+n]
	r.off += n
	return s
}

func (r *ggufReader) u8() uint8 {
	if s := r.take(1); s != nil {
		return s[0]
	}
	return 0
}

func (r *ggufReader) u16() uint16 {
	if s := r.take(2); s != nil {
		return binary.LittleEndian.Uint16(s)
	}
	return 0
}

func (r *ggufReader) u32() uint32 {
	if s := r.take(4); s != nil {
		return binary.LittleEndian.Uint32(s)
	}
	return 0
}

func (r *ggufReader) u64() uint64 {
	if s := r.take(8); s != nil {
		return binary.LittleEndian.Uint64(s)
	}
	return 0
}

// count reads a uint64 count of items of at least minSize bytes each and
// checks the rest of the file can hold them (so no count allocates more
// than the file's size).
func (r *ggufReader) count(what string, minSize int) int {
	n := r.u64()
	if r.err != nil {
		return 0
	}
	if rest := uint64(len(r.b) - r.off); n > rest/uint64(max(minSize, 1)) {
		r.fail("%s count %d does not fit in the %d bytes left", what, n, rest)
		return 0
	}
	return int(n)
}

func (r *ggufReader) str() string {
	n := r.count("string", 1)
	return string(r.take(n))
}

// value reads one value of type t; depth guards nested arrays.
func (r *ggufReader) value(t uint32, depth int) any {
	switch t {
	case ggufUint8:
		return r.u8()
	case ggufInt8:
		return int8(r.u8())
	case ggufUint16:
		return r.u16()
	case ggufInt16:
		return int16(r.u16())
	case ggufUint32:
		return r.u32()
	case ggufInt32:
		return int32(r.u32())
	case ggufFloat32:
		return math.Float32frombits(r.u32())
	case ggufBool:
		v := r.u8()
		if v > 1 {
			r.fail("bool value %d", v)
		}
		return v == 1
	case ggufString:
		return r.str()
	case ggufUint64:
		return r.u64()
	case ggufInt64:
		return int64(r.u64())
	case ggufFloat64:
		return math.Float64frombits(r.u64())
	case ggufArray:
		if depth > 0 {
			r.fail("nested array")
			return nil
		}
		elem := r.u32()
		if r.err != nil {
			return nil
		}
		size, fixed := ggufTypeSize[elem]
		if elem == ggufString {
			size = 8
		} else if !fixed {
			r.fail("array of type %d", elem)
			return nil
		}
		n := r.count("array", size)
		return ggufArr{Elem: elem, Values: r.array(elem, n)}
	}
	r.fail("value type %d", t)
	return nil
}

// array reads n elements of a fixed type or strings into a typed slice.
func (r *ggufReader) array(elem uint32, n int) any {
	switch elem {
	case ggufString:
		out := make([]string, 0, n)
		for i := 0; i < n && r.err == nil; i++ {
			out = append(out, r.str())
		}
		return out
	case ggufFloat32:
		out := make([]float32, n)
		for i := range out {
			out[i] = math.Float32frombits(r.u32())
		}
		return out
	case ggufInt32:
		out := make([]int32, n)
		for i := range out {
			out[i] = int32(r.u32())
		}
		return out
	case ggufUint32:
		out := make([]uint32, n)
		for i := range out {
			out[i] = r.u32()
		}
		return out
	}
	// Other element types: kept as decoded scalars.
	out := make([]any, n)
	for i := range out {
		out[i] = r.value(elem, 1)
	}
	return out
}

// parseGGUF decodes a GGUF file held in b. Tensor Data slices alias b.
func parseGGUF(b []byte) (*ggufFile, error) {
	r := &ggufReader{b: b}
	if magic := r.take(4); r.err != nil || string(magic) != ggufMagic {
		return nil, fmt.Errorf("%w: not a GGUF file (magic %q)", ErrFormat, magic)
	}
	f := &ggufFile{Version: r.u32(), index: map[string]int{}, tensorIdx: map[string]int{}}
	if r.err == nil && f.Version != 2 && f.Version != 3 {
		return nil, fmt.Errorf("%w GGUF version %d (supported: 2, 3)", ErrUnsupported, f.Version)
	}
	// The smallest tensor info is name length + n_dims + type + offset.
	nTensors := r.count("tensor", 8+4+4+8)
	nKV := r.count("metadata", 8+4)
	for i := 0; i < nKV && r.err == nil; i++ {
		key := r.str()
		v := r.value(r.u32(), 0)
		if r.err != nil {
			break
		}
		if _, dup := f.index[key]; dup {
			r.fail("duplicate key %q", key)
			break
		}
		f.index[key] = len(f.KV)
		f.KV = append(f.KV, ggufKV{Key: key, Value: v})
	}
	f.Alignment = ggufDefaultAlignment
	if v := f.get("general.alignment"); v != nil {
		a, ok := v.(uint32)
		if !ok || a == 0 || a&(a-1) != 0 || a > 1<<20 {
			return nil, fmt.Errorf("%w: gguf: general.alignment %v must be a uint32 power of two", ErrFormat, v)
		}
		f.Alignment = int(a)
	}
	for i := 0; i < nTensors && r.err == nil; i++ {
		t := ggufTensor{Name: r.str()}
		nd := r.u32()
		if r.err == nil && (nd == 0 || nd > 4) {
			r.fail("tensor %q has %d dims (1..4)", t.Name, nd)
		}
		for j := uint32(0); j < nd && r.err == nil; j++ {
			d := r.u64()
			if d == 0 || d > 1<<40 {
				r.fail("tensor %q dim %d = %d", t.Name, j, d)
			}
			t.Dims = append(t.Dims, int64(d))
		}
		t.Type = ggmlType(r.u32())
		t.Offset = r.u64()
		if r.err != nil {
			break
		}
		if _, dup := f.tensorIdx[t.Name]; dup {
			r.fail("duplicate tensor %q", t.Name)
			break
		}
		f.tensorIdx[t.Name] = len(f.Tensors)
		f.Tensors = append(f.Tensors, t)
	}
	if r.err != nil {
		return nil, r.err
	}
	data := int64(alignUp(r.off, f.Alignment))
	if len(f.Tensors) > 0 && data > int64(len(b)) {
		return nil, fmt.Errorf("%w: gguf: tensor data would start at %d, past the end (%d bytes)", ErrFormat, data, len(b))
	}
	for i := range f.Tensors {
		t := &f.Tensors[i]
		// No ggml type packs more than 8 values per byte, so a tensor of
		// more than 8*len(b) values cannot fit (checked before the product
		// can overflow).
		n, limit := int64(1), 8*int64(len(b))
		for _, d := range t.Dims {
			if d > limit/n {
				return nil, fmt.Errorf("%w: gguf: tensor %q of shape %v cannot fit in a file of %d bytes", ErrFormat, t.Name, t.Dims, len(b))
			}
			n *= d
		}
		size, ok := t.Type.byteSize(n)
		if !ok {
			// Known-size check is done at load for supported types; others
			// are kept without data and refused there by name.
			continue
		}
		if t.Offset%uint64(f.Alignment) != 0 {
			return nil, fmt.Errorf("%w: gguf: tensor %q offset %d not a multiple of the alignment %d", ErrFormat, t.Name, t.Offset, f.Alignment)
		}
		if t.Offset > uint64(int64(len(b))-data) || uint64(size) > uint64(int64(len(b))-data)-t.Offset {
			return nil, fmt.Errorf("%w: gguf: tensor %q [%d, %d) of the data section runs past the end of the file (%d bytes of data)",
				ErrFormat, t.Name, t.Offset, t.Offset+uint64(size), int64(len(b))-data)
		}
		start := data + int64(t.Offset)
		t.Data = b[start : start+size : start+size]
	}
	return f, nil
}

func alignUp(n, a int) int { return (n + a - 1) / a * a }

// writeGGUF writes version 3 with the given metadata and tensors (Offset is
// computed; Data written as is) at alignment align.
func writeGGUF(w io.Writer, kv []ggufKV, tensors []ggufTensor, align int) error {
	var buf []byte
	str := func(s string) {
		buf = binary.LittleEndian.AppendUint64(buf, uint64(len(s)))
		buf = append(buf, s...)
	}
	buf = append(buf, ggufMagic...)
	buf = binary.LittleEndian.AppendUint32(buf, 3)
	buf = binary.LittleEndian.AppendUint64(buf, uint64(len(tensors)))
	buf = binary.LittleEndian.AppendUint64(buf, uint64(len(kv)))
	for _, e := range kv {
		str(e.Key)
		var err error
		if buf, err = appendGGUFValue(buf, e.Value, true); err != nil {
			return fmt.Errorf("gguf key %s: %w", e.Key, err)
		}
	}
	off := uint64(0)
	for i := range tensors {
		t := &tensors[i]
		str(t.Name)
		buf = binary.LittleEndian.AppendUint32(buf, uint32(len(t.Dims)))
		for _, d := range t.Dims {
			buf = binary.LittleEndian.AppendUint64(buf, uint64(d))
		}
		buf = binary.LittleEndian.AppendUint32(buf, uint32(t.Type))
		t.Offset = off
		buf = binary.LittleEndian.AppendUint64(buf, off)
		off += uint64(alignUp(len(t.Data), align))
	}
	buf = append(buf, make([]byte, alignUp(len(buf), align)-len(buf))...)
	if _, err := w.Write(buf); err != nil {
		return err
	}
	pad := make([]byte, align)
	for _, t := range tensors {
		if _, err := w.Write(t.Data); err != nil {
			return err
		}
		if p := alignUp(len(t.Data), align) - len(t.Data); p > 0 {
			if _, err := w.Write(pad[:p]); err != nil {
				return err
			}
		}
	}
	return nil
}

// appendGGUFValue encodes v with its type tag (withType) and payload.
func appendGGUFValue(buf []byte, v any, withType bool) ([]byte, error) {
	tag := func(t uint32) {
		if withType {
			buf = binary.LittleEndian.AppendUint32(buf, t)
		}
	}
	le := binary.LittleEndian
	switch x := v.(type) {
	case uint8:
		tag(ggufUint8)
		buf = append(buf, x)
	case int8:
		tag(ggufInt8)
		buf = append(buf, byte(x))
	case uint16:
		tag(ggufUint16)
		buf = le.AppendUint16(buf, x)
	case int16:
		tag(ggufInt16)
		buf = le.AppendUint16(buf, uint16(x))
	case uint32:
		tag(ggufUint32)
		buf = le.AppendUint32(buf, x)
	case int32:
		tag(ggufInt32)
		buf = le.AppendUint32(buf, uint32(x))
	case float32:
		tag(ggufFloat32)
		buf = le.AppendUint32(buf, math.Float32bits(x))
	case bool:
		tag(ggufBool)
		b := byte(0)
		if x {
			b = 1
		}
		buf = append(buf, b)
	case string:
		tag(ggufString)
		buf = le.AppendUint64(buf, uint64(len(x)))
		buf = append(buf, x...)
	case uint64:
		tag(ggufUint64)
		buf = le.AppendUint64(buf, x)
	case int64:
		tag(ggufInt64)
		buf = le.AppendUint64(buf, uint64(x))
	case float64:
		tag(ggufFloat64)
		buf = le.AppendUint64(buf, math.Float64bits(x))
	case []string:
		tag(ggufArray)
		buf = le.AppendUint32(buf, ggufString)
		buf = le.AppendUint64(buf, uint64(len(x)))
		for _, s := range x {
			buf = le.AppendUint64(buf, uint64(len(s)))
			buf = append(buf, s...)
		}
	case []float32:
		tag(ggufArray)
		buf = le.AppendUint32(buf, ggufFloat32)
		buf = le.AppendUint64(buf, uint64(len(x)))
		for _, f := range x {
			buf = le.AppendUint32(buf, math.Float32bits(f))
		}
	case []int32:
		tag(ggufArray)
		buf = le.AppendUint32(buf, ggufInt32)
		buf = le.AppendUint64(buf, uint64(len(x)))
		for _, f := range x {
			buf = le.AppendUint32(buf, uint32(f))
		}
	case []uint32:
		tag(ggufArray)
		buf = le.AppendUint32(buf, ggufUint32)
		buf = le.AppendUint64(buf, uint64(len(x)))
		for _, f := range x {
			buf = le.AppendUint32(buf, f)
		}
	case ggufArr:
		return appendGGUFValue(buf, x.Values, withType)
	default:
		return buf, fmt.Errorf("cannot encode %T", v)
	}
	return buf, nil
}
