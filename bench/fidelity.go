package bench

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"time"

	"github.com/fusionrag/fusionrag/fingerprint"
	"github.com/fusionrag/fusionrag/fusion"
	"github.com/fusionrag/fusionrag/kvstore"
	"github.com/fusionrag/fusionrag/model"
	"github.com/fusionrag/fusionrag/recompute"
)

// FidelityConfig configures RunFidelity, which fills zero fields with the
// defaults documented here.
type FidelityConfig struct {
	// Model is the model measured. Required.
	Model *model.Model
	// Name labels the model in the report.
	Name string
	// Prompts is the number of prompts S + C_1..C_k + Q; default 24.
	Prompts int
	// Chunks per prompt; default 4.
	Chunks int
	// ChunkTokens is the length of every chunk; default 90.
	ChunkTokens int
	// Continuation is the number of next-token distributions compared per
	// prompt (the greedy continuation of full, teacher-forced); default 24.
	Continuation int
	// Strategies measured besides full and reuse; default fusionrag,
	// cacheblend, epic.
	Strategies []string
	// Ratios measured for each strategy; default 0, 5, 10, 15, 20, 30 %.
	Ratios []float64
	// Temperature of the sampling that writes the chunks; default 0.9.
	Temperature float64
	// Seed makes prompts reproducible.
	Seed uint64
	// Variant is the chunk KV reused: "raw" (default; prefill of S + C) or
	// "fused" (the offline stage's: C prefilled after S and its Neighbours
	// most similar chunks, package fusion).
	Variant string
	// Neighbours per chunk for fused KV, found by BM25 over every chunk of
	// every prompt (the corpus); default 3, fewer when they do not fit.
	Neighbours int
}

// FidelityRow is one strategy × ratio, averaged over prompts and steps.
type FidelityRow struct {
	Model    string  `json:"model"`
	Variant  string  `json:"variant"`
	Strategy string  `json:"strategy"`
	Ratio    float64 `json:"ratio"`
	// KL is the mean KL(full || method) of next-token distributions, nats.
	KL float64 `json:"kl"`
	// Top1 is the fraction of steps whose argmax agrees with full's.
	Top1 float64 `json:"top1"`
	// NormalizedFidelity is 100 × (KL_reuse − KL) / KL_reuse: reuse 0, full 100.
	NormalizedFidelity float64 `json:"normalized_fidelity"`
	// MedianPromptFidelity is the median over prompts of each prompt's own
	// normalised fidelity: robust to the few prompts whose KL dominates the
	// mean (a name to copy, a near tie at one step).
	MedianPromptFidelity float64 `json:"median_prompt_fidelity"`
	// Recomputed is the mean fraction of context tokens recomputed.
	Recomputed float64 `json:"recomputed"`
	// FusedHits is the mean fraction of chunks served from fused KV.
	FusedHits float64 `json:"fused_hits"`
	// CostRatio is the mean FLOPs(method) / FLOPs(full).
	CostRatio float64 `json:"cost_ratio"`
	Prompts   int     `json:"prompts"`
	Steps     int     `json:"steps"`
}

// storyOpenings seed the chunks and questions on a model with a tokenizer
// (TinyStories-style openings; the model writes the rest).
var storyOpenings = []string{
	"Once upon a time, there was a little girl named Lily.",
	"Tom had a big red ball.",
	"One day, a cat went to the park.",
	"There was a small bird in a tree.",
	"Sam and his mom went to the store.",
	"The sun was hot and the dog was sad.",
	"Anna found a shiny box in the garden.",
	"A little boy wanted to fly a kite.",
	"The old man had a funny hat.",
	"Mia liked to play with her toys.",
	"Ben saw a big truck on the road.",
	"The fish lived in a blue pond.",
}

var questionOpenings = []string{
	"Once upon a time, there was a",
	"One day, Lily went to",
	"Tom was happy because",
	"The little bird said",
	"After that, they all",
	"Then the cat saw",
}

func (c *FidelityConfig) fill() error {
	if c.Model == nil {
		return errors.New("bench: FidelityConfig.Model is nil")
	}
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&c.Prompts, 24)
	def(&c.Chunks, 4)
	def(&c.ChunkTokens, 90)
	def(&c.Continuation, 24)
	if c.Temperature <= 0 {
		c.Temperature = 0.9
	}
	if c.Strategies == nil {
		c.Strategies = []string{"fusionrag", "cacheblend", "epic"}
	}
	if c.Ratios == nil {
		c.Ratios = []float64{0, 0.05, 0.10, 0.15, 0.20, 0.30}
	}
	if c.Name == "" {
		c.Name = "model"
	}
	switch c.Variant {
	case "":
		c.Variant = "raw"
	case "raw", "fused":
	default:
		return fmt.Errorf("bench: fidelity variant %q: want raw or fused", c.Variant)
	}
	def(&c.Neighbours, 3)
	return nil
}

// generator samples text from the model itself (chunks are its own stories).
type generator struct {
	m    *model.Model
	rng  *rand.Rand
	temp float64
}

// sample continues prompt (which includes BOS when the model has one) up to
// n new tokens; BOS and EOS are never sampled so the length is exact.
func (g *generator) sample(ctx context.Context, prompt []int32, n int) ([]int32, error) {
	cfg := g.m.Config
	cache := model.NewCache(cfg, len(prompt)+n)
	b := model.Batch{Tokens: prompt, Pos: make([]int32, len(prompt))}
	for i := range b.Pos {
		b.Pos[i] = int32(i)
	}
	var out []int32
	for len(out) < n {
		res, err := g.m.Forward(ctx, cache, b, model.ForwardOptions{Logits: []int{len(b.Tokens) - 1}, Append: true})
		if err != nil {
			return nil, err
		}
		logits := res.Logits[0]
		banned := append([]int32{cfg.BOS}, cfg.EOS...)
		tok := sampleToken(logits, g.temp, g.rng, banned)
		out = append(out, tok)
		b = model.Batch{Tokens: []int32{tok}, Pos: []int32{int32(cache.Len())}}
	}
	return out, nil
}

// sampleToken draws from softmax(logits/temp) with banned ids excluded.
func sampleToken(logits []float32, temp float64, rng *rand.Rand, banned []int32) int32 {
	mx := math.Inf(-1)
	for _, v := range logits {
		mx = max(mx, float64(v))
	}
	p := make([]float64, len(logits))
	var sum float64
	for i, v := range logits {
		p[i] = math.Exp((float64(v) - mx) / temp)
	}
	for _, b := range banned {
		if b >= 0 && int(b) < len(p) {
			p[b] = 0
		}
	}
	for _, v := range p {
		sum += v
	}
	u := rng.Float64() * sum
	for i, v := range p {
		u -= v
		if u <= 0 && v > 0 {
			return int32(i)
		}
	}
	return int32(argmax(logits))
}

func argmax(x []float32) int {
	best := 0
	for i, v := range x {
		if v > x[best] {
			best = i
		}
	}
	return best
}

// buildPrompts makes the fidelity prompts: S = BOS, chunks = stories the
// model writes (seeded sampling) from different openings, Q = a short story
// opening. A model without a tokenizer (synthetic, random weights, whose own
// text degenerates into one repeated token) gets uniformly random ids.
func buildPrompts(ctx context.Context, c *FidelityConfig) ([]recompute.Request, error) {
	m := c.Model
	cfg := m.Config
	g := &generator{m: m, rng: rand.New(rand.NewPCG(c.Seed, 0xf1de)), temp: c.Temperature}
	var prefix []int32
	if cfg.BOS >= 0 {
		prefix = []int32{cfg.BOS}
	}
	randomSeed := func(n int) []int32 {
		s := make([]int32, n)
		for i := range s {
			s[i] = int32(3 + g.rng.IntN(cfg.Vocab-3))
		}
		return s
	}
	var reqs []recompute.Request
	for p := range c.Prompts {
		req := recompute.Request{Prefix: prefix}
		for i := range c.Chunks {
			if m.Tokenizer == nil { // random weights write degenerate text (one token repeated): use random ids
				req.Chunks = append(req.Chunks, randomSeed(c.ChunkTokens))
				continue
			}
			seed := m.Tokenizer.Encode(storyOpenings[(p*c.Chunks+i)%len(storyOpenings)])
			seed = seed[:min(len(seed), c.ChunkTokens)]
			gen, err := g.sample(ctx, append(append([]int32(nil), prefix...), seed...), c.ChunkTokens-len(seed))
			if err != nil {
				return nil, err
			}
			req.Chunks = append(req.Chunks, append(seed, gen...))
		}
		if m.Tokenizer != nil {
			req.Question = m.Tokenizer.Encode(questionOpenings[p%len(questionOpenings)])
		} else {
			req.Question = randomSeed(10)
		}
		if total := req.Layout().Total() + c.Continuation; total > cfg.MaxPositions {
			return nil, fmt.Errorf("bench: prompt of %d tokens plus %d continuation exceeds the model's %d positions", req.Layout().Total(), c.Continuation, cfg.MaxPositions)
		}
		reqs = append(reqs, req)
	}
	return reqs, nil
}

// logSoftmax returns log softmax(x) in float64.
func logSoftmax(x []float32) []float64 {
	mx := math.Inf(-1)
	for _, v := range x {
		mx = max(mx, float64(v))
	}
	var s float64
	for _, v := range x {
		s += math.Exp(float64(v) - mx)
	}
	ls := mx + math.Log(s)
	out := make([]float64, len(x))
	for i, v := range x {
		out[i] = float64(v) - ls
	}
	return out
}

// KL returns KL(P || Q) in nats for the distributions softmax(p), softmax(q).
func KL(p, q []float32) float64 {
	lp, lq := logSoftmax(p), logSoftmax(q)
	var kl float64
	for i := range lp {
		if pi := math.Exp(lp[i]); pi > 0 {
			kl += pi * (lp[i] - lq[i])
		}
	}
	return max(kl, 0)
}

// teacherForce returns the next-token logits after the prompt (lastLogits)
// and after each of cont[:len(cont)-1] fed on top of kv (not modified).
func teacherForce(ctx context.Context, m *model.Model, kv *model.Cache, lastLogits []float32, cont []int32) ([][]float32, error) {
	out := [][]float32{lastLogits}
	if len(cont) <= 1 {
		return out, nil
	}
	n := kv.Len()
	b := model.Batch{Tokens: cont[:len(cont)-1], Pos: make([]int32, len(cont)-1)}
	rows := make([]int, len(b.Pos))
	for i := range b.Pos {
		b.Pos[i] = int32(n + i)
		rows[i] = i
	}
	res, err := m.Forward(ctx, kv, b, model.ForwardOptions{Logits: rows})
	if err != nil {
		return nil, err
	}
	return append(out, res.Logits...), nil
}

// greedy decodes n tokens after the prompt whose KV is kv (cloned, not
// modified) and whose last logits are given.
func greedy(ctx context.Context, m *model.Model, kv *model.Cache, lastLogits []float32, n int) ([]int32, error) {
	cache := kv.Clone()
	logits := lastLogits
	var out []int32
	for len(out) < n {
		tok := int32(argmax(logits))
		out = append(out, tok)
		if len(out) == n {
			break
		}
		res, err := m.Forward(ctx, cache, model.Batch{Tokens: []int32{tok}, Pos: []int32{int32(cache.Len())}},
			model.ForwardOptions{Logits: []int{0}, Append: true})
		if err != nil {
			return nil, err
		}
		logits = res.Logits[0]
	}
	return out, nil
}

// RunFidelity measures, for every strategy × ratio, how far the next-token
// distributions over a continuation are from full prefill's. Each prompt's
// chunk KV is raw KV computed once (memory store) and shared by every
// method; full's greedy continuation is teacher-forced on every method's KV.
func RunFidelity(ctx context.Context, c FidelityConfig) ([]FidelityRow, error) {
	if err := c.fill(); err != nil {
		return nil, err
	}
	prompts, err := buildPrompts(ctx, &c)
	if err != nil {
		return nil, err
	}
	return runFidelityOn(ctx, c, prompts)
}

// runFidelityOn measures the filled config c on the given prompts.
func runFidelityOn(ctx context.Context, c FidelityConfig, prompts []recompute.Request) ([]FidelityRow, error) {
	store, err := kvstore.Open("mem://?max=1GiB")
	if err != nil {
		return nil, err
	}
	defer store.Close()
	src := &recompute.StoreSource{Store: store}
	rcfg := recompute.Config{Model: c.Model, Source: src}
	if c.Variant == "fused" {
		rcfg.Variant = fingerprint.VariantFused
	}
	rep, err := recompute.New(rcfg)
	if err != nil {
		return nil, err
	}
	if c.Variant == "fused" {
		if err := storeFused(ctx, &c, rep, src, prompts); err != nil {
			return nil, err
		}
	}
	type method struct {
		strategy string
		ratio    float64
	}
	methods := []method{{"full", 1}, {"reuse", 0}}
	for _, s := range c.Strategies {
		for _, r := range c.Ratios {
			methods = append(methods, method{s, r})
		}
	}
	type acc struct {
		kl, top1, recomputed, cost, fused float64
		perPrompt                         []float64 // KL summed over each prompt's steps
	}
	sums := make([]acc, len(methods))
	steps := 0
	for _, req := range prompts {
		req.Strategy, req.Ratio = "full", 1
		full, err := rep.Run(ctx, req)
		if err != nil {
			return nil, err
		}
		cont, err := greedy(ctx, c.Model, full.Cache, full.LastLogits, c.Continuation)
		if err != nil {
			return nil, err
		}
		ref, err := teacherForce(ctx, c.Model, full.Cache, full.LastLogits, cont)
		if err != nil {
			return nil, err
		}
		steps += len(ref)
		// Warm the store (raw chunk KV and S) so that no method pays for it.
		req.Strategy, req.Ratio = "reuse", 0
		if _, err := rep.Run(ctx, req); err != nil {
			return nil, err
		}
		for mi, me := range methods {
			req.Strategy, req.Ratio = me.strategy, me.ratio
			res, err := rep.Run(ctx, req)
			if err != nil {
				return nil, fmt.Errorf("bench: %s@%v: %w", me.strategy, me.ratio, err)
			}
			got, err := teacherForce(ctx, c.Model, res.Cache, res.LastLogits, cont)
			if err != nil {
				return nil, err
			}
			var promptKL float64
			for t := range ref {
				promptKL += KL(ref[t], got[t])
				if argmax(ref[t]) == argmax(got[t]) {
					sums[mi].top1++
				}
			}
			sums[mi].kl += promptKL
			sums[mi].perPrompt = append(sums[mi].perPrompt, promptKL)
			sums[mi].recomputed += float64(res.Record.Recomputed) / float64(max(1, res.Record.ContextTokens))
			sums[mi].cost += res.Record.Cost.Total() / full.Record.Cost.Total()
			sums[mi].fused += float64(res.Record.FusedHits) / float64(max(1, res.Record.Chunks))
		}
	}
	rows := make([]FidelityRow, len(methods))
	for mi, me := range methods {
		rows[mi] = FidelityRow{Model: c.Name, Variant: c.Variant, Strategy: me.strategy, Ratio: me.ratio,
			KL: sums[mi].kl / float64(steps), Top1: sums[mi].top1 / float64(steps),
			Recomputed: sums[mi].recomputed / float64(len(prompts)), CostRatio: sums[mi].cost / float64(len(prompts)),
			FusedHits: sums[mi].fused / float64(len(prompts)),
			Prompts:   len(prompts), Steps: steps}
	}
	klReuse := rows[1].KL
	for i := range rows {
		var fid []float64
		for p, kl := range sums[i].perPrompt {
			if r := sums[1].perPrompt[p]; r > 0 {
				fid = append(fid, 100*(1-kl/r)) // exactly 100 at kl = 0, 0 at kl = r
			}
		}
		rows[i].MedianPromptFidelity = 100 // reuse exact on every prompt, as below
		if len(fid) > 0 {
			rows[i].MedianPromptFidelity = median(fid)
		}
	}
	for i := range rows {
		if klReuse > 0 {
			// 100·(1 - KL/KL_reuse), not 100·(KL_reuse - KL)/KL_reuse: the
			// latter rounds 100·k/k to 100.00000000000001 for some k.
			rows[i].NormalizedFidelity = 100 * (1 - rows[i].KL/klReuse)
		} else {
			rows[i].NormalizedFidelity = 100 // reuse is already exact (e.g. one chunk)
		}
	}
	return rows, nil
}

// median returns the median of x (not empty); x is reordered.
func median(x []float64) float64 {
	slices.Sort(x)
	if n := len(x); n%2 == 1 {
		return x[n/2]
	} else {
		return (x[n/2-1] + x[n/2]) / 2
	}
}

// storeFused computes the fused KV of every chunk of every prompt, as the
// offline stage does: neighbours by BM25 over all the chunks (the corpus),
// fused KV = C prefilled after S and its neighbours' raw KV (fusion.Builder),
// stored under recompute.ChunkKey with the fused variant.
func storeFused(ctx context.Context, c *FidelityConfig, rep *recompute.Reprocessor, src *recompute.StoreSource, prompts []recompute.Request) error {
	if len(prompts) == 0 {
		return nil
	}
	prefix := prompts[0].Prefix
	var corpus []fusion.Chunk
	index := map[string]int{} // chunk ids (as text) -> corpus index, deduplicated
	for _, p := range prompts {
		if !slices.Equal(p.Prefix, prefix) {
			return errors.New("bench: fused fidelity needs one S for all prompts")
		}
		for _, ch := range p.Chunks {
			key := fmt.Sprint(ch)
			if _, ok := index[key]; ok {
				continue
			}
			index[key] = len(corpus)
			var text string
			if tok := c.Model.Tokenizer; tok != nil {
				text = tok.Decode(ch)
			} else { // no tokenizer: token ids are the words
				words := make([]string, len(ch))
				for i, t := range ch {
					words[i] = fmt.Sprintf("t%d", t)
				}
				text = strings.Join(words, " ")
			}
			corpus = append(corpus, fusion.Chunk{ID: fmt.Sprint(len(corpus)), Text: text, Tokens: ch})
		}
	}
	nb, err := (&fusion.BM25{KeepStopWords: c.Model.Tokenizer == nil}).Neighbours(ctx, corpus, c.Neighbours)
	if err != nil {
		return err
	}
	b, err := fusion.NewBuilder(ctx, c.Model, prefix)
	if err != nil {
		return err
	}
	raw := make([]*model.Cache, len(corpus))
	for i, ch := range corpus {
		if raw[i], err = b.Raw(ctx, ch.Tokens); err != nil {
			return err
		}
	}
	ns := rep.Config().Namespace
	for i, ch := range corpus {
		var lens []int
		for _, j := range nb[i] {
			lens = append(lens, len(corpus[j].Tokens))
		}
		var neighbours []*model.Cache
		for _, j := range nb[i][:b.Fits(len(ch.Tokens), lens)] {
			neighbours = append(neighbours, raw[j])
		}
		kv, err := b.Fused(ctx, ch.Tokens, neighbours)
		if err != nil {
			return err
		}
		key := recompute.ChunkKey(ns, fingerprint.VariantFused, prefix, ch.Tokens)
		if err := src.PutKV(ctx, key, fingerprint.CheckOf(ch.Tokens), kv); err != nil {
			return err
		}
	}
	return nil
}

// FidelityTable renders rows (of one model) as a Markdown table.
func FidelityTable(rows []FidelityRow, elapsed time.Duration) Table {
	t := Table{Header: []string{"strategy", "ratio", "KL(full‖method) nats", "top-1 agree", "normalised fidelity", "median per-prompt fidelity", "recomputed", "FLOPs vs full"}}
	if len(rows) > 0 {
		t.Title = fmt.Sprintf("Fidelity on %s, %s chunk KV (%d prompts, %d next-token distributions)", rows[0].Model, rows[0].Variant, rows[0].Prompts, rows[0].Steps)
	}
	for _, r := range rows {
		t.Rows = append(t.Rows, []string{r.Strategy, pct(r.Ratio), fmt.Sprintf("%.3g", r.KL), pct(r.Top1),
			f(r.NormalizedFidelity, 1), f(r.MedianPromptFidelity, 1), pct(r.Recomputed), f(r.CostRatio, 3)})
	}
	t.Notes = append(t.Notes, "Normalised fidelity = 100 × (KL_reuse − KL) / KL_reuse (reuse = 0, full = 100), reuse with the same chunk KV. "+
		"Raw chunk KV = prefill of S + C; fused = C prefilled after S and its BM25 neighbours' raw KV (package fusion). "+
		"Each method's prompt KV is teacher-forced with full's greedy continuation.",
		fmt.Sprintf("Measured in %s.", elapsed.Round(time.Millisecond)))
	return t
}

// SyntheticFidelityModel is the small synthetic Llama of the fidelity
// benchmark: 6 layers of width 128, GQA 8/4 heads of 16, rotate_half RoPE,
// 512-token vocabulary and context. Its random weights (model.Synthetic) make
// it a structural check, not a language model.
func SyntheticFidelityModel() model.Config {
	return model.Config{Arch: model.ArchLlama, Dim: 128, HiddenDim: 344, Layers: 6, Heads: 8, KVHeads: 4, HeadDim: 16,
		Vocab: 512, MaxPositions: 512, RopeTheta: 10000, NormEps: 1e-5, TiedEmbeddings: true, BOS: 1, EOS: []int32{2}}
}

// FidelityPlots draws, per model and chunk KV variant, the normalised fidelity of each strategy
// against the ratio (full and reuse are the 100 and 0 lines by definition).
func FidelityPlots(rows []FidelityRow) []Plot {
	var models []string
	series := map[string]map[string]*Series{}
	for _, r := range rows {
		if r.Strategy == "full" || r.Strategy == "reuse" {
			continue
		}
		label := r.Model
		if r.Variant != "" {
			label += ", " + r.Variant + " KV"
		}
		if series[label] == nil {
			series[label] = map[string]*Series{}
			models = append(models, label)
		}
		s := series[label][r.Strategy]
		if s == nil {
			s = &Series{Name: r.Strategy}
			series[label][r.Strategy] = s
		}
		s.X = append(s.X, r.Ratio*100)
		s.Y = append(s.Y, r.NormalizedFidelity)
	}
	var plots []Plot
	for _, m := range models {
		p := Plot{File: "fidelity-" + fileSafe(m) + ".png", Title: "Normalised fidelity on " + m,
			XLabel: "recomputed context tokens (%)", YLabel: "normalised fidelity (reuse 0, full 100)", Kind: Lines}
		names := make([]string, 0, len(series[m]))
		for n := range series[m] {
			names = append(names, n)
		}
		slices.Sort(names)
		for _, n := range names {
			p.Series = append(p.Series, *series[m][n])
		}
		plots = append(plots, p)
	}
	return plots
}
