package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/fusionrag/fusionrag/fusion"
)

// DemoRow is one strategy's results over every query of the demo.
type DemoRow struct {
	Strategy string  `json:"strategy"`
	Ratio    float64 `json:"ratio"`
	// Requests sent through the sidecar; Fused took the fusion path (the
	// engine got published KV), the others were forwarded as they were
	// (FallbackReasons says why).
	Requests        int      `json:"requests"`
	Fused           int      `json:"fused"`
	FallbackReasons []string `json:"fallback_reasons,omitempty"`
	// TTFT through the sidecar, milliseconds: median and mean over queries.
	TTFTMedianMs float64 `json:"ttft_median_ms"`
	TTFTMeanMs   float64 `json:"ttft_mean_ms"`
	// Speedup is full's median TTFT / this strategy's, both measured in
	// this run.
	Speedup float64 `json:"speedup"`
	// HitRate is the fraction of the prompts' chunks found in the store
	// (as the sidecar's fusion path reported them); NaN-free: 0 without
	// fused requests.
	HitRate float64 `json:"hit_rate"`
	// Recomputed is the mean fraction of context tokens recomputed through
	// all layers (full: 1).
	Recomputed float64 `json:"recomputed"`
	// CachedShare is the mean fraction of prompt tokens the engine loaded
	// from published KV instead of prefilling (its usage.cached_tokens).
	CachedShare float64 `json:"cached_share"`
	// Top1 is the fraction of queries whose first-token argmax agrees with
	// full's, and KL the mean KL(full || strategy) of the first-token
	// distributions in nats (measured in process, see DemoReport.Notes).
	Top1 float64 `json:"top1"`
	KL   float64 `json:"kl"`
	// LogitErr is the mean relative L2 error of the last position's logits
	// against full's; Fidelity the median over queries of the normalised
	// score 100 × (1 − LogitErr / LogitErr of reuse on raw chunk KV), the
	// paper's baseline: raw reuse 0, full 100.
	LogitErr float64 `json:"logit_err"`
	Fidelity float64 `json:"fidelity"`
	// SameAnswer is the fraction of queries whose greedy completion through
	// the sidecar is identical to full's.
	SameAnswer float64 `json:"same_answer"`
}

// DemoQueryResult is one query × strategy of the demo, as measured.
type DemoQueryResult struct {
	Query         string  `json:"query"`
	Strategy      string  `json:"strategy"`
	TTFTMs        float64 `json:"ttft_ms"`
	PromptTokens  int     `json:"prompt_tokens"`
	ContextTokens int     `json:"context_tokens"`
	CachedTokens  int     `json:"cached_tokens"`
	Path          string  `json:"path"` // "fusion" or "fallback: <reason>" / "passthrough"
	Hits          int     `json:"hits"`
	Misses        int     `json:"misses"`
	Recomputed    int     `json:"recomputed_tokens"`
	Answer        string  `json:"answer"`
	KL            float64 `json:"kl"`
	Top1          bool    `json:"top1"`
	LogitErr      float64 `json:"logit_err"`
	Fidelity      float64 `json:"fidelity"`
}

// DemoReport is the demo's result (RunDemo): what ran, on what, and the rows.
type DemoReport struct {
	Meta Meta `json:"meta"`
	// ModelParams is the model's parameter count.
	ModelParams int64 `json:"model_params"`
	// Corpus is where the text came from; Chunks the chunks ingested.
	Corpus string `json:"corpus"`
	Chunks int    `json:"chunks"`
	// Queries and the mean prompt and context length in tokens.
	Queries       int     `json:"queries"`
	PromptTokens  float64 `json:"prompt_tokens"`
	ContextTokens float64 `json:"context_tokens"`
	// Ingest is the offline stage's summary.
	Ingest fusion.Summary `json:"ingest"`
	Rows   []DemoRow      `json:"rows"`
	// Results are the individual measurements.
	Results []DemoQueryResult `json:"results"`
	// Elapsed is the whole demo's wall time.
	Elapsed time.Duration `json:"elapsed_ns"`
	Notes   []string      `json:"notes"`
}

// row returns the row of a strategy.
func (r *DemoReport) row(strategy string) (DemoRow, bool) {
	i := slices.IndexFunc(r.Rows, func(x DemoRow) bool { return x.Strategy == strategy })
	if i < 0 {
		return DemoRow{}, false
	}
	return r.Rows[i], true
}

// demoHeader and cells are the table's columns, shared by the text and the
// Markdown renderings.
var demoHeader = []string{"strategy", "ratio", "TTFT ms", "speedup", "hit rate", "recomputed", "engine cached",
	"logit err", "fidelity", "top-1 = full", "same answer", "fusion path"}

func (row DemoRow) cells() []string {
	pct := func(x float64) string { return fmt.Sprintf("%.0f%%", 100*x) }
	ratio, hit := pct(row.Ratio), pct(row.HitRate)
	switch row.Strategy {
	case "full":
		ratio, hit = "-", "-" // full reads no chunk KV
	case "reuse":
		ratio = "-"
	}
	return []string{row.Strategy, ratio, fmt.Sprintf("%.1f", row.TTFTMedianMs), fmt.Sprintf("%.2fx", row.Speedup),
		hit, pct(row.Recomputed), pct(row.CachedShare), fmt.Sprintf("%.4f", row.LogitErr), fmt.Sprintf("%.0f", row.Fidelity),
		pct(row.Top1), pct(row.SameAnswer), fmt.Sprintf("%d/%d", row.Fused, row.Requests)}
}

// WriteText prints the table aligned for a terminal, with the notes.
func (r *DemoReport) WriteText(w io.Writer) error {
	fmt.Fprintf(w, "\nfusionrag demo: %d queries, %.0f context tokens on average, model %s (%s parameters), %s\n\n",
		r.Queries, r.ContextTokens, r.Meta.Model, humanCount(r.ModelParams), r.Corpus)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, strings.Join(demoHeader, "\t")+"\t")
	for _, row := range r.Rows {
		fmt.Fprintln(tw, strings.Join(row.cells(), "\t")+"\t")
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(w)
	for _, n := range r.Notes {
		fmt.Fprintln(w, n)
	}
	_, err := fmt.Fprintf(w, "\nfinished in %s on %s\n", r.Elapsed.Round(100*time.Millisecond), r.Meta.Machine)
	return err
}

// table is the result table for Markdown reports.
func (r *DemoReport) table() Table {
	t := Table{Title: fmt.Sprintf("fusionrag demo: TTFT through the sidecar, %d queries of %.0f context tokens", r.Queries, r.ContextTokens),
		Header: demoHeader, Notes: r.Notes}
	for _, row := range r.Rows {
		t.Rows = append(t.Rows, row.cells())
	}
	return t
}

// plot is the TTFT chart: one bar per strategy.
func (r *DemoReport) plot() Plot {
	p := Plot{File: "demo-ttft.png", Title: "Time to first token through the sidecar (median)",
		XLabel: "strategy", YLabel: "TTFT (ms)", Kind: Bars}
	s := Series{Name: "TTFT ms"}
	for _, row := range r.Rows {
		p.Categories = append(p.Categories, row.Strategy)
		s.Y = append(s.Y, row.TTFTMedianMs)
	}
	p.Series = []Series{s}
	return p
}

// WriteFiles writes demo.json, demo.md and demo-ttft.png into dir.
func (r *DemoReport) WriteFiles(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "demo.json"), append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	plot := r.plot()
	rep := Report{Name: "demo", Meta: r.Meta, Tables: []Table{r.table()}, Plots: []Plot{plot}}
	var md strings.Builder
	if err := rep.WriteMarkdown(&md); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "demo.md"), []byte(md.String()), 0o644); err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	return plot.Save(dir)
}

func humanCount(n int64) string {
	switch {
	case n >= 1e9:
		return fmt.Sprintf("%.1fB", float64(n)/1e9)
	case n >= 1e6:
		return fmt.Sprintf("%.1fM", float64(n)/1e6)
	case n >= 1e3:
		return fmt.Sprintf("%.1fK", float64(n)/1e3)
	}
	return fmt.Sprint(n)
}
