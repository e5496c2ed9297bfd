package bench

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/fusionrag/fusionrag/internal/llamaserver"
	"github.com/fusionrag/fusionrag/model"
)

// TestLlamaCppQuick runs the llama.cpp TTFT harness on a tiny synthetic
// model behind a real llama-server (skipped loudly without one): every
// timed sidecar request was answered from the restored slot (the server
// prefilled one token), the server's full prefill prefilled all. Timings are
// logged, never asserted.
func TestLlamaCppQuick(t *testing.T) {
	bin := llamaserver.Bin(t)
	dir := t.TempDir()
	cfg := TTFTQuickModel()
	cfg.Layers, cfg.Dim, cfg.HiddenDim, cfg.Heads, cfg.KVHeads, cfg.HeadDim, cfg.MaxPositions = 2, 64, 128, 4, 2, 16, 1024
	if err := model.WriteSynthetic(filepath.Join(dir, "hf"), cfg, 1, model.SaveOptions{}); err != nil {
		t.Fatal(err)
	}
	src, err := model.Load(filepath.Join(dir, "hf"), model.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	gguf := filepath.Join(dir, "m.gguf")
	err = src.WriteGGUF(gguf, model.GGUFOptions{})
	src.Close()
	if err != nil {
		t.Fatal(err)
	}
	m, err := model.Load(gguf, model.LoadOptions{MaxPositions: cfg.MaxPositions})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	rows, err := RunLlamaCpp(context.Background(), LlamaCppConfig{Model: m, GGUF: gguf, Bin: bin, Contexts: []int{200}, Chunks: 4, Rounds: 2, Threads: 1})
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 3 {
		t.Fatalf("%d rows, want 3 (full, reuse, fusionrag)", len(rows))
	}
	for _, r := range rows {
		t.Logf("%s: prompt %d, server prefilled %d, TTFT %.1f ms (full %.1f)", r.Method, r.PromptTokens, r.PromptTokens-r.CachedTokens, r.TTFTMs, r.FullTTFTMs)
		full := r.Method == "full (llama-server)"
		if full && (r.CachedTokens != 0 || r.Fused != 0) || !full && (r.Fused != r.Rounds || r.PromptTokens-r.CachedTokens != 1) {
			t.Errorf("%s: fused %d/%d, prompt %d, cached %d", r.Method, r.Fused, r.Rounds, r.PromptTokens, r.CachedTokens)
		}
	}
}
