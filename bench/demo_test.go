package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/fusionrag/fusionrag/fusion"
	"github.com/fusionrag/fusionrag/internal/shareddata"
	"github.com/fusionrag/fusionrag/model"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/")

// TestRunDemoQuick runs the whole demo (the --quick sizes; smaller still with
// -short) on the built-in model and the generated corpus, and checks the
// report's content. It asserts no timing: TTFT on a machine shared with
// other builds is noise; what must hold exactly is the path every request
// took and what each strategy recomputed.
func TestRunDemoQuick(t *testing.T) {
	cfg := DemoConfig{Quick: true, Corpus: DemoCorpusGenerated, Command: []string{"fusionrag", "demo", "--quick"}}
	if testing.Short() {
		cfg.Queries, cfg.ChunksPerQuery, cfg.ChunkTokens, cfg.MaxTokens, cfg.Neighbours = 2, 4, 64, 2, 3
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	start := time.Now()
	r, err := RunDemo(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("demo ran in %s", time.Since(start).Round(time.Millisecond))

	var names []string
	for _, row := range r.Rows {
		names = append(names, row.Strategy)
	}
	if diff := cmp.Diff(DemoStrategies, names); diff != "" {
		t.Fatalf("rows (-want +got):\n%s", diff)
	}
	if r.Ingest.Chunks != r.Chunks || r.Ingest.RawStored != r.Chunks || r.Ingest.FusedStored != r.Chunks || r.Ingest.Failed != 0 {
		t.Errorf("ingest %+v: want raw and fused KV of all %d chunks", r.Ingest, r.Chunks)
	}
	wantQueries := 4
	if testing.Short() {
		wantQueries = 2
	}
	if r.Queries != wantQueries || len(r.Results) != wantQueries*len(DemoStrategies) {
		t.Errorf("%d queries, %d results: want %d and %d", r.Queries, len(r.Results), wantQueries, wantQueries*len(DemoStrategies))
	}
	for _, row := range r.Rows {
		t.Run(row.Strategy, func(t *testing.T) {
			// Every request took the fusion path, and the engine loaded the
			// published KV of all prompt tokens but the last.
			if row.Fused != row.Requests || row.Requests != r.Queries {
				t.Errorf("fusion path %d/%d (queries %d): %v", row.Fused, row.Requests, r.Queries, row.FallbackReasons)
			}
			for _, q := range r.Results {
				if q.Strategy == row.Strategy && (q.PromptTokens == 0 || q.CachedTokens != q.PromptTokens-1) {
					t.Errorf("query %s: the engine loaded %d of %d prompt tokens, want all but the last", q.Query, q.CachedTokens, q.PromptTokens)
				}
			}
			if !(row.TTFTMedianMs > 0) || !(row.Speedup > 0) {
				t.Errorf("TTFT %v ms, speedup %v", row.TTFTMedianMs, row.Speedup)
			}
			switch row.Strategy {
			case "full":
				if row.Recomputed != 1 || row.Speedup != 1 || row.LogitErr != 0 || row.Fidelity != 100 || row.Top1 != 1 || row.SameAnswer != 1 {
					t.Errorf("full is the reference: %+v", row)
				}
			case "reuse":
				// Fidelity's baseline is reuse of raw chunk KV; this reuse row is on fused KV.
				if row.HitRate != 1 || row.Recomputed != 0 || !(row.Fidelity < 100) || !(row.LogitErr > 0) {
					t.Errorf("reuse: %+v; want every chunk hit, nothing recomputed, fidelity below 100 and a logit error", row)
				}
			default:
				// round(ratio × context) of the context tokens: within
				// one token of the ratio for contexts of a few hundred.
				if row.HitRate != 1 || math.Abs(row.Recomputed-r.Rows[0].Ratio) > 1/r.ContextTokens+1e-9 {
					t.Errorf("%s: hit rate %v, recomputed %v; want 1 and %v", row.Strategy, row.HitRate, row.Recomputed, row.Ratio)
				}
				if row.LogitErr >= r.Rows[1].LogitErr*1.5 {
					t.Errorf("%s: logit error %v far above reuse's %v", row.Strategy, row.LogitErr, r.Rows[1].LogitErr)
				}
			}
		})
	}

	// The outputs: the table, and the files read back.
	var text bytes.Buffer
	if err := r.WriteText(&text); err != nil {
		t.Fatal(err)
	}
	for _, want := range append([]string{"TTFT ms", "speedup", "hit rate", "fidelity"}, DemoStrategies...) {
		if !strings.Contains(text.String(), want) {
			t.Errorf("the table lacks %q:\n%s", want, text.String())
		}
	}
	dir := t.TempDir()
	if err := r.WriteFiles(dir); err != nil {
		t.Fatal(err)
	}
	checkDemoFiles(t, dir, r)
}

// TestRunDemoTextFormat: prompts sent as text take the fusion path too (the
// sidecar finds the ingested chunks in the engine's ids of the whole text).
func TestRunDemoTextFormat(t *testing.T) {
	cfg := DemoConfig{Format: DemoFormatText, Corpus: DemoCorpusGenerated, Queries: 2, ChunksPerQuery: 3, ChunkTokens: 48, MaxTokens: 2,
		Neighbours: 2, Strategies: []string{"fusionrag"}}
	r, err := RunDemo(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, row := range r.Rows {
		if row.Fused != row.Requests || row.Requests != 2 || (row.Strategy == "fusionrag" && row.HitRate != 1) {
			t.Errorf("%s: fusion path %d/%d, hit rate %v: %v", row.Strategy, row.Fused, row.Requests, row.HitRate, row.FallbackReasons)
		}
	}
	for _, n := range r.Notes {
		if strings.HasPrefix(n, "WARNING") {
			t.Error(n)
		}
	}
}

// checkDemoFiles reads demo.json, demo.md and the PNG back.
func checkDemoFiles(t *testing.T, dir string, r *DemoReport) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "demo.json"))
	if err != nil {
		t.Fatal(err)
	}
	var back DemoReport
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatalf("demo.json: %v", err)
	}
	if diff := cmp.Diff(r.Rows, back.Rows, cmpopts.EquateEmpty()); diff != "" {
		t.Errorf("demo.json rows (-written +read):\n%s", diff)
	}
	md, err := os.ReadFile(filepath.Join(dir, "demo.md"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(md), "| strategy | ratio | TTFT ms |") || !strings.Contains(string(md), "demo-ttft.png") {
		t.Errorf("demo.md lacks the table or the chart:\n%s", md)
	}
	png, err := os.ReadFile(filepath.Join(dir, "demo-ttft.png"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(png, []byte("\x89PNG\r\n\x1a\n")) {
		t.Errorf("demo-ttft.png is not a PNG")
	}
}

// demoGoldenReport is a fixed report for the rendering tests.
func demoGoldenReport() *DemoReport {
	return &DemoReport{
		Meta:        Meta{Command: "fusionrag demo", Model: "synthetic-llama-4M", Machine: Machine{CPU: "test CPU", Cores: 2, GOMAXPROCS: 2, OS: "linux", Arch: "amd64", Go: "go1.26"}, Date: "2026-11-28T00:00:00Z"},
		ModelParams: 4_300_000, Corpus: "generated", Chunks: 20, Queries: 4, PromptTokens: 900, ContextTokens: 868,
		Rows: []DemoRow{
			{Strategy: "full", Ratio: 0.15, Requests: 4, Fused: 4, TTFTMedianMs: 489.1, Speedup: 1, Recomputed: 1, CachedShare: 0.999, Top1: 1, Fidelity: 100, SameAnswer: 1},
			{Strategy: "reuse", Ratio: 0.15, Requests: 4, Fused: 4, TTFTMedianMs: 63.2, Speedup: 7.74, HitRate: 1, CachedShare: 0.999, Top1: 1, LogitErr: 0.0666, SameAnswer: 1},
			{Strategy: "fusionrag", Ratio: 0.15, Requests: 4, Fused: 3, FallbackReasons: []string{"fallback: breaker_open"}, TTFTMedianMs: 140, Speedup: 3.49, HitRate: 1, Recomputed: 0.15, CachedShare: 0.75, Top1: 0.75, LogitErr: 0.0592, Fidelity: 11.2, SameAnswer: 0.75},
		},
		Elapsed: 17400 * time.Millisecond,
		Notes:   []string{"a note"},
	}
}

func TestDemoReportGolden(t *testing.T) {
	r := demoGoldenReport()
	var text bytes.Buffer
	if err := r.WriteText(&text); err != nil {
		t.Fatal(err)
	}
	var md bytes.Buffer
	if err := r.table().WriteMarkdown(&md); err != nil {
		t.Fatal(err)
	}
	for name, got := range map[string][]byte{"table.txt": text.Bytes(), "table.md": md.Bytes()} {
		path := filepath.Join("testdata", "demo", name)
		if *update {
			if err := os.WriteFile(path, got, 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		want, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("%v (run go test ./bench -run TestDemoReportGolden -update)", err)
		}
		if diff := cmp.Diff(string(want), string(got)); diff != "" {
			t.Errorf("%s (-want +got):\n%s", name, diff)
		}
	}
	if row, ok := r.row("fusionrag"); !ok || row.Fused != 3 {
		t.Errorf("row(fusionrag) = %+v, %v", row, ok)
	}
	if _, ok := r.row("epic"); ok {
		t.Errorf("row(epic) found in a report without it")
	}
	dir := t.TempDir()
	if err := r.WriteFiles(dir); err != nil {
		t.Fatal(err)
	}
	checkDemoFiles(t, dir, r)
}

func TestAggregateDemo(t *testing.T) {
	results := []DemoQueryResult{
		{Query: "q0", Strategy: "full", TTFTMs: 400, PromptTokens: 100, ContextTokens: 80, CachedTokens: 99, Path: "fusion", Recomputed: 80, Answer: "a", Top1: true, Fidelity: 100},
		{Query: "q1", Strategy: "full", TTFTMs: 600, PromptTokens: 100, ContextTokens: 80, CachedTokens: 99, Path: "fusion", Recomputed: 80, Answer: "b", Top1: true, Fidelity: 100},
		{Query: "q0", Strategy: "fusionrag", TTFTMs: 100, PromptTokens: 100, ContextTokens: 80, CachedTokens: 99, Path: "fusion", Hits: 4, Recomputed: 12, Answer: "a", Top1: true, LogitErr: 0.1, Fidelity: 50},
		{Query: "q1", Strategy: "fusionrag", TTFTMs: 150, PromptTokens: 100, ContextTokens: 80, Path: "fallback: fuser_error", Answer: "c", LogitErr: 0.3, Fidelity: 10},
	}
	got := aggregateDemo([]string{"full", "fusionrag", "epic"}, 0.15, results)
	want := []DemoRow{
		{Strategy: "full", Ratio: 0.15, Requests: 2, Fused: 2, TTFTMedianMs: 500, TTFTMeanMs: 500, Speedup: 1, Recomputed: 1, CachedShare: 0.99, Top1: 1, Fidelity: 100, SameAnswer: 1},
		{Strategy: "fusionrag", Ratio: 0.15, Requests: 2, Fused: 1, FallbackReasons: []string{"fallback: fuser_error"}, TTFTMedianMs: 125, TTFTMeanMs: 125,
			Speedup: 4, HitRate: 1, Recomputed: 0.15, CachedShare: 0.495, Top1: 0.5, LogitErr: 0.2, Fidelity: 30, SameAnswer: 0.5},
		{Strategy: "epic", Ratio: 0.15},
	}
	if diff := cmp.Diff(want, got, cmpopts.EquateApprox(0, 1e-12)); diff != "" {
		t.Errorf("aggregate (-want +got):\n%s", diff)
	}
}

func TestDemoConfigFill(t *testing.T) {
	tests := []struct {
		name string
		in   DemoConfig
		want string // substring of the error; "" for none
	}{
		{"defaults", DemoConfig{}, ""},
		{"quick", DemoConfig{Quick: true}, ""},
		{"corpus", DemoConfig{Corpus: "wiki"}, "corpus"},
		{"strategy", DemoConfig{Strategies: []string{"fusionrag", "magic"}}, "strategy"},
		{"ratio", DemoConfig{Ratio: 1.5}, "ratio"},
		{"negative ratio", DemoConfig{Ratio: -0.1}, "ratio"},
		{"queries", DemoConfig{Queries: -1}, "queries"},
		{"chunks", DemoConfig{ChunksPerQuery: 100}, "chunks"},
		{"chunk tokens", DemoConfig{ChunkTokens: 2}, "chunk tokens"},
		{"pool", DemoConfig{Queries: 10, Pool: 5}, "pool"},
		{"max tokens", DemoConfig{MaxTokens: 1000}, "max tokens"},
		{"format", DemoConfig{Format: "chat"}, "format"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := tt.in
			err := c.fill()
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("unexpected error %v", err)
			case tt.want != "" && (err == nil || !errors.Is(err, errDemoConfig) || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("error %v, want errDemoConfig about %q", err, tt.want)
			}
		})
	}
	c := DemoConfig{Strategies: []string{"fusionrag", " reuse", "fusionrag"}}
	if err := c.fill(); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"full", "fusionrag", "reuse"}, c.Strategies); diff != "" {
		t.Errorf("strategies: full first, no duplicates (-want +got):\n%s", diff)
	}
	q := DemoConfig{Quick: true}
	q.fill()
	if q.Queries != 4 || q.ChunksPerQuery != 6 || q.ChunkTokens != 128 || q.MaxTokens != 4 || q.Pool != 12 || q.Neighbours != fusion.DefaultNeighbours || q.Ratio != 0.15 {
		t.Errorf("quick defaults: %+v", q)
	}
}

// demoChunker is a chunker over the built-in model's tokenizer.
func demoChunker(t *testing.T, size int) (*fusion.Chunker, *model.Model) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "model")
	if err := WriteDemoModel(dir); err != nil {
		t.Fatal(err)
	}
	m, err := model.Load(dir, model.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	ch, err := fusion.NewChunker(fusion.Chunker{Tokenizer: m.Tokenizer, Size: size})
	if err != nil {
		t.Fatal(err)
	}
	return ch, m
}

func checkDemoCorpus(t *testing.T, c *demoCorpus, ch *fusion.Chunker, queries, k int) {
	t.Helper()
	if len(c.Queries) != queries {
		t.Fatalf("%d queries, want %d", len(c.Queries), queries)
	}
	for _, q := range c.Queries {
		if len(q.Chunks) != k {
			t.Errorf("query %s: %d chunks, want %d", q.ID, len(q.Chunks), k)
		}
		seen := map[int]bool{}
		for _, i := range q.Chunks {
			if i < 0 || i >= len(c.Chunks) || seen[i] {
				t.Errorf("query %s: chunk index %d out of range or repeated", q.ID, i)
			}
			seen[i] = true
		}
	}
	for _, ck := range c.Chunks {
		if diff := cmp.Diff(ch.Template.Tokens(ch.Tokenizer, ck.Title, ck.Text), ck.Tokens); diff != "" {
			t.Fatalf("chunk %s ids are not its Template.Tokens (-want +got):\n%s", ck.ID, diff)
		}
		if len(ck.Tokens) == 0 {
			t.Errorf("empty chunk %s", ck.ID)
		}
	}
}

func TestDemoGeneratedCorpus(t *testing.T) {
	ch, m := demoChunker(t, 64)
	a, err := generatedDemoCorpus(ch, 5, 6, 15, 7)
	if err != nil {
		t.Fatal(err)
	}
	checkDemoCorpus(t, a, ch, 5, 6)
	b, _ := generatedDemoCorpus(ch, 5, 6, 15, 7)
	if diff := cmp.Diff(a, b, cmpopts.IgnoreUnexported(fusion.Chunk{})); diff != "" {
		t.Errorf("not deterministic (-first +second):\n%s", diff)
	}
	c, _ := generatedDemoCorpus(ch, 5, 6, 15, 8)
	if cmp.Equal(a.Queries, c.Queries) {
		t.Errorf("seeds 7 and 8 gave the same queries")
	}
	// The prompt is S + chunk ids + question ids, and its text renders the
	// same segments.
	p := a.prompt(m.Tokenizer, ch.Template, demoSystem, a.Queries[0])
	if len(p.Chunks) != 6 || p.Prefix[0] != m.Tokenizer.BOS() || !strings.HasSuffix(p.Text, demoQuestionText(a.Queries[0].Question)) {
		t.Errorf("prompt %+v", p)
	}
	n := len(p.Prefix) + len(p.Question)
	for _, c := range p.Chunks {
		n += len(c)
	}
	if got := p.Tokens(); len(got) != n || got[len(got)-1] != p.Question[len(p.Question)-1] {
		t.Errorf("Tokens: %d ids, want %d ending with the question", len(got), n)
	}
	if _, err := generatedDemoCorpus(ch, 2, 40, 2, 1); !errors.Is(err, errDemoCorpus) {
		t.Errorf("40 chunks from 2 short passages: err %v, want errDemoCorpus", err)
	}
}

func TestDemoNQCorpus(t *testing.T) {
	path := shareddata.Path(t, demoNQFile)
	ch, _ := demoChunker(t, 128)
	c, err := nqDemoCorpus(filepath.Dir(filepath.Dir(path)), ch, 4, 6, 12, 1)
	if err != nil {
		t.Fatal(err)
	}
	checkDemoCorpus(t, c, ch, 4, 6)
	if !strings.HasPrefix(c.Source, "nq-open: ") || c.Queries[0].Question == "" || len(c.Queries[0].Answers) == 0 {
		t.Errorf("corpus %q, first query %+v", c.Source, c.Queries[0])
	}
	if _, err := nqDemoCorpus(t.TempDir(), ch, 4, 6, 12, 1); err == nil {
		t.Errorf("a directory without NQ-open gave no error")
	}
}

func TestWriteDemoModel(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "models", "synthetic")
	if err := WriteDemoModel(dir); err != nil {
		t.Fatal(err)
	}
	st1, err := os.Stat(filepath.Join(dir, "model.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	// Present: kept as it is.
	if err := WriteDemoModel(dir); err != nil {
		t.Fatal(err)
	}
	st2, _ := os.Stat(filepath.Join(dir, "model.safetensors"))
	if !st2.ModTime().Equal(st1.ModTime()) {
		t.Errorf("the second WriteDemoModel rewrote the model")
	}
	m, err := model.Load(dir, model.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if m.Tokenizer == nil || m.Config.Dim != demoModelConfig().Dim || m.Config.MaxPositions != 4096 {
		t.Errorf("loaded %+v, tokenizer %v", m.Config, m.Tokenizer != nil)
	}
	// A broken model in the way is an error, not overwritten.
	bad := filepath.Join(t.TempDir(), "bad")
	os.MkdirAll(bad, 0o755)
	os.WriteFile(filepath.Join(bad, "config.json"), []byte("{"), 0o644)
	if err := WriteDemoModel(bad); err == nil {
		t.Errorf("WriteDemoModel over a broken model: no error")
	}
	if err := WriteDemoModel(""); err == nil {
		t.Errorf("WriteDemoModel(\"\"): no error")
	}
}
