package model

import (
	"testing"
)

// syntheticTestModels writes small synthetic HF models covering what
// stories260K does not (rotate_half RoPE, llama3 rope scaling in all three
// frequency bands, Qwen2 QKV bias, untied classifier, bf16/f16 storage,
// shards, Mistral with a single KV head)
// and loads them back through Load.
func syntheticTestModels(t *testing.T) map[string]*Model {
	t.Helper()
	base := Config{Arch: ArchLlama, Dim: 64, HiddenDim: 128, Layers: 2, Heads: 4, KVHeads: 2, HeadDim: 16,
		Vocab: 300, MaxPositions: 512, RopeTheta: 10000, NormEps: 1e-5, TiedEmbeddings: true, BOS: 1, EOS: []int32{2}}
	llama3 := base
	// original 64 positions: wavelengths of head dim 16 span 6.3 .. 20k, so
	// the kept, interpolated and divided bands (< 16, 16..64, > 64) all occur.
	llama3.RopeScaling = &RopeScaling{Type: "llama3", Factor: 8, LowFreqFactor: 1, HighFreqFactor: 4, OriginalMaxPositions: 64}
	llama3.RopeTheta = 500000
	qwen := base
	qwen.Arch, qwen.QKVBias, qwen.TiedEmbeddings, qwen.KVHeads = ArchQwen2, true, false, 1
	mistral := base
	mistral.Arch, mistral.KVHeads, mistral.TiedEmbeddings = ArchMistral, 1, false
	specs := []struct {
		name string
		cfg  Config
		opts SaveOptions
	}{
		{"synthetic-llama3", llama3, SaveOptions{}},
		{"synthetic-qwen2-bf16-sharded", qwen, SaveOptions{DType: "BF16", Shards: 3}},
		{"synthetic-mistral-f16", mistral, SaveOptions{DType: "F16"}},
	}
	out := map[string]*Model{}
	for i, s := range specs {
		dir := t.TempDir()
		if err := WriteSynthetic(dir, s.cfg, uint64(i+1), s.opts); err != nil {
			t.Fatalf("WriteSynthetic %s: %v", s.name, err)
		}
		m, err := Load(dir, LoadOptions{})
		if err != nil {
			t.Fatalf("Load %s: %v", s.name, err)
		}
		t.Cleanup(func() { m.Close() })
		out[s.name] = m
	}
	return out
}
