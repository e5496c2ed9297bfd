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

	"github.com/fusionrag/fusionrag/chunkkv"
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
	// Workload is what the prompts are made of:
	//   - "stories" (default): chunks are stories the model writes itself
	//     from different openings, Q a short story opening;
	//   - "recall": the same chunks, Q a span copied from an earlier chunk
	//     (never the last), so that the continuation depends on it;
	//   - "coretrieval": the passages of RAG questions (Dataset), pooled
	//     into one corpus (every passage of every question, cut to
	//     ChunkTokens), a prompt = the first Chunks passages of a question
	//     and the question: a chunk's co-retrieved passages are in the
	//     corpus and can be its neighbours.
	Workload string
	// Dataset is the RAG set of the coretrieval workload.
	Dataset *Dataset
	// Prompts is the number of prompts S + C_1..C_k + Q; default 24.
	Prompts int
	// Chunks per prompt; default 4.
	Chunks int
	// ChunkTokens is the length of every chunk (the cut of a passage);
	// default 90.
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
	// Neighbours per chunk for fused KV; default 3, fewer when they do not
	// fit.
	Neighbours int
	// NeighbourSources are the neighbour searches fused KV is built with:
	// "bm25" (the product's default), "random" (control: n random other
	// chunks), "coretrieved" (oracle: the chunks retrieved together with
	// it). The first is the fused KV of the main table; the others are
	// reported as controls. Default bm25, random, coretrieved.
	NeighbourSources []string
	// NoAblations measures the main table and the controls only.
	NoAblations bool
}

// Row tables of the fidelity report.
const (
	// TableMain is the paper's comparison: full, reuse (raw), fused reuse,
	// fusionrag on fused KV, CacheBlend and EPIC on raw KV.
	TableMain = "main"
	// TableAblation: fusionrag's selection on raw KV, fusion alone,
	// CacheBlend and EPIC on fused KV, and the first chunk served fused.
	TableAblation = "ablation"
	// TableControl: fused KV built with other neighbour searches.
	TableControl = "control"
)

// FidelityRow is one method (strategy × chunk KV × ratio), averaged over
// prompts and steps.
type FidelityRow struct {
	Model    string `json:"model"`
	Workload string `json:"workload"`
	// Table is TableMain, TableAblation or TableControl.
	Table string `json:"table"`
	// Variant is the chunk KV the method reused: "raw" or "fused" (none
	// for full). Neighbours names the neighbour search of fused KV.
	Variant    string `json:"variant"`
	Neighbours string `json:"neighbours,omitempty"`
	// FirstChunkFused: the first chunk was served fused too (the ablation of
	// recompute.Config.FirstChunkFused); otherwise it is raw, exact.
	FirstChunkFused bool    `json:"first_chunk_fused,omitempty"`
	Strategy        string  `json:"strategy"`
	Ratio           float64 `json:"ratio"`
	// KL is the mean KL(full || method) of next-token distributions, nats.
	KL float64 `json:"kl"`
	// Top1 is the fraction of steps whose argmax agrees with full's.
	Top1 float64 `json:"top1"`
	// NormalizedFidelity is the paper's (Eq. 11) for a loss:
	// 100 × (KL_reuse_raw − KL) / KL_reuse_raw, against plain reuse of RAW
	// chunk KV for every row: reuse (raw) exactly 0, full exactly 100.
	NormalizedFidelity float64 `json:"normalized_fidelity"`
	// OwnNormalizedFidelity (an ablation, fused rows only) normalises
	// against reuse of the same fused KV instead.
	OwnNormalizedFidelity *float64 `json:"own_normalized_fidelity,omitempty"`
	// MedianPromptFidelity is the median over prompts of each prompt's own
	// normalised fidelity (same baseline): robust to the few prompts whose
	// KL dominates the mean.
	MedianPromptFidelity float64 `json:"median_prompt_fidelity"`
	// Recomputed is the mean fraction of context tokens recomputed.
	Recomputed float64 `json:"recomputed"`
	// SelectionShare[i] is the mean share of the recomputed tokens that
	// lie in chunk i (prompt order); nil when nothing was selected.
	SelectionShare []float64 `json:"selection_share,omitempty"`
	// FusedHits is the mean fraction of chunks served from fused KV;
	// ExactChunks the mean number of leading chunks served exact (raw).
	FusedHits   float64 `json:"fused_hits"`
	ExactChunks float64 `json:"exact_chunks"`
	// CostRatio is the mean FLOPs(method) / FLOPs(full).
	CostRatio float64 `json:"cost_ratio"`
	// CoRetrieved is, for fused rows, the share of the chunks' stored
	// neighbours that were retrieved together with them (in the same
	// prompt, or the same question's passages).
	CoRetrieved *float64 `json:"coretrieved_neighbours,omitempty"`
	Prompts     int      `json:"prompts"`
	Steps       int      `json:"steps"`
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
	switch c.Workload {
	case "":
		c.Workload = "stories"
	case "stories", "recall":
	case "coretrieval":
		if c.Dataset == nil || len(c.Dataset.Examples) == 0 {
			return errors.New("bench: the coretrieval workload needs a Dataset")
		}
		if c.Model.Tokenizer == nil {
			return errors.New("bench: the coretrieval workload needs a model with a tokenizer")
		}
	default:
		return fmt.Errorf("bench: fidelity workload %q: want stories, recall or coretrieval", c.Workload)
	}
	def(&c.Neighbours, 3)
	if c.NeighbourSources == nil {
		c.NeighbourSources = []string{"bm25", "random", "coretrieved"}
	}
	if len(c.NeighbourSources) == 0 {
		return errors.New("bench: FidelityConfig.NeighbourSources is empty")
	}
	for _, n := range c.NeighbourSources {
		if !slices.Contains([]string{"bm25", "random", "coretrieved"}, n) {
			return fmt.Errorf("bench: neighbour source %q: want bm25, random or coretrieved", n)
		}
	}
	return nil
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
// It writes the workloads' corpus text, it does not decode answers: it
// draws from the generator's one stream shared by every story (so the
// prompts, and the figures in docs/benchmarks.md, stay as they were), where
// model.Sampler owns a stream per sequence. Answers and continuations use
// model.Decode.
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
	return model.Argmax(logits)
}

// buildPrompts makes the fidelity prompts of the stories and recall
// workloads: S = BOS, chunks = stories the model writes (seeded sampling)
// from different openings, Q = a short story opening (stories) or a span
// copied from an earlier chunk (recall). A model without a tokenizer (synthetic, random weights, whose own
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
		switch {
		case c.Workload == "recall":
			// Q repeats a span of an earlier chunk (never the last one): the
			// continuation depends on that chunk's content (copying), not on
			// the most recent tokens.
			src := req.Chunks[g.rng.IntN(max(1, len(req.Chunks)-1))]
			n := min(12, len(src)/2)
			at := g.rng.IntN(len(src) - 2*n + 1)
			req.Question = slices.Clone(src[at : at+n])
		case m.Tokenizer != nil:
			req.Question = m.Tokenizer.Encode(questionOpenings[p%len(questionOpenings)])
		default:
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

// RunFidelity measures, for every method (strategy × chunk KV × ratio), how
// far the next-token distributions over a continuation are from full
// prefill's. One memory store holds, per neighbour source, every chunk's raw
// and fused KV (package fusion's builder, as the offline stage stores them);
// full's greedy continuation is teacher-forced on every method's KV. Every
// row is normalised against plain reuse of raw chunk KV (the paper's Eq. 11).
func RunFidelity(ctx context.Context, c FidelityConfig) ([]FidelityRow, error) {
	if err := c.fill(); err != nil {
		return nil, err
	}
	w, err := buildWorkload(ctx, &c)
	if err != nil {
		return nil, err
	}
	return runFidelityOn(ctx, c, w)
}

// fidelityWorkload is the prompts and the corpus their chunks come from.
type fidelityWorkload struct {
	prompts []recompute.Request
	// corpus is every chunk, deduplicated; groups the corpus indices
	// retrieved together (a prompt's chunks, or a question's passages).
	corpus []fusion.Chunk
	groups [][]int
}

// buildWorkload makes the prompts of c.Workload and the corpus.
func buildWorkload(ctx context.Context, c *FidelityConfig) (*fidelityWorkload, error) {
	w := &fidelityWorkload{}
	index := map[string]int{}
	add := func(ch []int32) int {
		key := fmt.Sprint(ch)
		if i, ok := index[key]; ok {
			return i
		}
		index[key] = len(w.corpus)
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
		w.corpus = append(w.corpus, fusion.Chunk{ID: fmt.Sprint(len(w.corpus)), Text: text, Tokens: ch})
		return len(w.corpus) - 1
	}
	if c.Workload != "coretrieval" {
		prompts, err := buildPrompts(ctx, c)
		if err != nil {
			return nil, err
		}
		w.prompts = prompts
		for _, p := range prompts {
			var g []int
			for _, ch := range p.Chunks {
				g = append(g, add(ch))
			}
			w.groups = append(w.groups, g)
		}
		return w, nil
	}
	m, tok := c.Model, c.Model.Tokenizer
	var prefix []int32
	if m.Config.BOS >= 0 {
		prefix = []int32{m.Config.BOS}
	}
	for _, e := range c.Dataset.Examples {
		if len(w.prompts) == c.Prompts {
			break
		}
		if len(e.Passages) < c.Chunks {
			continue
		}
		req := recompute.Request{Prefix: prefix, Question: tok.Encode("\nQuestion: " + strings.TrimSpace(e.Question) + "\nAnswer:")}
		var g []int
		for i, p := range e.Passages {
			ids := tok.Encode(p.Title + "\n" + p.Text + "\n")
			ids = ids[:min(len(ids), c.ChunkTokens)]
			if len(ids) == 0 {
				continue
			}
			g = append(g, add(ids))
			if i < c.Chunks {
				req.Chunks = append(req.Chunks, ids)
			}
		}
		if total := req.Layout().Total() + c.Continuation; total > m.Config.MaxPositions {
			return nil, fmt.Errorf("bench: prompt of %d tokens plus %d continuation exceeds the model's %d positions", req.Layout().Total(), c.Continuation, m.Config.MaxPositions)
		}
		w.prompts = append(w.prompts, req)
		w.groups = append(w.groups, g)
	}
	if len(w.prompts) == 0 {
		return nil, fmt.Errorf("bench: no example of %s has %d passages", c.Dataset.Name, c.Chunks)
	}
	return w, nil
}

// kvSource is the chunk KV a method reuses.
type kvSource struct {
	variant    string // "raw" or "fused"
	neighbours string // the neighbour search of fused KV
	firstFused bool   // recompute.Config.FirstChunkFused
}

// fidelityMethod is one row: a strategy at a ratio on a KV source.
type fidelityMethod struct {
	strategy string
	ratio    float64
	kv       kvSource
	table    string
}

// methods lists the rows: the paper's comparison, the ablations, the
// neighbour controls (at 0 and 15%).
func (c *FidelityConfig) methods() []fidelityMethod {
	raw := kvSource{variant: "raw"}
	fused := kvSource{variant: "fused", neighbours: c.NeighbourSources[0]}
	ms := []fidelityMethod{{"full", 1, kvSource{}, TableMain}, {"reuse", 0, raw, TableMain}, {"reuse", 0, fused, TableMain}}
	var abl []fidelityMethod
	for _, s := range c.Strategies {
		if s == "full" || s == "reuse" {
			continue
		}
		main, other := raw, fused // CacheBlend and EPIC run on raw KV, as in the paper
		if s == "fusionrag" {
			main, other = fused, raw
		}
		for _, r := range c.Ratios {
			ms = append(ms, fidelityMethod{s, r, main, TableMain})
			abl = append(abl, fidelityMethod{s, r, other, TableAblation})
		}
	}
	if !c.NoAblations {
		ms = append(ms, abl...)
		ff := fused
		ff.firstFused = true
		ms = append(ms, fidelityMethod{"reuse", 0, ff, TableAblation})
		for _, s := range c.Strategies {
			if s != "full" && s != "reuse" {
				ms = append(ms, fidelityMethod{s, 0.15, ff, TableAblation})
			}
		}
	}
	for _, n := range c.NeighbourSources[1:] {
		kv := kvSource{variant: "fused", neighbours: n}
		ms = append(ms, fidelityMethod{"reuse", 0, kv, TableControl})
		if slices.Contains(c.Strategies, "fusionrag") {
			ms = append(ms, fidelityMethod{"fusionrag", 0.15, kv, TableControl})
		}
	}
	return ms
}

// checkSource fails when a result's chunk KV is not what its row says: raw
// rows read no fused KV; fused rows read every chunk fused but the first,
// which is raw and exact (all of them fused with firstFused).
func checkSource(kv kvSource, rec recompute.Record) error {
	if rec.Strategy == "full" {
		return nil
	}
	wantFused, wantExact := 0, min(1, rec.Chunks)
	if kv.variant == "fused" {
		wantFused = rec.Chunks - wantExact
		if kv.firstFused {
			wantFused, wantExact = rec.Chunks, 0
		}
	}
	if rec.FusedHits != wantFused || rec.ExactChunks != wantExact || rec.Misses != 0 {
		return fmt.Errorf("bench: %s on %s KV read %d fused chunks, %d exact, %d misses of %d; want %d fused, %d exact, no miss",
			rec.Strategy, kv.variant, rec.FusedHits, rec.ExactChunks, rec.Misses, rec.Chunks, wantFused, wantExact)
	}
	return nil
}

// neighbourer returns the neighbour search named n.
func neighbourer(n string, c *FidelityConfig, w *fidelityWorkload) fusion.Neighbourer {
	switch n {
	case "random":
		return fusion.Random{Seed: c.Seed + 1}
	case "coretrieved":
		return fusion.CoRetrieved{Groups: w.groups}
	}
	return &fusion.BM25{KeepStopWords: c.Model.Tokenizer == nil}
}

// runFidelityOn measures the filled config c on the workload.
func runFidelityOn(ctx context.Context, c FidelityConfig, w *fidelityWorkload) ([]FidelityRow, error) {
	store, err := kvstore.Open("mem://?max=2GiB")
	if err != nil {
		return nil, err
	}
	defer store.Close()
	src := &chunkkv.Store{Store: store}
	prefix := w.prompts[0].Prefix
	for _, p := range w.prompts {
		if !slices.Equal(p.Prefix, prefix) {
			return nil, errors.New("bench: fidelity needs one S for all prompts")
		}
	}
	b, err := fusion.NewBuilder(ctx, c.Model, prefix)
	if err != nil {
		return nil, err
	}
	raw := make([]*model.Cache, len(w.corpus))
	for i, ch := range w.corpus {
		if raw[i], err = b.Raw(ctx, ch.Tokens); err != nil {
			return nil, err
		}
	}
	// One namespace per KV source; each holds raw KV of every chunk (as
	// the offline stage stores it), fused ones their fused KV too.
	reps := map[kvSource]*recompute.Reprocessor{}
	share := map[string]float64{}
	methods := c.methods()
	for _, me := range methods {
		if _, ok := reps[me.kv]; ok {
			continue
		}
		cfg := recompute.Config{Model: c.Model, Source: src, NoStoreBack: true, FirstChunkFused: me.kv.firstFused}
		if me.kv.variant == "fused" {
			cfg.Variant = fingerprint.VariantFused
			cfg.Namespace.Params = "sim=" + me.kv.neighbours
		}
		rep, err := recompute.New(cfg)
		if err != nil {
			return nil, err
		}
		reps[me.kv] = rep
		ns := rep.Config().Namespace
		if me.kv.variant == "" {
			continue
		}
		stored := false
		for kv := range reps {
			stored = stored || (kv != me.kv && kv.variant == me.kv.variant && kv.neighbours == me.kv.neighbours)
		}
		if stored { // the same entries (the firstFused ablation)
			continue
		}
		if len(prefix) > 0 {
			key, err := fingerprint.SystemPrefixKey(ns, prefix, rep.Config().BlockSize)
			if err != nil {
				return nil, err
			}
			if err := src.PutKV(ctx, key, fingerprint.CheckOf(prefix), b.PrefixKV()); err != nil {
				return nil, err
			}
		}
		for i, ch := range w.corpus {
			if err := src.PutKV(ctx, fingerprint.ChunkKeyAfter(ns, fingerprint.VariantRaw, prefix, ch.Tokens), fingerprint.CheckOf(ch.Tokens), raw[i]); err != nil {
				return nil, err
			}
		}
		if me.kv.variant == "fused" {
			nb, err := storeFused(ctx, &c, w, b, raw, neighbourer(me.kv.neighbours, &c, w), src, ns, prefix)
			if err != nil {
				return nil, err
			}
			share[me.kv.neighbours] = fusion.CoRetrievalShare(nb, w.groups)
		}
	}
	type acc struct {
		kl, top1, recomputed, cost, fused, exact float64
		perPrompt                                []float64 // KL summed over each prompt's steps
		sel                                      []float64
		selN                                     int
	}
	sums := make([]acc, len(methods))
	steps := 0
	fullRep := reps[kvSource{}]
	for _, req := range w.prompts {
		req.Strategy, req.Ratio = "full", 1
		full, err := fullRep.Run(ctx, req)
		if err != nil {
			return nil, err
		}
		// full's greedy continuation, n ids exactly: no stop ids (a story
		// may run through EOS; what follows is still teacher-forced text).
		cont, err := c.Model.Decode(ctx, full.Cache.Clone(), full.LastLogits, c.Continuation, model.Greedy(), nil, nil)
		if err != nil {
			return nil, err
		}
		ref, err := teacherForce(ctx, c.Model, full.Cache, full.LastLogits, cont)
		if err != nil {
			return nil, err
		}
		steps += len(ref)
		lay := req.Layout()
		for mi, me := range methods {
			req.Strategy, req.Ratio = me.strategy, me.ratio
			res, err := reps[me.kv].Run(ctx, req)
			if err != nil {
				return nil, fmt.Errorf("bench: %s@%v: %w", me.strategy, me.ratio, err)
			}
			if err := checkSource(me.kv, res.Record); err != nil {
				return nil, err
			}
			got, err := teacherForce(ctx, c.Model, res.Cache, res.LastLogits, cont)
			if err != nil {
				return nil, err
			}
			a := &sums[mi]
			var promptKL float64
			for t := range ref {
				promptKL += KL(ref[t], got[t])
				if model.Argmax(ref[t]) == model.Argmax(got[t]) {
					a.top1++
				}
			}
			a.kl += promptKL
			a.perPrompt = append(a.perPrompt, promptKL)
			a.recomputed += float64(res.Record.Recomputed) / float64(max(1, res.Record.ContextTokens))
			a.cost += res.Record.Cost.Total() / full.Record.Cost.Total()
			a.fused += float64(res.Record.FusedHits) / float64(max(1, res.Record.Chunks))
			a.exact += float64(res.Record.ExactChunks)
			if sel := res.Record.Selected; len(sel) > 0 && me.strategy != "full" {
				if a.sel == nil {
					a.sel = make([]float64, len(lay.Chunks))
				}
				for ci, span := range lay.Chunks {
					if ci >= len(a.sel) {
						break
					}
					n := 0
					for _, p := range sel {
						if p >= span.Begin && p < span.End {
							n++
						}
					}
					a.sel[ci] += float64(n) / float64(len(sel))
				}
				a.selN++
			}
		}
	}
	rows := make([]FidelityRow, len(methods))
	for mi, me := range methods {
		a := sums[mi]
		n := float64(len(w.prompts))
		rows[mi] = FidelityRow{Model: c.Name, Workload: c.Workload, Table: me.table, Variant: me.kv.variant, Neighbours: me.kv.neighbours,
			FirstChunkFused: me.kv.firstFused, Strategy: me.strategy, Ratio: me.ratio,
			KL: a.kl / float64(steps), Top1: a.top1 / float64(steps),
			Recomputed: a.recomputed / n, CostRatio: a.cost / n, FusedHits: a.fused / n, ExactChunks: a.exact / n,
			Prompts: len(w.prompts), Steps: steps}
		if a.selN > 0 {
			for i := range a.sel {
				a.sel[i] /= float64(a.selN)
			}
			rows[mi].SelectionShare = a.sel
		}
		if v, ok := share[me.kv.neighbours]; ok && me.kv.variant == "fused" {
			rows[mi].CoRetrieved = &v
		}
	}
	// The baseline of every row: reuse of raw chunk KV (methods[1]).
	base := 1
	for i := range rows {
		rows[i].NormalizedFidelity = normalizedLoss(rows[i].KL, rows[base].KL)
		var fid []float64
		for p, kl := range sums[i].perPrompt {
			if r := sums[base].perPrompt[p]; r > 0 {
				fid = append(fid, normalizedLoss(kl, r))
			}
		}
		rows[i].MedianPromptFidelity = 100 // reuse exact on every prompt
		if len(fid) > 0 {
			rows[i].MedianPromptFidelity = median(fid)
		}
		if rows[i].Variant == "fused" {
			for j, me := range methods {
				if me.strategy == "reuse" && me.kv == methods[i].kv {
					v := normalizedLoss(rows[i].KL, rows[j].KL)
					rows[i].OwnNormalizedFidelity = &v
				}
			}
		}
	}
	return rows, nil
}

// normalizedLoss is the paper's normalised score for a loss (Eq. 11 with
// M_full = 0): 100 × (base − loss) / base, written 100 × (1 − loss/base) so
// that loss = base gives exactly 0 and loss = 0 exactly 100 (the other form
// rounds 100·k/k to 100.00000000000001 for some k). A base of 0 (reuse
// already exact, e.g. one chunk) gives 100 when loss is 0 too, else 0.
func normalizedLoss(loss, base float64) float64 {
	if base > 0 {
		return 100 * (1 - loss/base)
	}
	if loss == 0 {
		return 100
	}
	return 0
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

// storeFused computes the fused KV of every corpus chunk, as the offline
// stage does: its neighbours by nbr, fused KV = C prefilled after S and its
// neighbours' raw KV (fusion.Builder), stored under fingerprint.ChunkKeyAfter with
// the fused variant in namespace ns. It returns the neighbour lists.
func storeFused(ctx context.Context, c *FidelityConfig, w *fidelityWorkload, b *fusion.Builder, raw []*model.Cache,
	nbr fusion.Neighbourer, src *chunkkv.Store, ns fingerprint.Namespace, prefix []int32) ([][]int, error) {
	nb, err := nbr.Neighbours(ctx, w.corpus, c.Neighbours)
	if err != nil {
		return nil, err
	}
	for i, ch := range w.corpus {
		var lens []int
		for _, j := range nb[i] {
			lens = append(lens, len(w.corpus[j].Tokens))
		}
		var neighbours []*model.Cache
		for _, j := range nb[i][:b.Fits(len(ch.Tokens), lens)] {
			neighbours = append(neighbours, raw[j])
		}
		kv, err := b.Fused(ctx, ch.Tokens, neighbours)
		if err != nil {
			return nil, err
		}
		key := fingerprint.ChunkKeyAfter(ns, fingerprint.VariantFused, prefix, ch.Tokens)
		if err := src.PutKV(ctx, key, fingerprint.CheckOf(ch.Tokens), kv); err != nil {
			return nil, err
		}
	}
	return nb, nil
}

// kvLabel is a row's chunk KV in words.
func (r FidelityRow) kvLabel() string {
	switch {
	case r.Strategy == "full":
		return "-"
	case r.Variant == "fused" && r.FirstChunkFused:
		return "fused (" + r.Neighbours + "), first chunk fused too"
	case r.Variant == "fused":
		return "fused (" + r.Neighbours + ")"
	}
	return r.Variant
}

// selectionCell formats the selection share per chunk, "12/20/30/38%".
func selectionCell(s []float64) string {
	if s == nil {
		return "-"
	}
	parts := make([]string, len(s))
	for i, v := range s {
		parts[i] = fmt.Sprintf("%.0f", 100*v)
	}
	return strings.Join(parts, "/") + "%"
}

// fidelityGroups splits rows by model and workload, in order.
func fidelityGroups(rows []FidelityRow) [][]FidelityRow {
	var keys []string
	by := map[string][]FidelityRow{}
	for _, r := range rows {
		k := r.Model + "|" + r.Workload
		if _, ok := by[k]; !ok {
			keys = append(keys, k)
		}
		by[k] = append(by[k], r)
	}
	out := make([][]FidelityRow, len(keys))
	for i, k := range keys {
		out[i] = by[k]
	}
	return out
}

// FidelityTables renders rows as Markdown tables per model and workload: the
// paper's comparison, the ablations, the neighbour controls.
func FidelityTables(rows []FidelityRow, elapsed time.Duration) []Table {
	var out []Table
	for _, g := range fidelityGroups(rows) {
		r0 := g[0]
		what := fmt.Sprintf("%s, %s workload (%d prompts, %d next-token distributions)", r0.Model, r0.Workload, r0.Prompts, r0.Steps)
		main := Table{Title: "Fidelity on " + what + ": the paper's comparison",
			Header: []string{"strategy", "chunk KV", "ratio", "KL(full‖method) nats", "top-1 agree", "normalised fidelity",
				"median per-prompt fidelity", "recomputed", "FLOPs vs full", "selection by chunk 1/2/…"}}
		abl := Table{Title: "Ablations on " + what,
			Header: []string{"strategy", "chunk KV", "ratio", "KL(full‖method) nats", "normalised fidelity", "own-KV normalised (ablation)",
				"recomputed", "FLOPs vs full", "selection by chunk 1/2/…"}}
		ctl := Table{Title: "Neighbour search on " + what,
			Header: []string{"neighbours", "co-retrieved neighbours", "strategy", "ratio", "KL(full‖method) nats", "normalised fidelity", "FLOPs vs full"}}
		for _, r := range g {
			switch r.Table {
			case TableMain:
				main.Rows = append(main.Rows, []string{r.Strategy, r.kvLabel(), pct(r.Ratio), fmt.Sprintf("%.3g", r.KL), pct(r.Top1),
					f(r.NormalizedFidelity, 1), f(r.MedianPromptFidelity, 1), pct(r.Recomputed), f(r.CostRatio, 3), selectionCell(r.SelectionShare)})
			case TableAblation:
				abl.Rows = append(abl.Rows, []string{r.Strategy, r.kvLabel(), pct(r.Ratio), fmt.Sprintf("%.3g", r.KL),
					f(r.NormalizedFidelity, 1), optF(r.OwnNormalizedFidelity, 1), pct(r.Recomputed), f(r.CostRatio, 3), selectionCell(r.SelectionShare)})
			}
			if r.Variant == "fused" && !r.FirstChunkFused && (r.Table == TableControl || r.Strategy == "reuse" || r.Strategy == "fusionrag" && r.Ratio == 0.15) {
				ctl.Rows = append(ctl.Rows, []string{r.Neighbours, optPct(r.CoRetrieved), r.Strategy, pct(r.Ratio), fmt.Sprintf("%.3g", r.KL),
					f(r.NormalizedFidelity, 1), f(r.CostRatio, 3)})
			}
		}
		main.Notes = []string{"Normalised fidelity is the paper's Eq. 11 for a loss: 100 × (KL_reuse_raw − KL) / KL_reuse_raw, against plain reuse of RAW chunk KV " +
			"for every row (reuse raw = 0, full = 100). Fused = C prefilled after S and its neighbours' raw KV (package fusion); CacheBlend and EPIC run on raw KV, as in the paper. " +
			"The first chunk sits right after S: it is served from raw KV (exact) and no strategy recomputes it. " +
			"Each method's prompt KV is teacher-forced with full's greedy continuation. FLOPs vs full counts every pass a method runs (fusionrag's scoring pass of Q included).",
			fmt.Sprintf("Measured in %s (all tables of the run).", elapsed.Round(time.Millisecond))}
		abl.Notes = []string{"Selection only: fusionrag's selection on raw KV. Fusion only: fused reuse (main table). CacheBlend and EPIC on fused KV. " +
			"\"First chunk fused too\": the first chunk served from fused KV, as before issue 20 (recompute.Config.FirstChunkFused). " +
			"Own-KV normalised is against reuse of the same fused KV: a labelled ablation, not the paper's convention."}
		ctl.Notes = []string{"Co-retrieved neighbours: the share of the chunks' stored neighbours that were retrieved together with them " +
			"(the same prompt, or for coretrieval the same question's 10 passages). random: n random other chunks (control); coretrieved: the chunks retrieved together (oracle)."}
		out = append(out, main)
		if len(abl.Rows) > 0 {
			out = append(out, abl)
		}
		if len(ctl.Rows) > 0 {
			out = append(out, ctl)
		}
	}
	return out
}

// optPct formats an optional fraction as a percentage ("n/a" when absent).
func optPct(v *float64) string {
	if v == nil {
		return "n/a"
	}
	return pct(*v)
}

// FidelityPlots draws, per model and workload, the main table's normalised
// fidelity against the recompute ratio and against the FLOPs fraction (the
// cost: CacheBlend recomputes two layers of every token, fusionrag prefills Q
// twice), with reuse (raw) and fused reuse as points.
func FidelityPlots(rows []FidelityRow) []Plot {
	var plots []Plot
	for _, g := range fidelityGroups(rows) {
		label := g[0].Model + ", " + g[0].Workload
		byRatio := Plot{File: "fidelity-" + fileSafe(g[0].Model+"-"+g[0].Workload) + ".png", Title: "Normalised fidelity on " + label,
			XLabel: "recomputed context tokens (%)", YLabel: "normalised fidelity (reuse raw 0, full 100)", Kind: Lines}
		byCost := Plot{File: "fidelity-" + fileSafe(g[0].Model+"-"+g[0].Workload) + "-flops.png", Title: "Normalised fidelity against cost on " + label,
			XLabel: "FLOPs / full prefill's FLOPs", YLabel: "normalised fidelity (reuse raw 0, full 100)", Kind: Lines}
		var names []string
		ratio, cost := map[string]*Series{}, map[string]*Series{}
		for _, r := range g {
			if r.Table != TableMain || r.Strategy == "full" {
				continue
			}
			name := r.Strategy + " (" + r.kvLabel() + " KV)"
			if r.Strategy == "reuse" {
				name = map[string]string{"raw": "reuse (raw KV)", "fused": "fused reuse (" + r.Neighbours + ")"}[r.Variant]
			}
			if ratio[name] == nil {
				names = append(names, name)
				ratio[name], cost[name] = &Series{Name: name}, &Series{Name: name}
			}
			ratio[name].X, ratio[name].Y = append(ratio[name].X, r.Ratio*100), append(ratio[name].Y, r.NormalizedFidelity)
			cost[name].X, cost[name].Y = append(cost[name].X, r.CostRatio), append(cost[name].Y, r.NormalizedFidelity)
		}
		for _, n := range names {
			byRatio.Series = append(byRatio.Series, *ratio[n])
			byCost.Series = append(byCost.Series, *cost[n])
		}
		plots = append(plots, byRatio, byCost)
	}
	return plots
}

// SyntheticFidelityModel is the small synthetic Llama of the fidelity
// benchmark: 6 layers of width 128, GQA 8/4 heads of 16, rotate_half RoPE,
// 512-token vocabulary and context. Its random weights (model.Synthetic) make
// it a structural check, not a language model.
func SyntheticFidelityModel() model.Config {
	return model.Config{Arch: model.ArchLlama, Dim: 128, HiddenDim: 344, Layers: 6, Heads: 8, KVHeads: 4, HeadDim: 16,
		Vocab: 512, MaxPositions: 512, RopeTheta: 10000, NormEps: 1e-5, TiedEmbeddings: true, BOS: 1, EOS: []int32{2}}
}
