package kvstore

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"testing"

	"github.com/fusionrag/fusionrag/fingerprint"
	"github.com/google/go-cmp/cmp"
	"github.com/zeebo/xxh3"
)

func putU64(b []byte, v uint64) { binary.LittleEndian.PutUint64(b, v) }
func putU32(b []byte, v uint32) { binary.LittleEndian.PutUint32(b, v) }
func xxh3Hash(b []byte) uint64  { return xxh3.Hash(b) }

var allDTypes = []DType{Float32, Float16, BFloat16}

// testNS is the namespace of every test key.
var testNS = fingerprint.Namespace{
	Model:   fingerprint.ModelFingerprint([]byte("test-model"), nil),
	Variant: fingerprint.VariantFused,
}

func testTokens(id, n int) []int32 {
	t := make([]int32, n)
	for i := range t {
		t[i] = int32(id*7919 + i)
	}
	return t
}

type shape struct{ layers, kvHeads, headDim, tokens int }

func (s shape) LayerElems() int { return s.tokens * s.kvHeads * s.headDim }

// testFloats returns deterministic per-layer K and V for a shape.
func testFloats(s shape, seed uint64) (k, v [][]float32) {
	r := rand.New(rand.NewPCG(seed, 99))
	n := s.tokens * s.kvHeads * s.headDim
	for range s.layers {
		kl, vl := make([]float32, n), make([]float32, n)
		for i := range n {
			kl[i] = float32(r.NormFloat64() * 2)
			vl[i] = float32(r.NormFloat64())
		}
		k, v = append(k, kl), append(v, vl)
	}
	return k, v
}

// testBlob builds the blob of chunk id: key and check from its tokens.
func testBlob(t testing.TB, dt DType, s shape, id int) *Blob {
	t.Helper()
	toks := testTokens(id, s.tokens)
	k, v := testFloats(s, uint64(id))
	b, err := FromFloat32(Meta{
		DType: dt, Layers: s.layers, KVHeads: s.kvHeads, HeadDim: s.headDim, Tokens: s.tokens,
		PositionFree: true,
		Key:          fingerprint.ChunkKey(testNS, toks),
		Check:        fingerprint.CheckOf(toks),
	}, k, v)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Encode(); err != nil {
		t.Fatal(err)
	}
	return b
}

func wantOf(id, tokens int) (fingerprint.Key, fingerprint.Check) {
	toks := testTokens(id, tokens)
	return fingerprint.ChunkKey(testNS, toks), fingerprint.CheckOf(toks)
}

// roundTrip returns what converting src to dt and back must give.
func roundTrip(src []float32, dt DType) []float32 {
	out := make([]float32, len(src))
	for i, f := range src {
		switch dt {
		case Float32:
			out[i] = f
		case Float16:
			out[i] = Float16ToFloat32(Float32ToFloat16(f))
		case BFloat16:
			out[i] = BFloat16ToFloat32(Float32ToBFloat16(f))
		}
	}
	return out
}

var small = shape{layers: 2, kvHeads: 2, headDim: 4, tokens: 3}

func TestBlobRoundTrip(t *testing.T) {
	for _, dt := range allDTypes {
		t.Run(dt.String(), func(t *testing.T) {
			b := testBlob(t, dt, small, 1)
			raw, err := b.Encode()
			if err != nil {
				t.Fatal(err)
			}
			if want := HeaderSize + 2*2*2*4*3*dt.Size(); len(raw) != want {
				t.Fatalf("encoded %d bytes, want %d", len(raw), want)
			}
			d, err := Decode(raw)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(b.Meta, d.Meta); diff != "" {
				t.Errorf("meta (-put +decoded):\n%s", diff)
			}
			if &d.Payload()[0] != &raw[HeaderSize] {
				t.Error("Decode copied the payload")
			}
			k, v := d.Float32()
			wk, wv := testFloats(small, 1)
			for l := range small.layers {
				if diff := cmp.Diff(roundTrip(wk[l], dt), k[l]); diff != "" {
					t.Errorf("layer %d K (-want +got):\n%s", l, diff)
				}
				if diff := cmp.Diff(roundTrip(wv[l], dt), v[l]); diff != "" {
					t.Errorf("layer %d V (-want +got):\n%s", l, diff)
				}
			}
			k0, v0 := make([]float32, small.LayerElems()), make([]float32, small.LayerElems())
			if err := d.DecodeLayer(1, k0, v0); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(k[1], k0); diff != "" {
				t.Errorf("DecodeLayer K (-Float32 +DecodeLayer):\n%s", diff)
			}
			if d.DecodeLayer(2, k0, v0) == nil || d.DecodeLayer(0, k0[:1], v0) == nil {
				t.Error("DecodeLayer accepted a bad layer or buffer")
			}
			if dt == Float32 {
				view, ok := AsFloat32(d.K(1))
				if littleEndian && (!ok || view[0] != wk[1][0]) {
					t.Errorf("AsFloat32 view: ok=%v", ok)
				}
			}
		})
	}
}

func TestBlobPositioned(t *testing.T) {
	k, v := testFloats(small, 5)
	b, err := FromFloat32(Meta{DType: Float16, Layers: 2, KVHeads: 2, HeadDim: 4, Tokens: 3, BasePos: 1234}, k, v)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := b.Encode()
	d, err := Decode(raw)
	if err != nil {
		t.Fatal(err)
	}
	if d.PositionFree || d.BasePos != 1234 {
		t.Errorf("got position-free=%v base=%d", d.PositionFree, d.BasePos)
	}
}

// TestBlobEveryByteFlip: any single flipped byte of an encoded blob fails
// Decode with a *CorruptError; never wrong KV.
func TestBlobEveryByteFlip(t *testing.T) {
	for _, dt := range allDTypes {
		raw, _ := testBlob(t, dt, small, 2).Encode()
		for i := range raw {
			for _, mask := range []byte{0x01, 0x80, 0xff} {
				c := bytes.Clone(raw)
				c[i] ^= mask
				_, err := Decode(c)
				var ce *CorruptError
				if !errors.As(err, &ce) || !errors.Is(err, ErrNotFound) {
					t.Fatalf("%s: byte %d ^ %#x: got %v, want *CorruptError", dt, i, mask, err)
				}
			}
		}
	}
}

func TestDecodeErrors(t *testing.T) {
	good, _ := testBlob(t, Float16, small, 3).Encode()
	resum := func(h []byte) []byte { // rewrite the header checksum: tests the checks behind it
		b := bytes.Clone(h)
		putU64(b[headerSumOff:], xxh3Hash(b[:headerSumOff]))
		return b
	}
	mod := func(f func([]byte)) []byte {
		b := bytes.Clone(good)
		f(b)
		return resum(b)
	}
	tests := []struct {
		name string
		data []byte
	}{
		{"empty", nil},
		{"short", good[:HeaderSize-1]},
		{"truncated payload", good[:len(good)-1]},
		{"trailing byte", append(bytes.Clone(good), 0)},
		{"magic", mod(func(b []byte) { b[0] = 'X' })},
		{"version", mod(func(b []byte) { b[4] = 9 })},
		{"dtype", mod(func(b []byte) { b[6] = 0 })},
		{"flags", mod(func(b []byte) { b[7] = 2 })},
		{"zero layers", mod(func(b []byte) { putU32(b[8:], 0) })},
		{"huge dims", mod(func(b []byte) { putU32(b[8:], 1<<24); putU32(b[12:], 1<<24) })},
		{"pos-free with base", mod(func(b []byte) { b[24] = 1 })},
		{"payload length", mod(func(b []byte) { b[64]++ })},
		{"reserved", mod(func(b []byte) { b[100] = 1 })},
		{"payload sum", mod(func(b []byte) { b[72]++ })},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Decode(tc.data)
			var ce *CorruptError
			if !errors.As(err, &ce) {
				t.Fatalf("got %v, want *CorruptError", err)
			}
			t.Log(err)
		})
	}
}

func TestMetaValidation(t *testing.T) {
	base := Meta{DType: Float16, Layers: 1, KVHeads: 1, HeadDim: 1, Tokens: 1}
	bad := []func(*Meta){
		func(m *Meta) { m.DType = 7 },
		func(m *Meta) { m.Layers = 0 },
		func(m *Meta) { m.Tokens = -1 },
		func(m *Meta) { m.HeadDim = maxDim + 1 },
		func(m *Meta) { m.PositionFree, m.BasePos = true, 3 },
		func(m *Meta) { m.BasePos = -1 },
		func(m *Meta) { m.Layers, m.KVHeads, m.HeadDim, m.Tokens = 1<<20, 1<<20, 1<<20, 1<<20 },
	}
	for i, f := range bad {
		m := base
		f(&m)
		if _, err := NewBlob(m); err == nil {
			t.Errorf("case %d: %+v accepted", i, m)
		}
	}
	if _, err := FromFloat32(base, [][]float32{{1}}, nil); err == nil {
		t.Error("missing V accepted")
	}
	if _, err := FromFloat32(base, [][]float32{{1, 2}}, [][]float32{{1}}); err == nil {
		t.Error("wrong layer length accepted")
	}
	for _, s := range []string{"f32", "fp16", "bf16"} {
		if _, err := ParseDType(s); err != nil {
			t.Error(err)
		}
	}
	if _, err := ParseDType("int8"); err == nil {
		t.Error("int8 accepted")
	}
}

// FuzzDecode: arbitrary bytes never panic Decode; what decodes re-encodes to
// the same bytes.
func FuzzDecode(f *testing.F) {
	for _, dt := range allDTypes {
		raw, _ := testBlob(f, dt, shape{1, 1, 2, 2}, 1).Encode()
		f.Add(raw)
	}
	f.Add([]byte("FRKV"))
	f.Add(make([]byte, HeaderSize))
	f.Fuzz(func(t *testing.T, data []byte) {
		b, err := Decode(data)
		if err != nil {
			var ce *CorruptError
			if !errors.As(err, &ce) {
				t.Fatalf("non-corrupt error %v", err)
			}
			return
		}
		b2, err := NewBlob(b.Meta)
		if err != nil {
			t.Fatalf("decoded meta rejected: %v", err)
		}
		copy(b2.Payload(), b.Payload())
		raw, err := b2.Encode()
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(raw, data) {
			t.Fatal("decode/encode not identical")
		}
	})
}
