package bench

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fusionrag/fusionrag/kvstore"
	"github.com/fusionrag/fusionrag/model"
)

// tinyTokModel writes and loads a small synthetic Llama with its byte-level
// tokenizer: a model the engine can serve without the shared data.
func tinyTokModel(t testing.TB) *model.Model {
	t.Helper()
	cfg := SyntheticFidelityModel()
	cfg.Layers, cfg.Dim, cfg.HiddenDim, cfg.Heads, cfg.KVHeads, cfg.HeadDim = 2, 64, 128, 4, 2, 16
	dir := t.TempDir()
	if err := model.WriteSynthetic(dir, cfg, 3, model.SaveOptions{}); err != nil {
		t.Fatal(err)
	}
	m, err := model.Load(dir, model.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if m.Tokenizer == nil {
		t.Fatal("synthetic model loaded without its tokenizer")
	}
	t.Cleanup(func() { m.Close() })
	return m
}

// TestQuickReports is the CI run of every harness in a --quick-sized form:
// each writes its report (JSON, Markdown, PNG plots) into one directory, and
// the benchmarks page is assembled from them. It needs no shared data (a
// synthetic model and testdata/tiny_rag.jsonl) and asserts that every output
// exists and parses; timings are never asserted.
func TestQuickReports(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	out := Output{OutDir: dir}
	m := tinyTokModel(t)
	write := func(name string, tables []Table, rows any, plots []Plot) {
		t.Helper()
		meta := NewMeta([]string{"fusionrag", "bench", name, "--quick"}, "tiny", true)
		if err := out.WriteReport(Report{Name: name, Meta: meta, Tables: tables, Rows: rows, Plots: plots}); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	}
	start := time.Now()

	fid, err := RunFidelity(ctx, FidelityConfig{Model: m, Name: "tiny", Prompts: 1, Chunks: 3, ChunkTokens: 20, Continuation: 4, Ratios: []float64{0.15, 0.3}})
	if err != nil {
		t.Fatal(err)
	}
	write("fidelity", FidelityTables(fid, time.Since(start)), fid, FidelityPlots(fid))

	tt, err := RunTTFT(ctx, TTFTConfig{Model: m, Name: "tiny", Contexts: []int{64, 128}, Chunks: 4})
	if err != nil {
		t.Fatal(err)
	}
	write("ttft", []Table{TTFTTable(tt, m.Config.Params(), time.Since(start))}, tt, TTFTPlots(tt))

	ds, err := LoadDataset(filepath.Join("testdata", "tiny_rag.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	ds.AddDistractors(2, 1)
	q, _, err := RunQuality(ctx, QualityConfig{Model: m, Name: "tiny", Datasets: []*Dataset{ds}, Passages: 2, PassageTokens: 48,
		AnswerTokens: 4, Ratios: []float64{0.15, 0.3}, Quiet: true})
	if err != nil {
		t.Fatal(err)
	}
	write("quality", QualityTables(q, time.Since(start)), q, QualityPlots(q))

	st, err := RunStore(ctx, StoreConfig{Tiers: testTiers(t), Blobs: 2, Rounds: 1, Quiet: true,
		Shapes: []StoreShape{{Name: "tiny", Layers: 2, KVHeads: 2, HeadDim: 8, Tokens: 32, DType: kvstore.Float16}}})
	if err != nil {
		t.Fatal(err)
	}
	write("store", []Table{StoreTable(st, time.Since(start))}, st, StorePlots(st))

	stack, err := StartStack(StackConfig{Model: m, Fusion: true})
	if err != nil {
		t.Fatal(err)
	}
	defer stack.Close()
	prompts, err := PromptTexts(QualityConfig{Model: m, Datasets: []*Dataset{ds}, Passages: 2, PassageTokens: 32, AnswerTokens: 24,
		Separator: StackSeparator}, 2)
	if err != nil {
		t.Fatal(err)
	}
	targets := []LoadTarget{{Name: "direct", URL: stack.EngineURL}, {Name: "passthrough", URL: stack.SidecarURL},
		{Name: "fusion", URL: stack.FusionURL, Separated: true}}
	ld, err := RunLoad(ctx, LoadConfig{Targets: targets, Prompts: prompts, Separator: StackSeparator, Concurrency: []int{1, 2},
		Requests: 2, MaxTokens: 2, Quiet: true})
	if err != nil {
		t.Fatal(err)
	}
	write("load", []Table{LoadTable(ld, time.Since(start))}, ld, LoadPlots(ld))
	e2e, err := RunE2E(ctx, E2EConfig{Targets: targets, Sizes: []E2EPrompts{{ContextTokens: 64, Prompts: prompts}}, Separator: StackSeparator,
		Repeats: 1, Quiet: true})
	if err != nil {
		t.Fatal(err)
	}
	write("e2e", []Table{E2ETable(e2e, time.Since(start))}, e2e, E2EPlots(e2e))

	// Every report parses, its rows are not empty, its plots exist as PNG.
	names := []string{"fidelity", "ttft", "quality", "store", "load", "e2e"}
	var sections []DocSection
	for _, name := range names {
		var rows []map[string]any
		doc, err := ReadReportFile(filepath.Join(dir, name+".json"), &rows)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if len(rows) == 0 || doc.Meta.Machine.Cores == 0 || !doc.Meta.Quick || doc.Meta.Command == "" {
			t.Errorf("%s: %d rows, meta %+v", name, len(rows), doc.Meta)
		}
		if len(doc.Plots) == 0 {
			t.Errorf("%s: no plot", name)
		}
		for _, p := range doc.Plots {
			b, err := os.ReadFile(filepath.Join(dir, p))
			if err != nil || len(b) < 8 || string(b[1:4]) != "PNG" {
				t.Errorf("%s: plot %s missing or not a PNG (%v)", name, p, err)
			}
		}
		if md, err := os.ReadFile(filepath.Join(dir, name+".md")); err != nil || !strings.Contains(string(md), "| ---") {
			t.Errorf("%s.md: no table (%v)", name, err)
		}
		sections = append(sections, DocSection{Name: name, Title: "The " + name + " report"})
	}
	for _, r := range ld {
		if r.Errors != 0 {
			t.Errorf("load %s: %d errors: %s", r.Target, r.Errors, r.FirstError)
		}
	}
	sections = append(sections, DocSection{Name: "absent", Title: "Not run"})
	docPath := filepath.Join(t.TempDir(), "benchmarks.md")
	if err := AssembleDocs(docPath, dir, "Benchmarks", "Intro.", sections); err != nil {
		t.Fatal(err)
	}
	page, _ := os.ReadFile(docPath)
	rel, _ := filepath.Rel(filepath.Dir(docPath), dir)
	for _, want := range []string{"## The quality report", "](" + filepath.ToSlash(rel) + "/store-get.png)", "_Not run: no absent report", "(#the-e2e-report)"} {
		if !strings.Contains(string(page), want) {
			t.Errorf("assembled page lacks %q", want)
		}
	}
	if err := AssembleDocs(docPath, t.TempDir(), "B", "", sections); err == nil {
		t.Error("no report at all: no error")
	}
	// The rows JSON of every report is plain data (no NaN sneaked in).
	for _, name := range names {
		b, _ := os.ReadFile(filepath.Join(dir, name+".json"))
		if !json.Valid(b) {
			t.Errorf("%s.json is not valid JSON", name)
		}
	}
	t.Logf("all quick reports in %s", time.Since(start).Round(time.Millisecond))
}
