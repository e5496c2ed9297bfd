package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// LoadTarget is one OpenAI-compatible base URL under load: the engine
// directly, the sidecar passing through, the sidecar's fusion path.
type LoadTarget struct {
	// Name labels the target ("direct", "passthrough", "fusion").
	Name string
	// URL is the base URL (http://host:port).
	URL string
	// Headers are sent with every request (e.g. X-Fusionrag-Strategy).
	Headers map[string]string
	// Separated targets get the prompts with their chunk separators (see
	// LoadConfig.Separator); the others get them with the separators
	// removed, i.e. the same text the fusion path hands the engine.
	Separated bool
}

// prompt is p as target t receives it.
func (t LoadTarget) prompt(p, sep string) string {
	if t.Separated || sep == "" {
		return p
	}
	return strings.ReplaceAll(p, sep, "")
}

// LoadConfig configures RunLoad, which fills zero fields with the defaults
// documented here.
type LoadConfig struct {
	// Targets are measured at every concurrency, interleaved (see RunLoad).
	// Required.
	Targets []LoadTarget
	// Prompts are the completion prompts, sent round-robin. Required.
	Prompts []string
	// Separator is the chunk separator written in Prompts, if any.
	Separator string
	// Model is the request's "model" field.
	Model string
	// Concurrency levels (closed-loop clients); default 1, 4, 16.
	Concurrency []int
	// Requests per target and level; default 48.
	Requests int
	// MaxTokens per completion; default 16.
	MaxTokens int
	// Timeout of one request; default 2 minutes.
	Timeout time.Duration
	// Progress receives the progress bar; Quiet silences it.
	Progress io.Writer
	Quiet    bool
}

// LoadRow is one target at one concurrency.
type LoadRow struct {
	Target      string `json:"target"`
	Concurrency int    `json:"concurrency"`
	Requests    int    `json:"requests"`
	Errors      int    `json:"errors"`
	// RPS is completed requests per second of wall time; TokensPerS the
	// streamed completion tokens per second.
	RPS        float64 `json:"rps"`
	TokensPerS float64 `json:"tokens_per_s"`
	// TTFT is the time to the first streamed token, latency to the end of
	// the stream, both over successful requests.
	TTFTP50Ms    float64 `json:"ttft_p50_ms"`
	TTFTP99Ms    float64 `json:"ttft_p99_ms"`
	LatencyP50Ms float64 `json:"latency_p50_ms"`
	LatencyP99Ms float64 `json:"latency_p99_ms"`
	// VsFirst is this row's TTFT p50 / the first target's at the same
	// concurrency (1 for the first target: the baseline, usually direct).
	VsFirst float64 `json:"ttft_p50_vs_first"`
	// CachedShare is the share of prompt tokens the engine reported as
	// loaded from published KV (usage cached_tokens): above 0 only where the
	// fusion path delivered.
	CachedShare float64 `json:"cached_share"`
	// FirstError is one error message, for the report.
	FirstError string `json:"first_error,omitempty"`
}

func (c *LoadConfig) fill() error {
	if len(c.Targets) == 0 {
		return errors.New("bench: LoadConfig.Targets is empty")
	}
	if len(c.Prompts) == 0 {
		return errors.New("bench: LoadConfig.Prompts is empty")
	}
	if c.Concurrency == nil {
		c.Concurrency = []int{1, 4, 16}
	}
	for _, n := range c.Concurrency {
		if n <= 0 {
			return fmt.Errorf("bench: concurrency %d", n)
		}
	}
	if c.Requests <= 0 {
		c.Requests = 48
	}
	if c.MaxTokens <= 0 {
		c.MaxTokens = 16
	}
	if c.Timeout <= 0 {
		c.Timeout = 2 * time.Minute
	}
	return nil
}

// loadRun accumulates one target × level.
type loadRun struct {
	mu      sync.Mutex
	ttft    []float64
	lat     []float64
	tokens  int
	prompt  int
	cached  int
	errs    int
	first   string
	elapsed time.Duration
	n       int
}

// runClosedLoop sends n requests to t from conc clients, each sending its
// next request when the previous one ends.
func (c *LoadConfig) runClosedLoop(ctx context.Context, client *http.Client, t LoadTarget, conc, n int, offset int, acc *loadRun, bar *Progress) {
	var next atomic.Int64
	var wg sync.WaitGroup
	t0 := time.Now()
	for range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n || ctx.Err() != nil {
					return
				}
				body := completionBody(c.Model, t.prompt(c.Prompts[(offset+i)%len(c.Prompts)], c.Separator), c.MaxTokens)
				rctx, cancel := context.WithTimeout(ctx, c.Timeout)
				r, err := StreamCompletion(rctx, client, t.URL, t.Headers, body)
				cancel()
				acc.mu.Lock()
				acc.n++
				if err != nil {
					acc.errs++
					if acc.first == "" {
						acc.first = err.Error()
					}
				} else {
					acc.ttft = append(acc.ttft, ms(r.TTFT))
					acc.lat = append(acc.lat, ms(r.Total))
					acc.tokens += r.Tokens
					acc.prompt += r.PromptTokens
					acc.cached += r.CachedTokens
				}
				acc.mu.Unlock()
				bar.Add(1)
			}
		}()
	}
	wg.Wait()
	acc.elapsed += time.Since(t0)
}

// RunLoad measures every target at every concurrency with closed-loop
// streaming clients. On a machine shared with other work, the load drifts
// over a run: each level runs the targets in order on half the requests,
// then in reverse order on the other half, so a linear drift weighs on every
// target alike. Errors are counted, never fatal.
func RunLoad(ctx context.Context, c LoadConfig) ([]LoadRow, error) {
	if err := c.fill(); err != nil {
		return nil, err
	}
	maxConc := slices.Max(c.Concurrency)
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: maxConc, MaxConnsPerHost: maxConc,
		IdleConnTimeout: time.Minute, DisableCompression: true}}
	defer client.CloseIdleConnections()
	total := len(c.Concurrency) * len(c.Targets) * c.Requests
	bar := NewProgress(c.Progress, "load", total, c.Quiet)
	defer bar.Done()
	// Warm every target with one pass over the prompts (connections, the
	// engine's first allocations, the fusion path's chunk KV in its store).
	for _, t := range c.Targets {
		c.runClosedLoop(ctx, client, t, 1, len(c.Prompts), 0, &loadRun{}, nil)
	}
	var rows []LoadRow
	for _, conc := range c.Concurrency {
		runs := make([]loadRun, len(c.Targets))
		half := c.Requests / 2
		for i, t := range c.Targets {
			c.runClosedLoop(ctx, client, t, conc, half, 0, &runs[i], bar)
		}
		for i := len(c.Targets) - 1; i >= 0; i-- {
			c.runClosedLoop(ctx, client, c.Targets[i], conc, c.Requests-half, half, &runs[i], bar)
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		for i, t := range c.Targets {
			r := &runs[i]
			slices.Sort(r.ttft)
			slices.Sort(r.lat)
			row := LoadRow{Target: t.Name, Concurrency: conc, Requests: r.n, Errors: r.errs, FirstError: r.first,
				TTFTP50Ms: quantile(r.ttft, 0.5), TTFTP99Ms: quantile(r.ttft, 0.99),
				LatencyP50Ms: quantile(r.lat, 0.5), LatencyP99Ms: quantile(r.lat, 0.99)}
			if r.prompt > 0 {
				row.CachedShare = float64(r.cached) / float64(r.prompt)
			}
			if s := r.elapsed.Seconds(); s > 0 {
				row.RPS = float64(r.n-r.errs) / s
				row.TokensPerS = float64(r.tokens) / s
			}
			rows = append(rows, row)
		}
		vsFirst(rows[len(rows)-len(c.Targets):], func(r *LoadRow) (float64, *float64) { return r.TTFTP50Ms, &r.VsFirst })
	}
	return rows, nil
}

// LoadTable renders rows as a Markdown table.
func LoadTable(rows []LoadRow, elapsed time.Duration, notes ...string) Table {
	t := Table{Title: "Sidecar under load: streaming completions, closed loop",
		Header: []string{"target", "clients", "requests", "errors", "req/s", "tokens/s", "TTFT p50 ms", "TTFT p99 ms",
			"latency p50 ms", "latency p99 ms", "TTFT p50 vs first target", "KV-loaded prompt tokens"}}
	var errs []string
	for _, r := range rows {
		t.Rows = append(t.Rows, []string{r.Target, fmt.Sprint(r.Concurrency), fmt.Sprint(r.Requests), fmt.Sprint(r.Errors),
			f(r.RPS, 1), f(r.TokensPerS, 0), f(r.TTFTP50Ms, 1), f(r.TTFTP99Ms, 1), f(r.LatencyP50Ms, 1), f(r.LatencyP99Ms, 1),
			f(r.VsFirst, 2) + "x", pct(r.CachedShare)})
		if r.FirstError != "" {
			errs = append(errs, fmt.Sprintf("%s at %d clients, first error: %s", r.Target, r.Concurrency, r.FirstError))
		}
	}
	t.Notes = append(t.Notes, "TTFT is the time from sending the request to the first streamed event carrying text; latency to [DONE]. "+
		"KV-loaded prompt tokens: the engine's usage cached_tokens over prompt_tokens, above 0 where the fusion path delivered the prompt's KV. "+
		"Every target first gets one pass over the prompts (not measured), which fills the fusion path's chunk store. "+
		"Each level runs the targets in order on half the requests, then in reverse order on the other half, so that drifting "+
		"load from other work on the machine weighs on every target alike.")
	t.Notes = append(t.Notes, notes...)
	t.Notes = append(t.Notes, errs...)
	t.Notes = append(t.Notes, fmt.Sprintf("Measured in %s.", elapsed.Round(time.Millisecond)))
	return t
}

// LoadPlots draws TTFT p50 and throughput against concurrency per target.
func LoadPlots(rows []LoadRow) []Plot {
	ttft := Plot{File: "load-ttft.png", Title: "Time to first token (p50) under load", XLabel: "concurrent clients", YLabel: "TTFT p50 (ms)", LogX: true}
	ttft99 := Plot{File: "load-ttft-p99.png", Title: "Time to first token (p99) under load", XLabel: "concurrent clients", YLabel: "TTFT p99 (ms)", LogX: true}
	tput := Plot{File: "load-throughput.png", Title: "Throughput under load", XLabel: "concurrent clients", YLabel: "requests / s", LogX: true}
	idx := map[string]int{}
	for _, r := range rows {
		i, ok := idx[r.Target]
		if !ok {
			i = len(ttft.Series)
			idx[r.Target] = i
			for _, p := range []*Plot{&ttft, &ttft99, &tput} {
				p.Series = append(p.Series, Series{Name: r.Target})
			}
		}
		x := float64(r.Concurrency)
		for _, pv := range []struct {
			p *Plot
			y float64
		}{{&ttft, r.TTFTP50Ms}, {&ttft99, r.TTFTP99Ms}, {&tput, r.RPS}} {
			pv.p.Series[i].X = append(pv.p.Series[i].X, x)
			pv.p.Series[i].Y = append(pv.p.Series[i].Y, pv.y)
		}
	}
	return []Plot{ttft, ttft99, tput}
}

// completionBody is a greedy streaming completion request of a text
// prompt asking for usage.
func completionBody(modelName, prompt string, maxTokens int) []byte {
	body, err := CompletionBody(modelName, "", prompt, maxTokens)
	if err != nil {
		panic(fmt.Sprintf("bench: marshal a completions request: %v", err)) // strings and ints: cannot fail
	}
	return body
}

// vsFirst sets, for every row of one level, the ratio its field returns
// (the pointer) to its TTFT p50 (the value) over the first row's p50: the
// first row is the baseline, 1. The ratios stay 0 when that p50 is 0 (the
// baseline had no successful request).
func vsFirst[R any](rows []R, field func(*R) (p50 float64, ratio *float64)) {
	if len(rows) == 0 {
		return
	}
	base, _ := field(&rows[0])
	if base <= 0 {
		return
	}
	for i := range rows {
		p50, ratio := field(&rows[i])
		*ratio = p50 / base
	}
}
