// Package safetensors reads and writes the Hugging Face safetensors format:
// an 8-byte little-endian header length N, N bytes of JSON mapping tensor
// names to {dtype, shape, data_offsets} (plus an optional "__metadata__"
// object of strings), then the raw little-endian data. Files are
// memory-mapped read-only.
//
// Headers are validated as strictly as the reference implementation does:
// offsets are integers inside the data section, tensors are laid out
// back to back without overlap or gaps and cover it exactly, shape × dtype
// size equals the byte length, names are unique, and nothing follows the
// JSON object but padding spaces. A file that breaks any rule is refused
// with an *Error naming the file and, where there is one, the tensor.
package safetensors

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// DType is a safetensors element type as spelled in the header ("F32", "F16", "BF16", ...).
type DType string

// The element types of the format. Float32 converts F64, F32, F16 and BF16;
// the others can be read and written as bytes.
const (
	F64     DType = "F64"
	F32     DType = "F32"
	F16     DType = "F16"
	BF16    DType = "BF16"
	I64     DType = "I64"
	I32     DType = "I32"
	I16     DType = "I16"
	I8      DType = "I8"
	U64     DType = "U64"
	U32     DType = "U32"
	U16     DType = "U16"
	U8      DType = "U8"
	Bool    DType = "BOOL"
	F8E4M3  DType = "F8_E4M3"
	F8E5M2  DType = "F8_E5M2"
	metaKey       = "__metadata__"
)

var dtypeSizes = map[DType]int{
	F64: 8, F32: 4, F16: 2, BF16: 2,
	I64: 8, I32: 4, I16: 2, I8: 1,
	U64: 8, U32: 4, U16: 2, U8: 1,
	Bool: 1, F8E4M3: 1, F8E5M2: 1,
}

// Size returns the size in bytes of one element, and false for an unknown dtype.
func (d DType) Size() (int, bool) {
	s, ok := dtypeSizes[d]
	return s, ok
}

// Sentinel errors, wrapped in *Error; test with errors.Is.
var (
	ErrTruncated    = errors.New("file truncated")
	ErrHeader       = errors.New("corrupt header")
	ErrDType        = errors.New("unsupported dtype")
	ErrShape        = errors.New("shape does not match data length")
	ErrOffsets      = errors.New("data offsets overlap, leave a gap or run past the data")
	ErrDuplicate    = errors.New("duplicate tensor name")
	ErrMissingShard = errors.New("shard missing")
	ErrNotFound     = errors.New("no safetensors files")
	ErrClosed       = errors.New("file closed")
)

// Error is a failure tied to a file and, when known, one tensor of it.
type Error struct {
	File   string // path of the file ("" for in-memory data)
	Tensor string // tensor name, "" when the error is not about one tensor
	Err    error  // usually wraps one of the Err sentinels
}

func (e *Error) Error() string {
	s := "safetensors"
	if e.File != "" {
		s += " " + e.File
	}
	if e.Tensor != "" {
		s += fmt.Sprintf(": tensor %q", e.Tensor)
	}
	return s + ": " + e.Err.Error()
}

func (e *Error) Unwrap() error { return e.Err }

// Tensor is one named tensor. Data aliases the mapped file when read.
type Tensor struct {
	Name  string
	DType DType
	Shape []int
	Data  []byte
}

// NumElements returns the product of the shape (1 for a scalar).
func (t Tensor) NumElements() int {
	n := 1
	for _, d := range t.Shape {
		n *= d
	}
	return n
}

var littleEndian = func() bool {
	x := uint16(1)
	return *(*byte)(unsafe.Pointer(&x)) == 1
}()

// Float32 returns the tensor converted to float32 (F32, F16 and BF16, and
// F64 rounded to nearest).
//
// For F32 on a little-endian host, when Data is 4-byte aligned (always the
// case for files written by this package or by Hugging Face), the result
// aliases Data without copying. For a tensor read from a File that memory is
// the read-only mapping: writing to the slice faults, and it must not be
// used after Close. Copy it (slices.Clone) to own or modify it.
func (t Tensor) Float32() ([]float32, error) {
	size, ok := t.DType.Size()
	if !ok {
		return nil, &Error{Tensor: t.Name, Err: fmt.Errorf("%w %q", ErrDType, t.DType)}
	}
	n := len(t.Data) / size
	if len(t.Data)%size != 0 || n != t.NumElements() {
		return nil, &Error{Tensor: t.Name, Err: fmt.Errorf("%w: %d bytes for shape %v of %s", ErrShape, len(t.Data), t.Shape, t.DType)}
	}
	if n == 0 {
		return []float32{}, nil
	}
	switch t.DType {
	case F32:
		if littleEndian && uintptr(unsafe.Pointer(&t.Data[0]))%4 == 0 {
			return unsafe.Slice((*float32)(unsafe.Pointer(&t.Data[0])), n), nil
		}
		out := make([]float32, n)
		for i := range out {
			out[i] = math.Float32frombits(binary.LittleEndian.Uint32(t.Data[4*i:]))
		}
		return out, nil
	case F16:
		out := make([]float32, n)
		for i := range out {
			out[i] = Float16ToFloat32(binary.LittleEndian.Uint16(t.Data[2*i:]))
		}
		return out, nil
	case BF16:
		out := make([]float32, n)
		for i := range out {
			out[i] = math.Float32frombits(uint32(binary.LittleEndian.Uint16(t.Data[2*i:])) << 16)
		}
		return out, nil
	case F64:
		out := make([]float32, n)
		for i := range out {
			out[i] = float32(math.Float64frombits(binary.LittleEndian.Uint64(t.Data[8*i:])))
		}
		return out, nil
	}
	return nil, &Error{Tensor: t.Name, Err: fmt.Errorf("%w: cannot convert %s to float32", ErrDType, t.DType)}
}

// Float16ToFloat32 converts an IEEE 754 binary16 value exactly (every half,
// subnormals, infinities and NaN payloads included, is a float32).
func Float16ToFloat32(h uint16) float32 {
	sign := uint32(h>>15) << 31
	exp := uint32(h>>10) & 0x1f
	frac := uint32(h) & 0x3ff
	switch {
	case exp == 0x1f: // Inf or NaN; keep the payload
		return math.Float32frombits(sign | 0xff<<23 | frac<<13)
	case exp != 0: // normal: rebias 15 -> 127
		return math.Float32frombits(sign | (exp+112)<<23 | frac<<13)
	case frac == 0:
		return math.Float32frombits(sign)
	}
	// Subnormal half: frac·2^-24, normalised for float32.
	e := uint32(113) // 127 - 14
	for frac&0x400 == 0 {
		frac <<= 1
		e--
	}
	return math.Float32frombits(sign | e<<23 | (frac&0x3ff)<<13)
}

// File is an opened (memory-mapped) safetensors file.
type File struct {
	Metadata map[string]string
	Tensors  map[string]Tensor

	path string
	mmap []byte // nil for Decode'd files
}

// Open memory-maps and parses path.
func Open(path string) (*File, error) {
	fail := func(err error) (*File, error) { return nil, &Error{File: path, Err: err} }
	fh, err := os.Open(path)
	if err != nil {
		return fail(err)
	}
	defer fh.Close() // the mapping outlives the descriptor
	st, err := fh.Stat()
	if err != nil {
		return fail(err)
	}
	size := st.Size()
	if !st.Mode().IsRegular() {
		return fail(fmt.Errorf("%w: not a regular file", ErrHeader))
	}
	if size < 8 {
		return fail(fmt.Errorf("%w: %d bytes, need at least 8", ErrTruncated, size))
	}
	if size > math.MaxInt {
		return fail(fmt.Errorf("%w: %d bytes is too large to map", ErrHeader, size))
	}
	m, err := unix.Mmap(int(fh.Fd()), 0, int(size), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return fail(fmt.Errorf("mmap: %w", err))
	}
	f, err := decode(m, path)
	if err != nil {
		_ = unix.Munmap(m)
		return nil, err
	}
	f.mmap = m
	return f, nil
}

// Decode parses a whole safetensors file held in memory. Tensor data aliases
// buf. Close on the result is a no-op.
func Decode(buf []byte) (*File, error) { return decode(buf, "") }

func decode(buf []byte, path string) (*File, error) {
	if len(buf) < 8 {
		return nil, &Error{File: path, Err: fmt.Errorf("%w: %d bytes, need at least 8", ErrTruncated, len(buf))}
	}
	hl := binary.LittleEndian.Uint64(buf)
	if hl > MaxHeaderSize {
		return nil, &Error{File: path, Err: fmt.Errorf("%w: header length %d exceeds %d", ErrHeader, hl, MaxHeaderSize)}
	}
	if hl > uint64(len(buf)-8) {
		return nil, &Error{File: path, Err: fmt.Errorf("%w: header length %d but only %d bytes follow", ErrTruncated, hl, len(buf)-8)}
	}
	data := buf[8+hl:]
	h, err := ParseHeader(buf[8:8+hl], int64(len(data)))
	if err != nil {
		var e *Error
		if errors.As(err, &e) {
			e.File = path
			return nil, e
		}
		return nil, &Error{File: path, Err: err}
	}
	f := &File{Metadata: h.Metadata, Tensors: make(map[string]Tensor, len(h.Tensors)), path: path}
	for _, ti := range h.Tensors {
		f.Tensors[ti.Name] = Tensor{
			Name:  ti.Name,
			DType: ti.DType,
			Shape: ti.Shape,
			Data:  data[ti.Begin:ti.End:ti.End],
		}
	}
	return f, nil
}

// Path returns the path the file was opened from ("" for Decode).
func (f *File) Path() string { return f.path }

// Close unmaps the file; tensors read from it must not be used afterwards.
// Closing twice is harmless.
func (f *File) Close() error {
	if f == nil || f.mmap == nil {
		return nil
	}
	m := f.mmap
	f.mmap = nil
	f.Tensors = nil
	if err := unix.Munmap(m); err != nil {
		return &Error{File: f.path, Err: fmt.Errorf("munmap: %w", err)}
	}
	return nil
}
