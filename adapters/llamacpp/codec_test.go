package llamacpp

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math"
	"slices"
	"strings"
	"testing"

	"github.com/fusionrag/fusionrag/adapters"
	"github.com/google/go-cmp/cmp"
)

// sampleFile is a small file with every field set: packed tokens, two
// streams (the second empty), two layers, the given V layout.
func sampleFile(vtrans bool) *SlotFile {
	const cells, d = 3, 4
	st := Stream{VTrans: vtrans}
	for i := range cells {
		st.Cells = append(st.Cells, Cell{Pos: int32(10 + i), SeqIDs: []int32{1}})
	}
	for l := range 2 {
		L := Layer{KType: TypeF16, KRowSize: 2 * d, K: make([]byte, 2*d*cells), VType: TypeF32}
		for i := range L.K {
			L.K[i] = byte(l*31 + i)
		}
		if vtrans {
			L.VElSize, L.VEmbd = 4, d
		} else {
			L.VRowSize = 4 * d
		}
		L.V = make([]byte, 4*d*cells)
		for i := range L.V {
			L.V[i] = byte(l*17 + 3*i)
		}
		st.Layers = append(st.Layers, L)
	}
	return &SlotFile{Tokens: []int32{1, 50, 60}, Packed: true, Streams: []Stream{st, {}}}
}

// TestSlotFileRoundTrip: encode then decode gives every field back, for
// both V layouts and both token forms.
func TestSlotFileRoundTrip(t *testing.T) {
	for _, vtrans := range []bool{false, true} {
		for _, packed := range []bool{true, false} {
			f := sampleFile(vtrans)
			f.Packed = packed
			var b bytes.Buffer
			if err := f.Encode(&b); err != nil {
				t.Fatal(err)
			}
			g, err := DecodeSlotFile(b.Bytes())
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(f, g); diff != "" {
				t.Errorf("vtrans %v packed %v: round trip (-want +got):\n%s", vtrans, packed, diff)
			}
		}
	}
}

// TestSlotFileCorrupt: every truncation and a set of corrupted fields give
// ErrSlotFile, never a panic.
func TestSlotFileCorrupt(t *testing.T) {
	var b bytes.Buffer
	if err := sampleFile(true).Encode(&b); err != nil {
		t.Fatal(err)
	}
	raw := b.Bytes()
	for n := range len(raw) {
		if _, err := DecodeSlotFile(raw[:n]); !errors.Is(err, ErrSlotFile) {
			t.Fatalf("truncated to %d of %d bytes: %v, want ErrSlotFile", n, len(raw), err)
		}
	}
	put := func(off int, v uint32) []byte {
		c := slices.Clone(raw)
		binary.LittleEndian.PutUint32(c[off:], v)
		return c
	}
	// Offsets: magic 0, version 4, n_tokens 8, packed list 12.. (7 values),
	// n_stream 40, cell_count 44.
	for name, c := range map[string][]byte{
		"magic":            put(0, 0x12345678),
		"version":          put(4, 3),
		"token count":      put(8, math.MaxUint32),
		"packed version":   put(16, 2),
		"packed count":     put(20, 99),
		"media chunks":     put(36, 1),
		"zero streams":     put(40, 0),
		"many streams":     put(40, 1<<30),
		"huge cell count":  put(44, 1<<23),
		"trailing":         append(slices.Clone(raw), 0),
		"negative token":   put(24, math.MaxUint32),
		"v_trans 2":        put(48+3*12, 2),
		"huge k row":       put(48+3*12+8+4, math.MaxUint32),
		"huge seq id list": put(48+4, 1<<20),
	} {
		if _, err := DecodeSlotFile(c); !errors.Is(err, ErrSlotFile) {
			t.Errorf("%s: %v, want ErrSlotFile", name, err)
		}
	}
}

// FuzzSlotFile: decoding never panics, and whatever decodes re-encodes to
// the same bytes.
func FuzzSlotFile(f *testing.F) {
	for _, vt := range []bool{false, true} {
		var b bytes.Buffer
		sampleFile(vt).Encode(&b)
		f.Add(b.Bytes())
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		sf, err := DecodeSlotFile(b)
		if err != nil {
			if !errors.Is(err, ErrSlotFile) {
				t.Fatalf("error %v does not wrap ErrSlotFile", err)
			}
			return
		}
		var out bytes.Buffer
		if err := sf.Encode(&out); err != nil {
			t.Fatalf("decoded file does not encode: %v", err)
		}
		// Plain token lists that start with -1 read as packed: compare
		// only files that are stable under re-encoding of their token form.
		if !bytes.Equal(out.Bytes(), b) && sf.Packed == (len(b) > 12 && int32(binary.LittleEndian.Uint32(b[12:])) == -1) {
			t.Fatalf("re-encoding differs: %d vs %d bytes", out.Len(), len(b))
		}
	})
}

// TestFloatConversions: f16 and bf16 round to nearest even, with the
// boundaries, subnormals, infinities and NaN.
func TestFloatConversions(t *testing.T) {
	for _, c := range []struct {
		f float32
		h uint16
	}{
		{0, 0}, {float32(math.Copysign(0, -1)), 0x8000}, {1, 0x3c00}, {-2, 0xc000}, {65504, 0x7bff},
		{65520, 0x7c00}, {1e9, 0x7c00}, {float32(math.Inf(-1)), 0xfc00},
		{0x1p-24, 0x0001}, {0x1p-25, 0}, {0x1.8p-25, 0x0001}, {0x1p-14, 0x0400}, {0x1.ff8p-15, 0x03ff}, {0x1.ffcp-15, 0x0400}, /* tie: to even */
		{1 + 0x1p-11, 0x3c00}, {1 + 0x1.8p-11, 0x3c01}, {1 + 3*0x1p-11, 0x3c02},
	} {
		if got := f32ToF16(c.f); got != c.h {
			t.Errorf("f32ToF16(%g) = %#04x, want %#04x", c.f, got, c.h)
		}
	}
	for h := range 1 << 16 {
		f := f16ToF32(uint16(h))
		if f != f { // NaN
			if back := f32ToF16(f); back&0x7c00 != 0x7c00 || back&0x3ff == 0 {
				t.Errorf("NaN %#04x -> %#04x", h, back)
			}
			continue
		}
		if back := f32ToF16(f); back != uint16(h) {
			t.Fatalf("f16 %#04x -> %g -> %#04x", h, f, back)
		}
	}
	for _, c := range []struct {
		f float32
		h uint16
	}{{1, 0x3f80}, {1 + 0x1p-8, 0x3f80}, {1 + 0x1.8p-8, 0x3f81}, {1 + 3*0x1p-8, 0x3f82}} {
		if got := f32ToBF16(c.f); got != c.h {
			t.Errorf("f32ToBF16(%g) = %#04x, want %#04x", c.f, got, c.h)
		}
	}
}

// TestRegisteredNeedsSlotDir: the registration tells a configuration
// reader (proxy.LoadConfig) that this adapter cannot work without a slot
// directory, so a config without one is refused when read.
func TestRegisteredNeedsSlotDir(t *testing.T) {
	if why := adapters.NeedsOf(Name).SlotDir; !strings.Contains(why, "--slot-save-path") {
		t.Errorf("adapters.NeedsOf(%q).SlotDir = %q, want the reason naming --slot-save-path", Name, why)
	}
}
