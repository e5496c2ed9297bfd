package safetensors

import (
	"bytes"
	"encoding/binary"
	"errors"
	"flag"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"unsafe"

	"github.com/google/go-cmp/cmp"
)

var update = flag.Bool("update", false, "rewrite golden files under testdata/")

func f32bytes(v ...float32) []byte {
	b := make([]byte, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(x))
	}
	return b
}

func u16bytes(v ...uint16) []byte {
	b := make([]byte, 2*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint16(b[2*i:], x)
	}
	return b
}

// rawFile assembles a file by hand, independently of Encode: the 8-byte
// length, the header text as given, then data.
func rawFile(header string, data []byte) []byte {
	b := binary.LittleEndian.AppendUint64(nil, uint64(len(header)))
	return append(append(b, header...), data...)
}

func TestRoundTrip(t *testing.T) {
	inf := float32(math.Inf(1))
	tests := []struct {
		name  string
		t     Tensor
		want  []float32 // nil: not convertible
		wantE error
	}{
		{"F32", Tensor{Name: "w", DType: F32, Shape: []int{2, 3}, Data: f32bytes(1, -2, 3.5, 0, inf, 1e-40)},
			[]float32{1, -2, 3.5, 0, inf, 1e-40}, nil},
		// Halves: 1, -2, 65504 (max), 2^-24 (smallest subnormal), 2^-14 (smallest normal), -0, +Inf.
		{"F16", Tensor{Name: "h", DType: F16, Shape: []int{7}, Data: u16bytes(0x3c00, 0xc000, 0x7bff, 0x0001, 0x0400, 0x8000, 0x7c00)},
			[]float32{1, -2, 65504, 0x1p-24, 0x1p-14, float32(math.Copysign(0, -1)), inf}, nil},
		// bfloat16 is the top half of a float32.
		{"BF16", Tensor{Name: "b", DType: BF16, Shape: []int{2, 2}, Data: u16bytes(0x3f80, 0xc040, 0x0001, 0x7f80)},
			[]float32{1, -3, math.Float32frombits(0x00010000), inf}, nil},
		{"F64", Tensor{Name: "d", DType: F64, Shape: []int{2}, Data: binary.LittleEndian.AppendUint64(binary.LittleEndian.AppendUint64(nil, math.Float64bits(0.5)), math.Float64bits(-1e300))},
			[]float32{0.5, float32(math.Inf(-1))}, nil},
		{"I32", Tensor{Name: "i", DType: I32, Shape: []int{3}, Data: []byte{1, 0, 0, 0, 2, 0, 0, 0, 255, 255, 255, 255}}, nil, ErrDType},
		{"U8 scalar", Tensor{Name: "u", DType: U8, Shape: []int{}, Data: []byte{7}}, nil, ErrDType},
		{"empty", Tensor{Name: "e", DType: F32, Shape: []int{0, 5}, Data: []byte{}}, []float32{}, nil},
	}
	dir := t.TempDir()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(dir, tt.name+".safetensors")
			meta := map[string]string{"format": "pt", "note": `quote " and <tag>`}
			if err := Write(path, []Tensor{tt.t}, meta); err != nil {
				t.Fatal(err)
			}
			f, err := Open(path)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if diff := cmp.Diff(meta, f.Metadata); diff != "" {
				t.Errorf("metadata (-want +got):\n%s", diff)
			}
			got, ok := f.Tensors[tt.t.Name]
			if !ok {
				t.Fatalf("tensor %q missing; have %v", tt.t.Name, f.Tensors)
			}
			if diff := cmp.Diff(tt.t, got); diff != "" {
				t.Errorf("tensor (-want +got):\n%s", diff)
			}
			vals, err := got.Float32()
			if !errors.Is(err, tt.wantE) {
				t.Fatalf("Float32 error = %v, want %v", err, tt.wantE)
			}
			if tt.want == nil {
				return
			}
			if diff := cmp.Diff(bitsOf(tt.want), bitsOf(vals)); diff != "" {
				t.Errorf("Float32 bits (-want +got):\n%s", diff)
			}
		})
	}
}

func bitsOf(v []float32) []uint32 {
	out := make([]uint32, len(v))
	for i, x := range v {
		out[i] = math.Float32bits(x)
	}
	return out
}

// TestFloat16Exhaustive checks every binary16 value against its definition
// evaluated in float64: (-1)^s · 2^(e-15) · (1 + f/1024), subnormals
// 2^-14 · f/1024. Every half is exactly a float32, so equality is exact.
func TestFloat16Exhaustive(t *testing.T) {
	for h := range 1 << 16 {
		s, e, f := h>>15, (h>>10)&0x1f, h&0x3ff
		got := Float16ToFloat32(uint16(h))
		var want float64
		switch {
		case e == 0x1f && f == 0:
			want = math.Inf(1)
		case e == 0x1f:
			if !math.IsNaN(float64(got)) || math.Float32bits(got)&0x7fffff != uint32(f)<<13 {
				t.Fatalf("half %#04x: got %v (%#08x), want NaN with payload %#x", h, got, math.Float32bits(got), f)
			}
			continue
		case e == 0:
			want = math.Ldexp(float64(f)/1024, -14)
		default:
			want = math.Ldexp(1+float64(f)/1024, e-15)
		}
		if s == 1 {
			want = -want
		}
		if math.Float32bits(got) != math.Float32bits(float32(want)) {
			t.Fatalf("half %#04x: got %v, want %v", h, got, want)
		}
	}
}

// TestHandWritten decodes a file assembled by hand from the format
// description, so Encode and Decode cannot agree on a shared mistake.
func TestHandWritten(t *testing.T) {
	hdr := `{"__metadata__":{"format":"pt"},"b":{"dtype":"BF16","shape":[2],"data_offsets":[8,12]},"a":{"dtype":"F32","shape":[1,2],"data_offsets":[0,8]}}  `
	data := append(f32bytes(1.5, -4), u16bytes(0x3f80, 0x4000)...)
	f, err := Decode(rawFile(hdr, data))
	if err != nil {
		t.Fatal(err)
	}
	a, err := f.Tensors["a"].Float32()
	if err != nil {
		t.Fatal(err)
	}
	b, err := f.Tensors["b"].Float32()
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([][]float32{{1.5, -4}, {1, 2}}, [][]float32{a, b}); diff != "" {
		t.Errorf("values (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]int{1, 2}, f.Tensors["a"].Shape); diff != "" {
		t.Errorf("shape (-want +got):\n%s", diff)
	}
}

// TestEncodeGolden pins the exact bytes Write produces (order, padding,
// offsets). Run with -update to rewrite testdata/golden.safetensors.
func TestEncodeGolden(t *testing.T) {
	ts := []Tensor{
		{Name: "z.bias", DType: F16, Shape: []int{3}, Data: u16bytes(0x3c00, 0, 0xbc00)},
		{Name: "a.weight", DType: F32, Shape: []int{2, 2}, Data: f32bytes(1, 2, 3, 4)},
		{Name: "m.ids", DType: I64, Shape: []int{1}, Data: make([]byte, 8)},
		{Name: "flag", DType: Bool, Shape: []int{1}, Data: []byte{1}},
	}
	got, err := Encode(ts, map[string]string{"format": "pt"})
	if err != nil {
		t.Fatal(err)
	}
	golden := filepath.Join("testdata", "golden.safetensors")
	if *update {
		if err := os.WriteFile(golden, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("Encode output differs from %s:\n got %q\nwant %q", golden, got, want)
	}
	// Shuffled input gives the same bytes, and the data section is 8-aligned.
	again, err := Encode([]Tensor{ts[3], ts[1], ts[0], ts[2]}, map[string]string{"format": "pt"})
	if err != nil || !bytes.Equal(again, got) {
		t.Errorf("Encode is not order-independent (err %v)", err)
	}
	if hl := binary.LittleEndian.Uint64(got); (8+hl)%8 != 0 {
		t.Errorf("data section starts at %d, not 8-aligned", 8+hl)
	}
	f, err := Decode(got)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range ts {
		if diff := cmp.Diff(tt, f.Tensors[tt.Name]); diff != "" {
			t.Errorf("%s (-want +got):\n%s", tt.Name, diff)
		}
	}
}

func TestFloat32Alias(t *testing.T) {
	buf := make([]float32, 5) // 4-byte aligned backing array
	raw := unsafe.Slice((*byte)(unsafe.Pointer(&buf[0])), 20)
	copy(raw, f32bytes(1, 2, 3, 4, 5))
	v, err := Tensor{DType: F32, Shape: []int{4}, Data: raw[:16]}.Float32()
	if err != nil {
		t.Fatal(err)
	}
	if littleEndian && &v[0] != &buf[0] {
		t.Error("aligned F32 was copied, want zero-copy alias")
	}
	// Misaligned: must copy and still be right.
	mis := make([]byte, 17)
	copy(mis[1:], f32bytes(1, 2, 3, 4))
	v, err = Tensor{DType: F32, Shape: []int{2, 2}, Data: mis[1:]}.Float32()
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]float32{1, 2, 3, 4}, v); diff != "" {
		t.Errorf("misaligned (-want +got):\n%s", diff)
	}
	if _, err := (Tensor{Name: "x", DType: F32, Shape: []int{3}, Data: mis[1:]}).Float32(); !errors.Is(err, ErrShape) {
		t.Errorf("shape mismatch: err = %v, want ErrShape", err)
	}
}

func TestDecodeErrors(t *testing.T) {
	ok := `{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}`
	d8 := make([]byte, 8)
	tests := []struct {
		name       string
		file       []byte
		want       error
		wantTensor string
	}{
		{"empty file", nil, ErrTruncated, ""},
		{"short length", []byte{1, 0, 0}, ErrTruncated, ""},
		{"header past end", rawFile(ok, d8)[:30], ErrTruncated, ""},
		{"data truncated", rawFile(ok, d8[:5]), ErrTruncated, "a"},
		{"huge header length", binary.LittleEndian.AppendUint64(nil, 1<<62), ErrHeader, ""},
		{"not json", rawFile("{nope", nil), ErrHeader, ""},
		{"leading space", rawFile(" "+ok, d8), ErrHeader, ""},
		{"array", rawFile("[]", nil), ErrHeader, ""},
		{"trailing garbage", rawFile(ok+"x", d8), ErrHeader, ""},
		{"second object", rawFile(ok+"{}", d8), ErrHeader, ""},
		{"unknown dtype", rawFile(`{"a":{"dtype":"F12","shape":[2],"data_offsets":[0,8]}}`, d8), ErrDType, "a"},
		{"unknown field", rawFile(`{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"x":1}}`, d8), ErrHeader, "a"},
		{"missing field", rawFile(`{"a":{"dtype":"F32","shape":[2]}}`, d8), ErrHeader, "a"},
		{"duplicate field", rawFile(`{"a":{"dtype":"F32","dtype":"F32","shape":[2],"data_offsets":[0,8]}}`, d8), ErrHeader, "a"},
		{"duplicate tensor", rawFile(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}`, d8), ErrDuplicate, "a"},
		{"float dim", rawFile(`{"a":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}}`, d8), ErrHeader, "a"},
		{"exponent offset", rawFile(`{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8e0]}}`, d8), ErrHeader, "a"},
		{"negative dim", rawFile(`{"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}}`, d8), ErrHeader, "a"},
		{"NaN offset", rawFile(`{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,NaN]}}`, d8), ErrHeader, "a"},
		{"string dim", rawFile(`{"a":{"dtype":"F32","shape":["2"],"data_offsets":[0,8]}}`, d8), ErrHeader, "a"},
		{"three offsets", rawFile(`{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8,8]}}`, d8), ErrHeader, "a"},
		{"reversed offsets", rawFile(`{"a":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}}`, d8), ErrOffsets, "a"},
		{"shape mismatch", rawFile(`{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}`, d8), ErrShape, "a"},
		{"shape overflow", rawFile(`{"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}}`, d8), ErrShape, "a"},
		{"overlap", rawFile(`{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}`, d8), ErrOffsets, "b"},
		{"gap", rawFile(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}`, d8), ErrOffsets, "a"},
		{"trailing data", rawFile(ok, make([]byte, 12)), ErrOffsets, ""},
		{"metadata not strings", rawFile(`{"__metadata__":{"a":1}}`, nil), ErrHeader, ""},
		{"metadata duplicate key", rawFile(`{"__metadata__":{"a":"1","a":"2"}}`, nil), ErrHeader, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, err := Decode(tt.file)
			if !errors.Is(err, tt.want) {
				t.Fatalf("Decode = %v, %v; want error %v", f, err, tt.want)
			}
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("error %T is not *Error", err)
			}
			if e.Tensor != tt.wantTensor {
				t.Errorf("Error.Tensor = %q, want %q (%v)", e.Tensor, tt.wantTensor, err)
			}
		})
	}
}

func TestOpenErrorNamesFile(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "bad.safetensors")
	if err := os.WriteFile(p, rawFile(`{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}`, make([]byte, 10)), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := Open(p)
	var e *Error
	if !errors.As(err, &e) || e.File != p || e.Tensor != "w" || !errors.Is(err, ErrTruncated) {
		t.Fatalf("Open = %v; want *Error{File: %s, Tensor: w} wrapping ErrTruncated", err, p)
	}
	if !strings.Contains(err.Error(), p) || !strings.Contains(err.Error(), `"w"`) {
		t.Errorf("message %q does not name file and tensor", err)
	}
	if _, err := Open(filepath.Join(dir, "absent.safetensors")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Open(absent) = %v, want ErrNotExist", err)
	}
}

func TestEncodeErrors(t *testing.T) {
	tests := []struct {
		name string
		ts   []Tensor
		want error
	}{
		{"shape mismatch", []Tensor{{Name: "a", DType: F32, Shape: []int{3}, Data: make([]byte, 8)}}, ErrShape},
		{"negative dim", []Tensor{{Name: "a", DType: F32, Shape: []int{-1}, Data: nil}}, ErrShape},
		{"unknown dtype", []Tensor{{Name: "a", DType: "Q4", Shape: []int{1}, Data: make([]byte, 1)}}, ErrDType},
		{"duplicate", []Tensor{{Name: "a", DType: U8, Shape: []int{1}, Data: []byte{1}}, {Name: "a", DType: U8, Shape: []int{1}, Data: []byte{1}}}, ErrDuplicate},
		{"reserved name", []Tensor{{Name: "__metadata__", DType: U8, Shape: []int{1}, Data: []byte{1}}}, ErrHeader},
	}
	dir := t.TempDir()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := filepath.Join(dir, "x.safetensors")
			if err := Write(p, tt.ts, nil); !errors.Is(err, tt.want) {
				t.Fatalf("Write = %v, want %v", err, tt.want)
			}
			if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("failed Write left %s behind", p)
			}
		})
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 0 {
		t.Errorf("temp files left behind: %v", ents)
	}
}

func TestWriteReplacesAtomically(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "m.safetensors")
	for _, v := range []float32{1, 2} {
		if err := Write(p, []Tensor{{Name: "x", DType: F32, Shape: []int{1}, Data: f32bytes(v)}}, nil); err != nil {
			t.Fatal(err)
		}
	}
	f, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if v, _ := f.Tensors["x"].Float32(); len(v) != 1 || v[0] != 2 {
		t.Errorf("x = %v, want [2]", v)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Errorf("directory holds %d entries, want only the file", len(ents))
	}
	if err := Write(filepath.Join(dir, "no", "such", "dir.safetensors"), nil, nil); err == nil {
		t.Error("Write into a missing directory succeeded")
	}
}
