package bench

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/fusionrag/fusionrag/internal/shareddata"
	"github.com/fusionrag/fusionrag/model"
)

// loadStoriesTok loads stories260K with its tokenizer (the engine needs one).
func loadStoriesTok(t testing.TB) *model.Model {
	t.Helper()
	m, err := model.Load(shareddata.Path(t, "models/stories260K/stories260K.bin"),
		model.LoadOptions{Tokenizer: shareddata.Path(t, "models/stories260K/tok512.bin")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

// musiquePrompts lays out n MuSiQue prompts for m (3 passages of 48 tokens).
func musiquePrompts(t testing.TB, m *model.Model, n int) []string {
	t.Helper()
	ds, err := LoadDataset(shareddata.Path(t, "rag/cacheblend_musique_s.json"))
	if err != nil {
		t.Fatal(err)
	}
	ps, err := PromptTexts(QualityConfig{Model: m, Datasets: []*Dataset{ds}, Passages: 3, PassageTokens: 48, AnswerTokens: 32,
		Separator: StackSeparator}, n)
	if err != nil {
		t.Fatal(err)
	}
	return ps
}

// TestLoadQuick puts the real engine and the sidecar (pass-through) under a
// little load: every request succeeds through both, rows are complete.
func TestLoadQuick(t *testing.T) {
	m := loadStoriesTok(t)
	st, err := StartStack(StackConfig{Model: m, Fusion: true})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	prompts := musiquePrompts(t, m, 2)
	start := time.Now()
	rows, err := RunLoad(context.Background(), LoadConfig{Targets: []LoadTarget{{Name: "direct", URL: st.EngineURL},
		{Name: "passthrough", URL: st.SidecarURL}, {Name: "fusion", URL: st.FusionURL, Separated: true}},
		Prompts: prompts, Separator: StackSeparator, Concurrency: []int{1, 3}, Requests: 4, MaxTokens: 4, Quiet: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 6 {
		t.Fatalf("%d rows, want 6", len(rows))
	}
	for _, r := range rows {
		if r.Errors != 0 || r.Requests != 4 || r.TTFTP50Ms <= 0 || r.LatencyP50Ms < r.TTFTP50Ms || r.RPS <= 0 || r.TokensPerS <= 0 {
			t.Errorf("bad row %+v", r)
		}
		// Only the fusion path publishes KV; the engine loads it.
		if fused := r.Target == "fusion"; fused != (r.CachedShare > 0) {
			t.Errorf("%s at %d clients: %.0f%% of prompt tokens loaded from published KV", r.Target, r.Concurrency, 100*r.CachedShare)
		}
	}
	var md strings.Builder
	LoadTable(rows, time.Since(start)).WriteMarkdown(&md)
	t.Logf("\n%s", md.String())

	// A dead target counts errors, it does not fail the run.
	rows, err = RunLoad(context.Background(), LoadConfig{Targets: []LoadTarget{{Name: "dead", URL: "http://127.0.0.1:1"}},
		Prompts: prompts, Concurrency: []int{2}, Requests: 2, Quiet: true})
	if err != nil || rows[0].Errors != 2 || rows[0].FirstError == "" {
		t.Errorf("dead target: %v %+v", err, rows)
	}
}

// TestE2EQuick times a context sweep end to end, direct and through the
// sidecar; the server's prompt length grows with the nominal context.
func TestE2EQuick(t *testing.T) {
	m := loadStoriesTok(t)
	st, err := StartStack(StackConfig{Model: m, Fusion: true})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ds, err := LoadDataset(shareddata.Path(t, "rag/cacheblend_musique_s.json"))
	if err != nil {
		t.Fatal(err)
	}
	var sizes []E2EPrompts
	for _, n := range []int{64, 256} {
		ps, err := PromptTexts(QualityConfig{Model: m, Datasets: []*Dataset{ds}, Passages: 4, PassageTokens: n / 4, AnswerTokens: 32,
			Separator: StackSeparator}, 2)
		if err != nil {
			t.Fatal(err)
		}
		sizes = append(sizes, E2EPrompts{ContextTokens: n, Prompts: ps})
	}
	rows, err := RunE2E(context.Background(), E2EConfig{Targets: []LoadTarget{{Name: "direct", URL: st.EngineURL},
		{Name: "passthrough", URL: st.SidecarURL},
		{Name: "fusion reuse", URL: st.FusionURL, Separated: true, Headers: map[string]string{"X-Fusionrag-Strategy": "reuse"}}},
		Sizes: sizes, Separator: StackSeparator, Repeats: 1, Quiet: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 6 {
		t.Fatalf("%d rows", len(rows))
	}
	for i, r := range rows {
		if r.Errors != 0 || r.TTFTP50Ms <= 0 || r.PromptTokens <= float64(r.ContextTokens) {
			t.Errorf("bad row %+v", r)
		}
		// The same text reaches the engine from every target.
		if base := rows[i/3*3]; r.PromptTokens != base.PromptTokens {
			t.Errorf("%s at %d: %v prompt tokens, direct %v", r.Target, r.ContextTokens, r.PromptTokens, base.PromptTokens)
		}
		if fused := r.Target == "fusion reuse"; fused != (r.CachedTokens > 0) {
			t.Errorf("%s at %d: %v KV-loaded tokens", r.Target, r.ContextTokens, r.CachedTokens)
		}
	}
	var md strings.Builder
	E2ETable(rows, 0).WriteMarkdown(&md)
	t.Logf("\n%s", md.String())
}
