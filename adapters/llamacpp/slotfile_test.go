package llamacpp

import (
	"bytes"
	"context"
	"errors"
	"math"
	"os"
	"slices"
	"testing"

	"github.com/fusionrag/fusionrag/internal/shareddata"
	"github.com/fusionrag/fusionrag/model"
)

// p1 is the 26-token prompt the shared slot files were saved for
// (../shared/data/llamacpp/README.md).
var p1 = []int32{1, 403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315, 421, 395, 317, 426, 338, 401, 396, 267, 337, 410, 408, 419, 292, 411}

func loadStories(tb testing.TB) *model.Model {
	tb.Helper()
	m, err := model.Load(shareddata.Path(tb, "models/stories260K/stories260K.bin"), model.LoadOptions{})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { m.Close() })
	return m
}

func prefillKV(tb testing.TB, m *model.Model, ids []int32) *model.Cache {
	tb.Helper()
	pos := make([]int32, len(ids))
	for i := range pos {
		pos[i] = int32(i)
	}
	r, err := m.Forward(context.Background(), nil, model.Batch{Tokens: ids, Pos: pos}, model.ForwardOptions{ReturnKV: true})
	if err != nil {
		tb.Fatal(err)
	}
	return r.KV
}

// TestSharedSlotFiles decodes the three files a real llama-server b10573
// saved (flash attention on: V rows; off: V transposed; --kv-unified: one
// stream), checks every field, and checks that their K (RoPE undone) and V
// equal our runtime's KV of the same 26 tokens within f16 rounding
// (tolerance: see kvTolerance). Re-encoding each decoded file gives its
// bytes back.
func TestSharedSlotFiles(t *testing.T) {
	m := loadStories(t)
	want := prefillKV(t, m, p1)
	rot := newRope(m.Config)
	for _, c := range []struct {
		file    string
		streams int
		vtrans  bool
	}{
		{"slot-p1-fa.bin", 2, false},
		{"slot-p1-nofa.bin", 2, true},
		{"slot-p1-unified.bin", 1, false},
	} {
		t.Run(c.file, func(t *testing.T) {
			raw, err := os.ReadFile(shareddata.Path(t, "llamacpp/"+c.file))
			if err != nil {
				t.Fatal(err)
			}
			f, err := DecodeSlotFile(raw)
			if err != nil {
				t.Fatal(err)
			}
			if !f.Packed || !slices.Equal(f.Tokens, p1) {
				t.Errorf("tokens: packed %v %v, want packed %v", f.Packed, f.Tokens, p1)
			}
			if len(f.Streams) != c.streams {
				t.Fatalf("n_stream %d, want %d", len(f.Streams), c.streams)
			}
			st := &f.Streams[0]
			for s := 1; s < len(f.Streams); s++ {
				if len(f.Streams[s].Cells) != 0 {
					t.Errorf("stream %d has %d cells, want 0 (slot 0 lives in stream 0)", s, len(f.Streams[s].Cells))
				}
			}
			if len(st.Cells) != len(p1) {
				t.Fatalf("%d cells, want %d", len(st.Cells), len(p1))
			}
			for i, cell := range st.Cells {
				if cell.Pos != int32(i) || !slices.Equal(cell.SeqIDs, []int32{0}) {
					t.Errorf("cell %d: pos %d seqs %v, want pos %d seqs [0]", i, cell.Pos, cell.SeqIDs, i)
				}
			}
			if st.VTrans != c.vtrans {
				t.Errorf("v_trans %v, want %v", st.VTrans, c.vtrans)
			}
			lay, err := layoutOf(f, m.Config)
			if err != nil {
				t.Fatal(err)
			}
			wantLay := Layout{Streams: c.streams, VTrans: c.vtrans, KType: TypeF16, VType: TypeF16,
				Layers: m.Config.Layers, KVHeads: m.Config.KVHeads, HeadDim: m.Config.HeadDim}
			if lay != wantLay {
				t.Errorf("layout %v, want %v", lay, wantLay)
			}
			for l, L := range st.Layers {
				d := uint64(m.Config.KVDim())
				if L.KRowSize != 2*d || (!c.vtrans && L.VRowSize != 2*d) || (c.vtrans && (L.VElSize != 2 || uint64(L.VEmbd) != d)) {
					t.Errorf("layer %d sizes: K row %d, V row %d, V el %d x %d", l, L.KRowSize, L.VRowSize, L.VElSize, L.VEmbd)
				}
			}
			// The server's KV against ours, in the server's space (K rotated).
			gotK, gotV := decodeAll(lay, st)
			wK, wV := serverKV(lay, rot, want)
			if err := compareKV(lay, gotK, gotV, wK, wV); err != nil {
				t.Error(err)
			}
			// And with RoPE undone, against our pre-RoPE cache.
			pos, K, V := decodeStream(lay, st)
			fromServer(lay, rot, pos, K)
			if err := compareKV(lay, K, V, want.K, want.V); err != nil {
				t.Errorf("RoPE undone: %v", err)
			}
			var buf bytes.Buffer
			if err := f.Encode(&buf); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(buf.Bytes(), raw) {
				t.Errorf("re-encoded file differs from the server's (%d vs %d bytes)", buf.Len(), len(raw))
			}
			// A file we write for the same KV must decode to the same
			// fields and to the server's values within rounding.
			mine := encodeSlot(lay, rot, p1, want, 0)
			buf.Reset()
			if err := mine.Encode(&buf); err != nil {
				t.Fatal(err)
			}
			if buf.Len() != len(raw) {
				t.Errorf("our file is %d bytes, the server's %d", buf.Len(), len(raw))
			}
			back, err := DecodeSlotFile(buf.Bytes())
			if err != nil {
				t.Fatal(err)
			}
			bK, bV := decodeAll(lay, &back.Streams[0])
			if err := compareKV(lay, bK, bV, gotK, gotV); err != nil {
				t.Errorf("our file against the server's: %v", err)
			}
		})
	}
}

func decodeAll(lay Layout, st *Stream) (K, V [][]float32) {
	_, K, V = decodeStream(lay, st)
	return K, V
}

// TestSharedSlotFileLayers reports the largest differences per layer (for
// the record of the tolerance).
func TestKVDiffRecord(t *testing.T) {
	m := loadStories(t)
	want := prefillKV(t, m, p1)
	raw, err := os.ReadFile(shareddata.Path(t, "llamacpp/slot-p1-fa.bin"))
	if err != nil {
		t.Fatal(err)
	}
	f, err := DecodeSlotFile(raw)
	if err != nil {
		t.Fatal(err)
	}
	lay, err := layoutOf(f, m.Config)
	if err != nil {
		t.Fatal(err)
	}
	gotK, gotV := decodeAll(lay, &f.Streams[0])
	wK, wV := serverKV(lay, newRope(m.Config), want)
	for l := range gotK {
		var mk, mv, rk, rv, sk, sv float64
		for i := range gotK[l] {
			sk = max(sk, math.Abs(float64(wK[l][i])))
			sv = max(sv, math.Abs(float64(wV[l][i])))
		}
		for i := range gotK[l] {
			mk = max(mk, math.Abs(float64(gotK[l][i]-wK[l][i])))
			mv = max(mv, math.Abs(float64(gotV[l][i]-wV[l][i])))
			rk = max(rk, math.Abs(float64(gotK[l][i]-wK[l][i]))/max(math.Abs(float64(wK[l][i])), 1e-30))
			rv = max(rv, math.Abs(float64(gotV[l][i]-wV[l][i]))/max(math.Abs(float64(wV[l][i])), 1e-30))
		}
		t.Logf("layer %d: max |dK| %.3g (rel %.3g, of scale %.3g: %.3g), max |dV| %.3g (rel %.3g, of scale %.3g: %.3g)", l, mk, rk, sk, mk/sk, mv, rv, sv, mv/sv)
	}
	_ = errors.New
}
