package modeltest

import (
	"testing"

	"github.com/fusionrag/fusionrag/model"
)

func TestStories(t *testing.T) {
	m := Stories(t)
	if m.Tokenizer == nil {
		t.Fatal("no tokenizer")
	}
	if c := m.Config; c.Dim != 64 || c.Layers != 5 || c.Heads != 8 || c.KVHeads != 4 || c.Vocab != 512 || c.MaxPositions != 512 {
		t.Errorf("config %+v, want the stories260K shape of the doc comment", c)
	}
	if got := m.Tokenizer.Encode("Once upon a time"); len(got) == 0 {
		t.Error("tokenizer encodes nothing")
	}
}

func TestSynthetic(t *testing.T) {
	cfg := model.Config{Arch: model.ArchLlama, Dim: 8, HiddenDim: 16, Layers: 1, Heads: 2, KVHeads: 1, HeadDim: 4,
		Vocab: 16, MaxPositions: 8, RopeTheta: 10000, NormEps: 1e-5, BOS: 1}
	a, b := Synthetic(t, cfg, 5), Synthetic(t, cfg, 5)
	if a.Config.Dim != 8 || a.Config.Vocab != 16 {
		t.Errorf("config %+v", a.Config)
	}
	if a == b {
		t.Error("one model returned twice")
	}
}

// TestPrefill: the KV covers every token.
func TestPrefill(t *testing.T) {
	m := Stories(t)
	ids := append([]int32{m.Tokenizer.BOS()}, m.Tokenizer.Encode("Once upon a time")...)
	kv := Prefill(t, m, ids)
	if kv.Len() != len(ids) {
		t.Fatalf("KV of %d tokens, want %d", kv.Len(), len(ids))
	}
}
