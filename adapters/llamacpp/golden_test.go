package llamacpp

import (
	"context"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/fusionrag/fusionrag/model"
)

var update = flag.Bool("update", false, "regenerate testdata/slot-synth-llama.bin with a real llama-server")

// The golden: a slot file a real llama-server (b10573, default flags: f16
// cache, flash attention on the CPU so V in rows, 1 slot) saved after
// evaluating goldenPrompt on a synthetic Hugging Face Llama our code
// generates (goldenConfig, seed goldenSeed) and writes as GGUF. That
// model rotates halves in our runtime and adjacent pairs in llama.cpp
// (the GGUF's wq/wk rows are permuted), so the file exercises PermuteK.
const (
	goldenFile = "testdata/slot-synth-llama.bin"
	goldenSeed = 40
)

var goldenPrompt = []int32{1, 300, 301, 302, 350, 260, 270, 399}

func goldenConfig() model.Config {
	return model.Config{Arch: model.ArchLlama, Dim: 64, HiddenDim: 96, Layers: 2, Heads: 4, KVHeads: 2, HeadDim: 16,
		Vocab: 400, MaxPositions: 512, RopeTheta: 10000, NormEps: 1e-5, BOS: 1, EOS: []int32{2}}
}

// TestGoldenSlotFile decodes the golden, checks every field, learns its
// layout (permuted K) and checks its KV against our runtime's for the same
// prompt within f16 rounding; re-encoding gives its bytes back. With
// -update it first regenerates the golden (needs llama-server).
func TestGoldenSlotFile(t *testing.T) {
	if *update {
		regenerateGolden(t)
	}
	raw, err := os.ReadFile(goldenFile)
	if err != nil {
		t.Fatalf("%v (regenerate with go test -run TestGoldenSlotFile -update and llama-server on PATH)", err)
	}
	f, err := DecodeSlotFile(raw)
	if err != nil {
		t.Fatal(err)
	}
	if !f.Packed || !slices.Equal(f.Tokens, goldenPrompt) || len(f.Streams) != 1 || len(f.Streams[0].Cells) != len(goldenPrompt) {
		t.Fatalf("tokens %v packed %v, %d streams", f.Tokens, f.Packed, len(f.Streams))
	}
	for i, c := range f.Streams[0].Cells {
		if c.Pos != int32(i) || !slices.Equal(c.SeqIDs, []int32{0}) {
			t.Errorf("cell %d: %+v", i, c)
		}
	}
	m, err := model.Synthetic(goldenConfig(), goldenSeed)
	if err != nil {
		t.Fatal(err)
	}
	a := &Adapter{m: m, rot: newRope(m.Config), probe: goldenPrompt, probeKV: prefillKV(t, m, goldenPrompt)}
	lay, err := a.checkProbe(raw)
	if err != nil {
		t.Fatal(err)
	}
	want := Layout{Streams: 1, KType: TypeF16, VType: TypeF16, Layers: 2, KVHeads: 2, HeadDim: 16, PermuteK: true}
	if lay != want {
		t.Errorf("layout %v, want %v", lay, want)
	}
	var b bytesBuffer
	if err := f.Encode(&b); err != nil || !slices.Equal(b.b, raw) {
		t.Errorf("re-encoding: %v, equal %v", err, slices.Equal(b.b, raw))
	}
}

type bytesBuffer struct{ b []byte }

func (w *bytesBuffer) Write(p []byte) (int, error) { w.b = append(w.b, p...); return len(p), nil }

func regenerateGolden(t *testing.T) {
	dir := t.TempDir()
	if err := model.WriteSynthetic(filepath.Join(dir, "hf"), goldenConfig(), goldenSeed, model.SaveOptions{}); err != nil {
		t.Fatal(err)
	}
	m, err := model.Load(filepath.Join(dir, "hf"), model.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	gguf := filepath.Join(dir, "synth.gguf")
	if err := m.WriteGGUF(gguf, model.GGUFOptions{DType: "F32"}); err != nil {
		t.Fatal(err)
	}
	srv, slots := startServer(t, gguf, 1)
	body, _ := json.Marshal(map[string]any{"prompt": goldenPrompt, "n_predict": 1, "id_slot": 0, "cache_prompt": false, "temperature": 0,
		"logit_bias": [][]any{{2, 1e4}}}) // EOS: a random model's byte tokens make the server answer 500
	complete(t, srv.URL, body)
	var saved map[string]any
	postJSON(t, srv.URL+"/slots/0?action=save", []byte(`{"filename":"golden.bin"}`), &saved)
	raw, err := os.ReadFile(filepath.Join(slots, "golden.bin"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(goldenFile, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("wrote %s (%d bytes): %v", goldenFile, len(raw), saved)
	_ = context.Background
}
