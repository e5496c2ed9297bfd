package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"time"

	"github.com/fusionrag/fusionrag/chunkkv"
	"github.com/fusionrag/fusionrag/fingerprint"
	"github.com/fusionrag/fusionrag/kvstore"
	"github.com/fusionrag/fusionrag/model"
	"github.com/fusionrag/fusionrag/recompute"
)

// TTFTConfig configures RunTTFT, which fills zero fields with the defaults
// documented here.
type TTFTConfig struct {
	// Model is the model timed. Required. Its MaxPositions must hold the
	// largest context plus the prefix and the question.
	Model *model.Model
	// Name labels the model in the report.
	Name string
	// Contexts are the context sizes (chunk tokens); default 1024, 2048, 4096.
	Contexts []int
	// Chunks per prompt; default 10.
	Chunks int
	// QuestionTokens is |Q|; default 32.
	QuestionTokens int
	// PrefixTokens is |S| (BOS included); default 8.
	PrefixTokens int
	// Strategies timed against full; default reuse, fusionrag, cacheblend, epic.
	Strategies []string
	// Ratio of the partial strategies; default 0.15.
	Ratio float64
	// Repeats per measurement; the fastest is kept. Default 1.
	Repeats int
	// Progress, when set, receives one line per measurement.
	Progress io.Writer
	// Seed makes the token ids reproducible.
	Seed uint64
}

// TTFTRow is one strategy at one context size.
type TTFTRow struct {
	Model         string  `json:"model"`
	Strategy      string  `json:"strategy"`
	Ratio         float64 `json:"ratio"`
	ContextTokens int     `json:"context_tokens"`
	// TTFTMs is the wall time of recompute.Run: the prompt's KV and first
	// token's logits from chunk KV in the memory tier.
	TTFTMs float64 `json:"ttft_ms"`
	// FullTTFTMs is full's time at the same context, measured in the same run.
	FullTTFTMs float64 `json:"full_ttft_ms"`
	// Speedup is FullTTFTMs / TTFTMs.
	Speedup float64 `json:"speedup"`
	// CPUMs and FullCPUMs are the process CPU time (user + system) of the
	// method's and full's runs, CPUSpeedup their ratio: on a shared machine
	// wall time includes waiting for the CPU, CPU time only the work (0 where
	// the platform has no getrusage).
	CPUMs      float64 `json:"cpu_ms"`
	FullCPUMs  float64 `json:"full_cpu_ms"`
	CPUSpeedup float64 `json:"cpu_speedup"`
	// Limit is FLOPs(full) / FLOPs(method): the speedup if time followed FLOPs.
	Limit float64 `json:"limit"`
	// Phase times (ms) from the Record.
	LoadMs      float64 `json:"load_ms"`
	AssembleMs  float64 `json:"assemble_ms"`
	SelectMs    float64 `json:"select_ms"`
	RecomputeMs float64 `json:"recompute_ms"`
	BytesLoaded int64   `json:"bytes_loaded"`
	Recomputed  int     `json:"recomputed"`
}

func (c *TTFTConfig) fill() error {
	if c.Model == nil {
		return errors.New("bench: TTFTConfig.Model is nil")
	}
	if c.Contexts == nil {
		c.Contexts = []int{1024, 2048, 4096}
	}
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&c.Chunks, 10)
	def(&c.QuestionTokens, 32)
	def(&c.PrefixTokens, 8)
	def(&c.Repeats, 1)
	if c.Strategies == nil {
		c.Strategies = []string{"reuse", "fusionrag", "cacheblend", "epic"}
	}
	if c.Ratio == 0 {
		c.Ratio = 0.15
	}
	if c.Name == "" {
		c.Name = "model"
	}
	for _, n := range c.Contexts {
		if n < c.Chunks {
			return fmt.Errorf("bench: context %d smaller than %d chunks", n, c.Chunks)
		}
		if total := n + c.PrefixTokens + c.QuestionTokens; total > c.Model.Config.MaxPositions {
			return fmt.Errorf("bench: context %d + prefix + question = %d positions, model holds %d", n, total, c.Model.Config.MaxPositions)
		}
	}
	return nil
}

// ttftRequest builds S (BOS + random), chunks splitting n tokens as evenly
// as possible, and a random question.
func ttftRequest(c *TTFTConfig, n int, rng *rand.Rand) recompute.Request {
	vocab := c.Model.Config.Vocab
	tok := func(k int) []int32 {
		t := make([]int32, k)
		for i := range t {
			t[i] = int32(3 + rng.IntN(vocab-3))
		}
		return t
	}
	req := recompute.Request{Prefix: tok(c.PrefixTokens), Question: tok(c.QuestionTokens)}
	if bos := c.Model.Config.BOS; bos >= 0 {
		req.Prefix[0] = bos
	}
	for i := range c.Chunks {
		req.Chunks = append(req.Chunks, tok(n*(i+1)/c.Chunks-n*i/c.Chunks))
	}
	return req
}

// RunTTFT times full against each strategy, in process, with the chunk KV
// already in the memory tier. The stored chunk and S KV are the slices of
// full's own prefill (in-context KV, stored position-free): the same shape
// and bytes as raw or fused KV, so every method does exactly the work it
// does in production, without paying a second prefill to compute raw KV.
func RunTTFT(ctx context.Context, c TTFTConfig) ([]TTFTRow, error) {
	if err := c.fill(); err != nil {
		return nil, err
	}
	rng := rand.New(rand.NewPCG(c.Seed, 0x77f7))
	// Warm up (RoPE tables, allocator) so the first measurement is not penalised.
	warm := model.Batch{Tokens: make([]int32, 16), Pos: make([]int32, 16)}
	for i := range warm.Pos {
		warm.Tokens[i], warm.Pos[i] = 3, int32(i)
	}
	if _, err := c.Model.Forward(ctx, nil, warm, model.ForwardOptions{Logits: []int{15}}); err != nil {
		return nil, err
	}
	var rows []TTFTRow
	for _, n := range c.Contexts {
		store, err := kvstore.Open("mem://?max=8GiB")
		if err != nil {
			return nil, err
		}
		src := &chunkkv.Store{Store: store}
		rep, err := recompute.New(recompute.Config{Model: c.Model, Source: src, NoStoreBack: true})
		if err != nil {
			store.Close()
			return nil, err
		}
		req := ttftRequest(&c, n, rng)
		best := func(strategy string, ratio float64) (measured, error) {
			var keep measured
			for range c.Repeats {
				req.Strategy, req.Ratio = strategy, ratio
				cpu0, _ := processCPU()
				res, err := rep.Run(ctx, req)
				cpu1, _ := processCPU()
				if err != nil {
					return measured{}, fmt.Errorf("bench: %s@%v at %d: %w", strategy, ratio, n, err)
				}
				if keep.res == nil || res.Record.Phases.Total < keep.res.Record.Phases.Total {
					keep = measured{res, cpu1 - cpu0}
				}
			}
			if c.Progress != nil {
				fmt.Fprintf(c.Progress, "ttft: %s %s@%v context %d: %v (cpu %v)\n", c.Name, strategy, ratio, n,
					keep.res.Record.Phases.Total.Round(time.Millisecond), keep.cpu.Round(time.Millisecond))
			}
			return keep, nil
		}
		full, err := best("full", 1)
		if err != nil {
			store.Close()
			return nil, err
		}
		if err := seedStore(ctx, rep, src, req, full.res.Cache); err != nil {
			store.Close()
			return nil, err
		}
		fullRow := ttftRow(&c, "full", 1, n, full, full)
		rows = append(rows, fullRow)
		for _, s := range c.Strategies {
			ratio := c.Ratio
			if s == "reuse" {
				ratio = 0
			}
			res, err := best(s, ratio)
			if err != nil {
				store.Close()
				return nil, err
			}
			rows = append(rows, ttftRow(&c, s, ratio, n, res, full))
		}
		store.Close()
	}
	return rows, nil
}

// seedStore stores S's and every chunk's slice of kv (the full prefill) as
// position-free entries under the keys recompute looks up.
func seedStore(ctx context.Context, rep *recompute.Reprocessor, src *chunkkv.Store, req recompute.Request, kv *model.Cache) error {
	cfg := rep.Config()
	l := req.Layout()
	key, err := fingerprint.SystemPrefixKey(cfg.Namespace, req.Prefix, cfg.BlockSize)
	if err != nil {
		return err
	}
	if err := src.PutKV(ctx, key, fingerprint.CheckOf(req.Prefix), kv.Slice(l.Prefix.Begin, l.Prefix.End)); err != nil {
		return err
	}
	for i, sp := range l.Chunks {
		key := fingerprint.ChunkKeyAfter(cfg.Namespace, cfg.Variant, req.Prefix, req.Chunks[i])
		if err := src.PutKV(ctx, key, fingerprint.CheckOf(req.Chunks[i]), kv.Slice(sp.Begin, sp.End)); err != nil {
			return err
		}
	}
	return nil
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// measured is one timed run.
type measured struct {
	res *recompute.Result
	cpu time.Duration
}

func ttftRow(c *TTFTConfig, strategy string, ratio float64, n int, m, fullM measured) TTFTRow {
	r, full := m.res.Record, fullM.res.Record
	row := TTFTRow{Model: c.Name, Strategy: strategy, Ratio: ratio, ContextTokens: n,
		TTFTMs: ms(r.Phases.Total), FullTTFTMs: ms(full.Phases.Total),
		Speedup: ms(full.Phases.Total) / ms(r.Phases.Total),
		CPUMs:   ms(m.cpu), FullCPUMs: ms(fullM.cpu),
		Limit:  full.Cost.Total() / r.Cost.Total(),
		LoadMs: ms(r.Phases.Load), AssembleMs: ms(r.Phases.Assemble), SelectMs: ms(r.Phases.Select), RecomputeMs: ms(r.Phases.Recompute),
		BytesLoaded: r.BytesLoaded, Recomputed: r.Recomputed}
	if m.cpu > 0 {
		row.CPUSpeedup = ms(fullM.cpu) / ms(m.cpu)
	}
	return row
}

// TTFTTable renders rows as a Markdown table.
func TTFTTable(rows []TTFTRow, params int64, elapsed time.Duration) Table {
	t := Table{Header: []string{"context", "strategy", "ratio", "TTFT ms", "full ms", "speedup", "CPU speedup", "FLOP limit",
		"load ms", "assemble ms", "select ms", "recompute ms", "KV loaded MiB"}}
	if len(rows) > 0 {
		t.Title = fmt.Sprintf("TTFT on %s (%.1fM parameters), in process, chunk KV in the memory tier", rows[0].Model, float64(params)/1e6)
	}
	for _, r := range rows {
		t.Rows = append(t.Rows, []string{fmt.Sprint(r.ContextTokens), r.Strategy, pct(r.Ratio), f(r.TTFTMs, 1), f(r.FullTTFTMs, 1),
			f(r.Speedup, 2) + "x", f(r.CPUSpeedup, 2) + "x", f(r.Limit, 2) + "x", f(r.LoadMs, 1), f(r.AssembleMs, 1), f(r.SelectMs, 1), f(r.RecomputeMs, 1),
			f(float64(r.BytesLoaded)/(1<<20), 1)})
	}
	t.Notes = append(t.Notes, "Speedup = full's TTFT / the method's, both measured in this run; FLOP limit = FLOPs(full) / FLOPs(method) "+
		"(GEMMs, attention over the keys each query sees, logits). CPU speedup = full's process CPU time / the method's "+
		"(user + system), which a machine shared with other work distorts less than wall time.",
		fmt.Sprintf("Measured in %s.", elapsed.Round(time.Millisecond)))
	return t
}

// TTFTModel is the default TTFT model: model.SyntheticLlama30M with room
// for 4K of context plus the prefix and the question.
func TTFTModel() model.Config {
	c := model.SyntheticLlama30M()
	c.MaxPositions = 8192
	return c
}

// TTFTQuickModel is --quick's model: a ~5M-parameter synthetic Llama (dim
// 256, 4 layers) that times the same code paths in seconds.
func TTFTQuickModel() model.Config {
	c := model.SyntheticLlama30M()
	c.Dim, c.HiddenDim, c.Layers, c.Heads, c.KVHeads, c.HeadDim = 256, 704, 4, 4, 4, 64
	return c
}

// TTFTPlots draws the wall-clock and CPU speedups over full of each strategy
// against the context size.
func TTFTPlots(rows []TTFTRow) []Plot {
	wall := Plot{File: "ttft-speedup.png", Title: "TTFT speedup over full (wall clock)", XLabel: "context tokens",
		YLabel: "speedup (x)", Kind: Lines, LogY: true}
	cpu := Plot{File: "ttft-cpu-speedup.png", Title: "Speedup over full (process CPU time)", XLabel: "context tokens",
		YLabel: "speedup (x)", Kind: Lines, LogY: true}
	limit := Plot{File: "ttft-limit.png", Title: "FLOP limit: FLOPs(full) / FLOPs(method)", XLabel: "context tokens",
		YLabel: "limit (x)", Kind: Lines, LogY: true}
	idx := map[string]int{}
	for _, r := range rows {
		if r.Strategy == "full" {
			continue
		}
		name := r.Strategy
		if r.Strategy != "reuse" {
			name += " " + pct(r.Ratio)
		}
		i, ok := idx[name]
		if !ok {
			i = len(wall.Series)
			idx[name] = i
			for _, p := range []*Plot{&wall, &cpu, &limit} {
				p.Series = append(p.Series, Series{Name: name})
			}
		}
		add := func(p *Plot, y float64) {
			if y > 0 {
				p.Series[i].X = append(p.Series[i].X, float64(r.ContextTokens))
				p.Series[i].Y = append(p.Series[i].Y, y)
			}
		}
		add(&wall, r.Speedup)
		add(&cpu, r.CPUSpeedup)
		add(&limit, r.Limit)
	}
	return []Plot{wall, cpu, limit}
}
