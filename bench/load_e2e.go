package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"time"
)

// E2EPrompts is one context size's prompts.
type E2EPrompts struct {
	// ContextTokens is the nominal context (chunk tokens) of the prompts.
	ContextTokens int
	Prompts       []string
}

// E2EConfig configures RunE2E: time to first token end to end, through
// HTTP, one request at a time, per target and context size.
type E2EConfig struct {
	// Targets, e.g. direct (the engine), passthrough (the sidecar), and the
	// sidecar's fusion path once per strategy × ratio (as headers). The
	// first is the baseline of the ratios. Required.
	Targets []LoadTarget
	// Sizes are the context sizes and their prompts. Required.
	Sizes []E2EPrompts
	// Separator is the chunk separator written in the prompts, if any (see
	// LoadTarget.Separated).
	Separator string
	// Model is the request's "model" field.
	Model string
	// Repeats per target and prompt; the median is reported. Default 3.
	Repeats int
	// MaxTokens per completion; default 4 (only the first token matters).
	MaxTokens int
	// Progress receives the progress bar; Quiet silences it.
	Progress io.Writer
	Quiet    bool
}

// E2ERow is one target at one context size.
type E2ERow struct {
	Target        string `json:"target"`
	ContextTokens int    `json:"context_tokens"`
	// PromptTokens is the mean prompt length the server reported (0 when
	// it sent no usage).
	PromptTokens float64 `json:"prompt_tokens"`
	Requests     int     `json:"requests"`
	Errors       int     `json:"errors"`
	TTFTP50Ms    float64 `json:"ttft_p50_ms"`
	TTFTMinMs    float64 `json:"ttft_min_ms"`
	// VsFirst is TTFTP50Ms / the first target's at the same size.
	VsFirst float64 `json:"ttft_p50_vs_first"`
	// CachedTokens is the mean of the engine's usage cached_tokens: prompt
	// tokens whose KV it loaded (the fusion path's delivery).
	CachedTokens float64 `json:"cached_tokens"`
	FirstError   string  `json:"first_error,omitempty"`
}

// RunE2E sends, for every size, every prompt Repeats times to each target,
// one request at a time, rotating the targets request by request so that
// the machine's drifting load weighs on all alike.
func RunE2E(ctx context.Context, c E2EConfig) ([]E2ERow, error) {
	if len(c.Targets) == 0 || len(c.Sizes) == 0 {
		return nil, errors.New("bench: E2EConfig needs targets and sizes")
	}
	if c.Repeats <= 0 {
		c.Repeats = 3
	}
	if c.MaxTokens <= 0 {
		c.MaxTokens = 4
	}
	client := &http.Client{Timeout: 5 * time.Minute}
	defer client.CloseIdleConnections()
	total := 0
	for _, s := range c.Sizes {
		total += len(s.Prompts) * c.Repeats * len(c.Targets)
	}
	bar := NewProgress(c.Progress, "e2e", total, c.Quiet)
	defer bar.Done()
	// Warm every target with one pass over every prompt (connections, the
	// engine, the fusion path's chunk KV in its store).
	for _, size := range c.Sizes {
		for _, p := range size.Prompts {
			for _, t := range c.Targets {
				StreamCompletion(ctx, client, t.URL, t.Headers, completionBody(c.Model, t.prompt(p, c.Separator), 1))
			}
		}
	}
	var rows []E2ERow
	for _, size := range c.Sizes {
		type acc struct {
			ttft      []float64
			prompt, n int
			cached    int
			errs      int
			first     string
		}
		accs := make([]acc, len(c.Targets))
		for rep := range c.Repeats {
			for _, p := range size.Prompts {
				for k := range c.Targets {
					i := (k + rep) % len(c.Targets) // rotate who goes first
					t := c.Targets[i]
					r, err := StreamCompletion(ctx, client, t.URL, t.Headers, completionBody(c.Model, t.prompt(p, c.Separator), c.MaxTokens))
					a := &accs[i]
					a.n++
					if err != nil {
						a.errs++
						if a.first == "" {
							a.first = err.Error()
						}
					} else {
						a.ttft = append(a.ttft, ms(r.TTFT))
						a.prompt += r.PromptTokens
						a.cached += r.CachedTokens
					}
					bar.Add(1)
				}
				if err := ctx.Err(); err != nil {
					return nil, err
				}
			}
		}
		for i, t := range c.Targets {
			a := &accs[i]
			slices.Sort(a.ttft)
			row := E2ERow{Target: t.Name, ContextTokens: size.ContextTokens, Requests: a.n, Errors: a.errs, FirstError: a.first,
				TTFTP50Ms: quantile(a.ttft, 0.5)}
			if len(a.ttft) > 0 {
				row.TTFTMinMs = a.ttft[0]
				row.PromptTokens = float64(a.prompt) / float64(len(a.ttft))
				row.CachedTokens = float64(a.cached) / float64(len(a.ttft))
			}
			rows = append(rows, row)
		}
		vsFirst(rows[len(rows)-len(c.Targets):], func(r *E2ERow) (float64, *float64) { return r.TTFTP50Ms, &r.VsFirst })
	}
	return rows, nil
}

// E2ETable renders rows as a Markdown table.
func E2ETable(rows []E2ERow, elapsed time.Duration, notes ...string) Table {
	t := Table{Title: "End-to-end time to first token over HTTP, one request at a time",
		Header: []string{"context tokens", "prompt tokens", "target", "requests", "errors", "TTFT p50 ms", "TTFT min ms", "p50 vs first target", "KV-loaded tokens"}}
	var errs []string
	for _, r := range rows {
		t.Rows = append(t.Rows, []string{fmt.Sprint(r.ContextTokens), f(r.PromptTokens, 0), r.Target, fmt.Sprint(r.Requests),
			fmt.Sprint(r.Errors), f(r.TTFTP50Ms, 1), f(r.TTFTMinMs, 1), f(r.VsFirst, 2) + "x", f(r.CachedTokens, 0)})
		if r.FirstError != "" {
			errs = append(errs, fmt.Sprintf("%s at %d, first error: %s", r.Target, r.ContextTokens, r.FirstError))
		}
	}
	t.Notes = append(t.Notes, "TTFT: from sending a streaming completion to the first event carrying text. "+
		"KV-loaded tokens: the engine's usage cached_tokens (prompt tokens whose KV it loaded: the fusion path's delivery). "+
		"Every target first gets one pass over the prompts (not measured), which fills the fusion path's chunk store. "+
		"The targets take turns request by request (the first one rotating), so drifting load weighs on all alike.")
	t.Notes = append(t.Notes, notes...)
	t.Notes = append(t.Notes, errs...)
	t.Notes = append(t.Notes, fmt.Sprintf("Measured in %s.", elapsed.Round(time.Millisecond)))
	return t
}

// E2EPlots draws TTFT p50 against context size per target.
func E2EPlots(rows []E2ERow) []Plot {
	p := Plot{File: "e2e-ttft.png", Title: "End-to-end TTFT (p50) vs context", XLabel: "context tokens", YLabel: "TTFT p50 (ms)"}
	idx := map[string]int{}
	for _, r := range rows {
		i, ok := idx[r.Target]
		if !ok {
			i = len(p.Series)
			idx[r.Target] = i
			p.Series = append(p.Series, Series{Name: r.Target})
		}
		if r.TTFTP50Ms > 0 {
			p.Series[i].X = append(p.Series[i].X, float64(r.ContextTokens))
			p.Series[i].Y = append(p.Series[i].Y, r.TTFTP50Ms)
		}
	}
	return []Plot{p}
}
