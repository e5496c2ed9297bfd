package bench

import (
	"context"
	"testing"

	"github.com/fusionrag/fusionrag/internal/llamaserver"
	"github.com/fusionrag/fusionrag/internal/shareddata"
	"github.com/fusionrag/fusionrag/model"
)

// TestPrefillGoOnly runs the harness without a server on a tiny model: rows
// are complete; timings are logged, never asserted.
func TestPrefillGoOnly(t *testing.T) {
	cfg := TTFTQuickModel()
	cfg.Layers, cfg.Dim, cfg.HiddenDim, cfg.Heads, cfg.KVHeads, cfg.HeadDim = 2, 64, 128, 4, 2, 16
	m, err := model.Synthetic(cfg, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	rows, err := RunPrefill(context.Background(), PrefillConfig{Model: m, Sizes: []int{16, 64}, Rounds: 2})
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 2 {
		t.Fatalf("%d rows, want 2", len(rows))
	}
	for i, r := range rows {
		if r.Tokens != []int{16, 64}[i] || r.GoMs <= 0 || r.GoTokS <= 0 || r.GFLOP <= 0 || r.ServerMs != 0 || r.Ratio != 0 {
			t.Errorf("row %d: %+v", i, r)
		}
	}
	if _, err := RunPrefill(context.Background(), PrefillConfig{Model: m, Sizes: []int{1 << 20}}); err == nil {
		t.Error("a size over the model's positions was accepted")
	}
}

// TestPrefillAgainstLlamaServer times stories260K on both sides (the
// llama2c file here, llama.cpp's conversion of it on the server) and checks
// that the comparison is one of the same model: the server's top-10 at the
// last position are the Go runtime's, log-probabilities within 0.05 (the
// server keeps its KV cache in f16: differences of a few 1e-3 are that
// rounding).
func TestPrefillAgainstLlamaServer(t *testing.T) {
	bin := llamaserver.Bin(t)
	gguf := shareddata.Path(t, "llamacpp/stories260K.gguf")
	m, err := model.Load(shareddata.Path(t, "models/stories260K/stories260K.bin"), model.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	ctx := context.Background()
	srv, err := llamaserver.Start(ctx, llamaserver.Config{Bin: bin, Model: gguf, Context: 512, Threads: 1,
		Args: []string{"--override-kv", "llama.context_length=int:512"}})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	rows, err := RunPrefill(ctx, PrefillConfig{Model: m, Sizes: []int{64, 256}, Rounds: 1, Server: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rows {
		t.Logf("%d tokens: go %.1f ms, server %.1f ms, ratio %.2f, top-10 agree %d, max |Δ logprob| %.4f",
			r.Tokens, r.GoMs, r.ServerMs, r.Ratio, r.TopAgree, r.MaxLogprobDiff)
		if !r.Top1 || r.TopCompared < 9 || r.TopAgree < r.TopCompared-1 || r.MaxLogprobDiff > 0.05 {
			t.Errorf("%d tokens: the server's logits are not the Go runtime's: top-1 same %v, top-10 agree %d, max |Δ logprob| %.4f",
				r.Tokens, r.Top1, r.TopAgree, r.MaxLogprobDiff)
		}
	}
}
