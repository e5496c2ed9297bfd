package safetensors

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// FuzzParseHeader feeds arbitrary headers and data lengths to the parser.
// It must never panic, and whatever it accepts must be a consistent layout
// that Encode reproduces byte for byte once the data is filled in.
func FuzzParseHeader(f *testing.F) {
	f.Add([]byte(`{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}`), int64(8))
	f.Add([]byte(`{"__metadata__":{"format":"pt"},"w":{"dtype":"BF16","shape":[2,3],"data_offsets":[0,12]},"b":{"dtype":"F16","shape":[],"data_offsets":[12,14]}}   `), int64(14))
	f.Add([]byte(`{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}`), int64(8))
	f.Add([]byte(`{"a":{"dtype":"I8","shape":[0,7],"data_offsets":[0,0]}}`), int64(0))
	f.Add([]byte(`{"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}}`), int64(8))
	f.Add([]byte(`{}`), int64(0))
	f.Fuzz(func(t *testing.T, header []byte, dataLen int64) {
		h, err := ParseHeader(header, dataLen)
		if err != nil {
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("error %T is not *Error: %v", err, err)
			}
			return
		}
		var pos int64
		ts := make([]Tensor, 0, len(h.Tensors))
		for _, ti := range h.Tensors {
			if ti.Begin != pos || ti.End < ti.Begin {
				t.Fatalf("accepted bad layout: %+v after %d", ti, pos)
			}
			pos = ti.End
			tn := Tensor{Name: ti.Name, DType: ti.DType, Shape: ti.Shape, Data: make([]byte, ti.End-ti.Begin)}
			if n, _ := ti.DType.Size(); int64(tn.NumElements()*n) != ti.End-ti.Begin {
				t.Fatalf("accepted shape %v of %s for %d bytes", ti.Shape, ti.DType, ti.End-ti.Begin)
			}
			ts = append(ts, tn)
		}
		if pos != dataLen {
			t.Fatalf("accepted tensors covering %d of %d bytes", pos, dataLen)
		}
		if dataLen > 1<<20 {
			return // do not allocate huge buffers for the round trip
		}
		buf, err := Encode(ts, h.Metadata)
		if err != nil {
			t.Fatalf("Encode of an accepted header: %v", err)
		}
		f, err := Decode(buf)
		if err != nil {
			t.Fatalf("Decode(Encode(accepted)): %v", err)
		}
		if len(f.Tensors) != len(ts) {
			t.Fatalf("round trip has %d tensors, want %d", len(f.Tensors), len(ts))
		}
		again, err := Encode(ts, f.Metadata)
		if err != nil || !bytes.Equal(again, buf) {
			t.Fatalf("Encode is not stable across a round trip (err %v)", err)
		}
	})
}

// FuzzDecode feeds whole files: Decode must never panic, and every tensor of
// an accepted file must lie inside it and convert (or refuse) cleanly.
func FuzzDecode(f *testing.F) {
	if golden, err := os.ReadFile(filepath.Join("testdata", "golden.safetensors")); err == nil {
		f.Add(golden)
	}
	f.Add(rawFile(`{"a":{"dtype":"F16","shape":[2],"data_offsets":[0,4]}}`, []byte{0, 0x3c, 0, 0xbc}))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, file []byte) {
		fl, err := Decode(file)
		if err != nil {
			return
		}
		for name, tn := range fl.Tensors {
			if name != tn.Name {
				t.Fatalf("tensor stored under %q is named %q", name, tn.Name)
			}
			size, _ := tn.DType.Size()
			if len(tn.Data) != tn.NumElements()*size {
				t.Fatalf("%s: %d bytes for shape %v", name, len(tn.Data), tn.Shape)
			}
			if v, err := tn.Float32(); err == nil && len(v) != tn.NumElements() {
				t.Fatalf("%s: Float32 gave %d values for shape %v", name, len(v), tn.Shape)
			}
		}
	})
}
