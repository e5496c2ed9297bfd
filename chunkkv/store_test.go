package chunkkv

import (
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/fusionrag/fusionrag/fingerprint"
	"github.com/fusionrag/fusionrag/kvstore"
	"github.com/fusionrag/fusionrag/model"
)

func tinyModel(t *testing.T) *model.Model {
	t.Helper()
	m, err := model.Synthetic(model.Config{Arch: model.ArchLlama, Dim: 32, HiddenDim: 64, Layers: 2, Heads: 4, KVHeads: 2,
		HeadDim: 8, Vocab: 64, MaxPositions: 64, RopeTheta: 10000, NormEps: 1e-5, BOS: 1, EOS: []int32{2}}, 1)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func memStore(t *testing.T) kvstore.Store {
	t.Helper()
	st, err := kvstore.NewMem(kvstore.MemConfig{MaxBytes: 1 << 24})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// TestRawKVIsPrefillSlice: RawKV on top of S's KV equals the C slice of a
// one-shot prefill of S + C (the definition), bit for bit on the cpu
// backend, which computes each row the same way in both passes.
func TestRawKVIsPrefillSlice(t *testing.T) {
	m := tinyModel(t)
	ctx := context.Background()
	S, C := []int32{1, 5, 9}, []int32{12, 7, 30, 4}
	pos := func(from, n int) []int32 {
		p := make([]int32, n)
		for i := range p {
			p[i] = int32(from + i)
		}
		return p
	}
	sres, err := m.Forward(ctx, nil, model.Batch{Tokens: S, Pos: pos(0, len(S))}, model.ForwardOptions{ReturnKV: true})
	if err != nil {
		t.Fatal(err)
	}
	raw, err := RawKV(ctx, m, sres.KV, len(S), C)
	if err != nil {
		t.Fatal(err)
	}
	full, err := m.Forward(ctx, nil, model.Batch{Tokens: append(slices.Clone(S), C...), Pos: pos(0, len(S)+len(C))}, model.ForwardOptions{ReturnKV: true})
	if err != nil {
		t.Fatal(err)
	}
	want := full.KV.Slice(len(S), len(S)+len(C))
	if raw.Len() != len(C) || !slices.Equal(raw.Pos, want.Pos) {
		t.Fatalf("raw KV positions %v, want %v", raw.Pos, want.Pos)
	}
	for l := range raw.Layers {
		if !slices.Equal(raw.K[l], want.K[l]) || !slices.Equal(raw.V[l], want.V[l]) {
			t.Fatalf("layer %d: raw KV differs from the prefill slice", l)
		}
	}
}

func TestStoreRoundTripAndErrors(t *testing.T) {
	m := tinyModel(t)
	ctx := context.Background()
	C := []int32{12, 7, 30}
	kv, err := RawKV(ctx, m, nil, 0, C)
	if err != nil {
		t.Fatal(err)
	}
	st := memStore(t)
	src := &Store{Store: st}
	key := fingerprint.ChunkKey(fingerprint.Namespace{Params: "t"}, C)
	check := fingerprint.CheckOf(C)

	if _, err := src.GetKV(ctx, key, check); !errors.Is(err, ErrMiss) {
		t.Fatalf("GetKV before PutKV: got %v, want ErrMiss", err)
	}
	if err := src.PutKV(ctx, key, check, kv); err != nil {
		t.Fatal(err)
	}
	ld, err := src.GetKV(ctx, key, check)
	if err != nil {
		t.Fatal(err)
	}
	for l := range kv.Layers {
		if !slices.Equal(ld.KV.K[l], kv.K[l]) || !slices.Equal(ld.KV.V[l], kv.V[l]) {
			t.Fatalf("layer %d differs after a round trip", l)
		}
	}
	if ld.Release != nil {
		ld.Release()
	}

	// A blob with RoPE applied is never read as position-free KV.
	other := fingerprint.ChunkKey(fingerprint.Namespace{Params: "u"}, C)
	b, err := kvstore.FromFloat32(kvstore.Meta{DType: kvstore.Float32, Layers: kv.Layers, KVHeads: kv.KVHeads,
		HeadDim: kv.HeadDim, Tokens: kv.Len(), Key: other, Check: check}, kv.K, kv.V)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Put(ctx, b); err != nil {
		t.Fatal(err)
	}
	var me *KVMismatchError
	if _, err := src.GetKV(ctx, other, check); !errors.As(err, &me) || me.Field != "placement" || !errors.Is(err, ErrKVMismatch) {
		t.Fatalf("GetKV of a RoPE'd blob: got %v, want a placement *KVMismatchError", err)
	}
}
