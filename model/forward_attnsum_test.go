package model

import (
	"context"
	"testing"
)

// TestAttentionSumOnlyRequestedLayers pins that AttentionSum narrows what the
// requested layers return and does not turn on attention for the others.
func TestAttentionSumOnlyRequestedLayers(t *testing.T) {
	cfg := Config{Arch: "llama", Dim: 32, HiddenDim: 48, Layers: 3, Heads: 4, KVHeads: 2, HeadDim: 8,
		Vocab: 64, MaxPositions: 64, RopeTheta: 10000, NormEps: 1e-5, TiedEmbeddings: true, BOS: 1, EOS: []int32{2}}
	m, err := Synthetic(cfg, 7)
	if err != nil {
		t.Fatal(err)
	}
	b := Batch{Tokens: []int32{1, 5, 9, 11}, Pos: []int32{0, 1, 2, 3}}
	res, err := m.Forward(context.Background(), nil, b, ForwardOptions{AttentionLayers: []int{2}, AttentionSum: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Attention) != 1 || res.Attention[2] == nil {
		t.Fatalf("attention returned for layers %v, want only [2]", keys(res.Attention))
	}
	if a := res.Attention[2]; a.Weights != nil || len(a.Sum) != a.Keys {
		t.Fatalf("layer 2: weights %v (want nil), sum len %d (want %d)", a.Weights != nil, len(a.Sum), a.Keys)
	}
}
