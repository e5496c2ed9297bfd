// Package demo runs fusionrag end to end in one process, with no service to
// install: the built-in synthetic model (or any model directory), a memory
// KV store, this project's engine and the sidecar in front of it on loopback
// ports. It ingests a small corpus offline (raw and fused chunk KV, package
// fusion), then sends RAG queries over real HTTP through the sidecar, once
// per strategy (headers X-Fusionrag-Strategy and X-Fusionrag-Ratio), and
// reports time to first token, speedup over full prefill, store hit rate,
// recomputed share and fidelity to full prefill, as a table, JSON and a PNG
// chart. `fusionrag demo` is a few lines over Run.
//
// The demo is a harness, like package bench (whose report, plot and
// progress helpers it uses): no product package imports it.
package demo

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/fusionrag/fusionrag/adapters"
	"github.com/fusionrag/fusionrag/adapters/native"
	"github.com/fusionrag/fusionrag/bench"
	"github.com/fusionrag/fusionrag/engine"
	"github.com/fusionrag/fusionrag/fusion"
	"github.com/fusionrag/fusionrag/internal/shareddata"
	"github.com/fusionrag/fusionrag/kvstore"
	"github.com/fusionrag/fusionrag/model"
	"github.com/fusionrag/fusionrag/proxy"
)

// Corpus choices for Config.Corpus.
const (
	CorpusAuto      = "auto"      // NQ-open when the reference data is there, else generated
	CorpusNQ        = "nq"        // NQ-open, an error when absent
	CorpusGenerated = "generated" // the built-in generated corpus
)

// DefaultStrategies are the strategies the demo compares.
var DefaultStrategies = []string{"full", "reuse", "cacheblend", "fusionrag"}

// System is S, the instruction every demo prompt starts with (after BOS).
const System = "Answer the question using the documents."

// Config configures Run. Zero fields get the documented defaults (see
// Normalize); Quick changes the defaults of the sizes to a run of a few
// seconds of compute.
type Config struct {
	// Model is a Hugging Face model directory or a llama2.c checkpoint.
	// Empty: the built-in synthetic model (ModelConfig), written to a
	// temporary directory.
	Model string
	// Corpus is CorpusAuto (default), CorpusNQ or CorpusGenerated.
	Corpus string
	// DataDir is the reference data directory (rag/nq-open-oracle.jsonl.gz).
	// Empty: shareddata.Dir() ($FUSIONRAG_DATA, else ../shared/data).
	DataDir string
	// Quick selects smaller defaults: 4 queries of 6 chunks of 128 tokens
	// (about 1K tokens of context) instead of 6 of 10 × 160 (about 2K).
	Quick bool
	// Queries is the number of RAG queries; each is sent once per strategy.
	Queries int
	// ChunksPerQuery is k, the chunks retrieved for a query.
	ChunksPerQuery int
	// ChunkTokens is the document tokens per chunk (the template's come on
	// top).
	ChunkTokens int
	// Pool is the number of passages the chunks are drawn from (the gold
	// passages of that many questions). Default 3 × Queries.
	Pool int
	// Strategies compared; "full" is always measured (it is the reference).
	// Default DefaultStrategies.
	Strategies []string
	// Ratio is the recompute ratio of cacheblend, epic and fusionrag, in
	// (0, 1]. Default 0.15, the paper's.
	Ratio float64
	// Neighbours is the fusion parameter n of the offline stage. Default
	// fusion.DefaultNeighbours (10).
	Neighbours int
	// MaxTokens is the length of each greedy answer. Default 8 (Quick: 4).
	MaxTokens int
	// Seed draws the corpus and the queries. Default 1.
	Seed uint64
	// Progress receives a progress bar when it is a terminal; Log receives
	// one line per stage. Nil: nothing.
	Progress io.Writer
	Log      io.Writer
	// Format is how prompts are sent: FormatTokens (default) or FormatText.
	Format string
	// Command is recorded in the report's meta (os.Args).
	Command []string
}

// Prompt formats for Config.Format. Either way the sidecar finds the chunks
// with its index of known chunks (filled by the ingest) on the ids the
// engine runs.
const (
	// FormatTokens sends the prompt as token ids: S, then each chunk's
	// ingested ids, then the question's, exactly.
	FormatTokens = "tokens"
	// FormatText sends the prompt as text, as most clients do; the engine
	// encodes it whole, and chunks are found when their ids in context are
	// their ingested ids (the default template starts with a blank line so
	// that they are, for tokenizers that do not merge across newlines).
	FormatText = "text"
)

// ErrConfig is wrapped by every configuration error.
var ErrConfig = errors.New("demo: invalid config")

// Normalize fills defaults in place and validates.
func (c *Config) Normalize() error {
	bad := func(f string, a ...any) error { return fmt.Errorf("%w: %s", ErrConfig, fmt.Sprintf(f, a...)) }
	if c.Corpus == "" {
		c.Corpus = CorpusAuto
	}
	if c.Format == "" {
		c.Format = FormatTokens
	}
	if c.Format != FormatTokens && c.Format != FormatText {
		return bad("format %q: want tokens or text", c.Format)
	}
	if !slices.Contains([]string{CorpusAuto, CorpusNQ, CorpusGenerated}, c.Corpus) {
		return bad("corpus %q: want auto, nq or generated", c.Corpus)
	}
	def := func(p *int, normal, quick int) {
		if *p == 0 {
			*p = normal
			if c.Quick {
				*p = quick
			}
		}
	}
	def(&c.Queries, 6, 4)
	def(&c.ChunksPerQuery, 10, 6)
	def(&c.ChunkTokens, 160, 128)
	def(&c.MaxTokens, 8, 4)
	def(&c.Pool, 3*c.Queries, 3*c.Queries)
	if c.Neighbours == 0 {
		c.Neighbours = fusion.DefaultNeighbours
	}
	if c.Ratio == 0 {
		c.Ratio = 0.15
	}
	if c.Seed == 0 {
		c.Seed = 1
	}
	if len(c.Strategies) == 0 {
		c.Strategies = DefaultStrategies
	}
	switch {
	case c.Queries < 1 || c.Queries > 1000:
		return bad("queries %d not in [1, 1000]", c.Queries)
	case c.ChunksPerQuery < 1 || c.ChunksPerQuery > 64:
		return bad("chunks per query %d not in [1, 64]", c.ChunksPerQuery)
	case c.ChunkTokens < 8:
		return bad("chunk tokens %d below 8", c.ChunkTokens)
	case c.Pool < c.Queries:
		return bad("pool %d smaller than the %d queries", c.Pool, c.Queries)
	case c.MaxTokens < 1 || c.MaxTokens > 256:
		return bad("max tokens %d not in [1, 256]", c.MaxTokens)
	case c.Neighbours < 0:
		return bad("neighbours %d below 0", c.Neighbours)
	case !(c.Ratio > 0 && c.Ratio <= 1):
		return bad("ratio %v not in (0, 1]", c.Ratio)
	}
	known := proxy.Strategies
	strategies := []string{"full"}
	for _, s := range c.Strategies {
		s = strings.TrimSpace(s)
		if !slices.Contains(known, s) {
			return bad("strategy %q: want one of %s", s, strings.Join(known, ", "))
		}
		if !slices.Contains(strategies, s) {
			strategies = append(strategies, s)
		}
	}
	c.Strategies = strategies
	return nil
}

// stage reports a stage on the log writer.
func (c *Config) stage(format string, a ...any) {
	if c.Log != nil {
		clear := ""
		if bench.IsTerminal(c.Log) {
			clear = "\r\x1b[K" // over the progress bar's line; the bar redraws below
		}
		fmt.Fprintf(c.Log, clear+"demo: "+format+"\n", a...)
	}
}

// Run runs the demo and returns its report; cancel ctx to stop it.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	start := time.Now()
	if err := cfg.Normalize(); err != nil {
		return nil, err
	}

	// The model: the built-in one is written to disk first, so the sidecar
	// and the engine load it the way `fusionrag serve/engine --model DIR`
	// would.
	modelPath := cfg.Model
	if modelPath == "" {
		dir, err := os.MkdirTemp("", "fusionrag-demo-")
		if err != nil {
			return nil, fmt.Errorf("demo: %w", err)
		}
		defer os.RemoveAll(dir)
		modelPath = filepath.Join(dir, "model")
		cfg.stage("writing the built-in synthetic model (%s parameters) to %s", humanCount(ModelConfig().Params()), modelPath)
		if err := WriteModel(modelPath); err != nil {
			return nil, err
		}
	}
	m, err := model.Load(modelPath, model.LoadOptions{})
	if err != nil {
		return nil, err
	}
	defer m.Close()
	if m.Tokenizer == nil {
		return nil, fmt.Errorf("demo: model %s has no tokenizer beside it", modelPath)
	}
	modelName := filepath.Base(filepath.Clean(modelPath))
	if cfg.Model == "" {
		modelName = "synthetic-llama-4M"
	}

	// The corpus and the queries.
	tmpl := fusion.DefaultTemplate
	prefix := fusion.EncodePrefix(m.Tokenizer, System)
	ch, err := fusion.NewChunker(fusion.Chunker{Tokenizer: m.Tokenizer, Template: tmpl, Size: cfg.ChunkTokens,
		MaxTokens: m.Config.MaxPositions - len(prefix)})
	if err != nil {
		return nil, err
	}
	corpus, err := loadCorpus(&cfg, ch)
	if err != nil {
		return nil, err
	}
	prompts := make([]Prompt, len(corpus.Queries))
	for i, q := range corpus.Queries {
		prompts[i] = corpus.prompt(m.Tokenizer, tmpl, System, q)
		if n := len(prompts[i].Tokens()) + cfg.MaxTokens; n > m.Config.MaxPositions {
			return nil, fmt.Errorf("%w: query %s needs %d positions, the model has %d (fewer or shorter chunks)",
				ErrConfig, q.ID, n, m.Config.MaxPositions)
		}
	}

	// Offline: raw and fused KV of every chunk into the memory store, for
	// the tenant the sidecar derives for our requests (no tenant header, no
	// API key).
	store, err := kvstore.Open("mem://?max=4GiB")
	if err != nil {
		return nil, err
	}
	defer store.Close()
	tenant, _ := proxy.TenantOf("", "")
	total := 2*len(corpus.Chunks) + len(prompts)*(len(cfg.Strategies)+1) + len(prompts)
	bar := bench.NewProgress(progressWriter(cfg.Progress), "fusionrag demo", total, false)
	defer bar.Done()
	cfg.stage("ingesting %d chunks (%s): raw and fused KV, %d neighbours each", len(corpus.Chunks), corpus.Source, cfg.Neighbours)
	var progMu sync.Mutex
	lastDone := map[string]int{}
	in, err := fusion.NewIngester(ctx, fusion.Config{Model: m, Store: store, Tenant: tenant, Prefix: prefix,
		Neighbours: cfg.Neighbours, Logf: func(string, ...any) {},
		OnProgress: func(p fusion.Progress) {
			if p.Phase != "raw" && p.Phase != "fused" {
				return
			}
			progMu.Lock()
			d := p.Done - lastDone[p.Phase]
			if d > 0 {
				lastDone[p.Phase] = p.Done
			}
			progMu.Unlock()
			if d > 0 {
				bar.Add(d)
			}
		}})
	if err != nil {
		return nil, err
	}
	summary, err := in.Run(ctx, corpus.Chunks)
	if err != nil {
		return nil, fmt.Errorf("demo: ingest: %w", err)
	}
	if summary.Failed > 0 {
		return nil, fmt.Errorf("demo: ingest: %d chunks failed: %s", summary.Failed, strings.Join(summary.Errors, "; "))
	}

	// Online: the engine and the sidecar on loopback ports.
	st, rec, err := startStack(m, &cfg, store)
	if err != nil {
		return nil, err
	}
	defer st.close()
	// Our prompts are token ids: the sidecar finds the chunks in them with
	// its index of known chunks, which an ingest fills.
	for _, c := range corpus.Chunks {
		st.fuser.Index().Add(c.Tokens)
	}
	cfg.stage("engine on %s, sidecar on %s", st.engineURL, st.sidecarURL)

	results, direct, err := measure(ctx, &cfg, st, rec, corpus, prompts, engine.DefaultModelName, bar)
	if err != nil {
		return nil, err
	}

	// Fidelity of the first token, in process over the same store.
	cfg.stage("first-token fidelity in process (%d queries)", len(prompts))
	fid, err := newFidelity(m, store, in.Namespace())
	if err != nil {
		return nil, err
	}
	for qi, p := range prompts {
		ft, err := fid.measure(ctx, p, cfg.Strategies, cfg.Ratio)
		if err != nil {
			return nil, err
		}
		for i := range results {
			if results[i].Query == corpus.Queries[qi].ID {
				f := ft[results[i].Strategy]
				results[i].KL, results[i].Top1, results[i].LogitErr, results[i].Fidelity = f.KL, f.Top1, f.LogitErr, f.Normalized
			}
		}
		bar.Add(1)
	}
	bar.Done()

	r := &Report{Meta: bench.NewMeta(cfg.Command, modelName, cfg.Quick), ModelParams: m.Config.Params(),
		Corpus: corpus.Source, Chunks: len(corpus.Chunks), Queries: len(prompts), Ingest: summary, Results: results}
	for _, p := range prompts {
		r.PromptTokens += float64(len(p.Tokens())) / float64(len(prompts))
		r.ContextTokens += float64(len(p.Tokens())-len(p.Prefix)-len(p.Question)) / float64(len(prompts))
	}
	r.Rows = aggregate(cfg.Strategies, cfg.Ratio, results)
	r.Notes = notes(&cfg, r, direct)
	// The engine's ids must be the demo's (they are by construction for
	// token prompts; for text prompts they are what the comparison assumes).
	byID := map[string]int{}
	for i, q := range corpus.Queries {
		byID[q.ID] = len(prompts[i].Tokens())
	}
	for _, q := range results {
		if q.PromptTokens != byID[q.Query] {
			r.Notes = append(r.Notes, fmt.Sprintf("WARNING: query %s: the engine ran %d prompt tokens, the demo built %d: "+
				"the in-process fidelity does not describe what the engine ran.", q.Query, q.PromptTokens, byID[q.Query]))
			break
		}
	}
	r.Elapsed = time.Since(start)
	return r, nil
}

func loadCorpus(cfg *Config, ch *fusion.Chunker) (*Corpus, error) {
	dir := cfg.DataDir
	if dir == "" {
		dir, _ = shareddata.Dir()
	}
	haveNQ := false
	if dir != "" {
		if _, err := os.Stat(filepath.Join(dir, NQFile)); err == nil {
			haveNQ = true
		}
	}
	switch {
	case cfg.Corpus == CorpusNQ && !haveNQ:
		return nil, fmt.Errorf("%w: NQ-open not found at %q (set %s)", ErrCorpus, filepath.Join(dir, NQFile), shareddata.EnvVar)
	case cfg.Corpus == CorpusGenerated || !haveNQ:
		if cfg.Corpus == CorpusAuto {
			cfg.stage("reference data not found (set %s): using the generated corpus", shareddata.EnvVar)
		}
		return generatedCorpus(ch, cfg.Queries, cfg.ChunksPerQuery, cfg.Pool, cfg.Seed)
	}
	return nqCorpus(dir, ch, cfg.Queries, cfg.ChunksPerQuery, cfg.Pool, cfg.Seed)
}

// progressWriter is w when it is a terminal (the bar redraws in place),
// else nil: logs get the stage lines instead.
func progressWriter(w io.Writer) io.Writer {
	if w == nil || !bench.IsTerminal(w) {
		return io.Discard
	}
	return w
}

// stack is the engine and the sidecar with its fusion path, in process on
// loopback ports.
type stack struct {
	engineURL, sidecarURL string
	fuser                 *proxy.RAGFuser
	closers               []func()
}

func (s *stack) close() {
	for i := len(s.closers) - 1; i >= 0; i-- {
		s.closers[i]()
	}
	s.closers = nil
}

// startStack serves m with the engine and puts the sidecar in front of it,
// with the real fusion path (proxy.RAGFuser) over store, publishing KV to
// the engine with the native adapter (HTTP push, PUT /v1/kv/{key}). rec
// records what the fusion path did for each request.
func startStack(m *model.Model, cfg *Config, store kvstore.Store) (_ *stack, _ *recorder, err error) {
	s := &stack{}
	defer func() {
		if err != nil {
			s.close()
		}
	}()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))

	eln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, nil, fmt.Errorf("demo: %w", err)
	}
	ecfg := engine.Config{Listen: eln.Addr().String(), MaxBatch: 4, PushStoreURL: "mem://?max=2GiB"}
	eng, err := engine.NewFromModel(ecfg, m)
	if err != nil {
		eln.Close()
		return nil, nil, err
	}
	go eng.Serve(eln)
	s.closers = append(s.closers, func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if eng.Shutdown(ctx) != nil {
			eng.Close()
		}
	})
	s.engineURL = "http://" + eln.Addr().String()

	pln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, nil, fmt.Errorf("demo: %w", err)
	}
	pcfg := proxy.DefaultConfig()
	pcfg.Listen, pcfg.Upstream = pln.Addr().String(), s.engineURL
	pcfg.Fusion.Strategy = "fusionrag"
	pcfg.Fusion.Ratio = cfg.Ratio
	pcfg.Fusion.Neighbours = cfg.Neighbours
	// Every chunk is ingested: a miss means something is wrong, and the
	// request should say so rather than compute it on the spot.
	pcfg.Fusion.MaxMissingFraction = 0
	pcfg.Timeouts.Fusion = 2 * time.Minute
	f, err := proxy.NewRAGFuser(proxy.FuserConfig{Proxy: pcfg, Model: m, Store: store, Logger: quiet,
		OpenEngine: func(ctx context.Context) (adapters.Engine, error) {
			return native.Open(adapters.Config{URL: s.engineURL, Transport: adapters.TransportPush,
				ModelFingerprint: m.Fingerprint(), TokenizerFingerprint: m.Tokenizer.Fingerprint(), Timeout: pcfg.Timeouts.Fusion})
		}})
	if err != nil {
		pln.Close()
		return nil, nil, err
	}
	s.fuser = f
	s.closers = append(s.closers, func() { f.Close() })
	rec := &recorder{inner: f, byUser: map[string]outcome{}}
	// No telemetry export, whatever the environment says.
	tel, err := proxy.NewTelemetry(context.Background(), nil)
	if err != nil {
		pln.Close()
		return nil, nil, err
	}
	px, err := proxy.New(pcfg, proxy.WithFuser(rec), proxy.WithTelemetry(tel), proxy.WithLogger(quiet))
	if err != nil {
		pln.Close()
		tel.Shutdown(context.Background())
		return nil, nil, err
	}
	go px.Serve(pln)
	s.closers = append(s.closers, func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		px.Shutdown(ctx)
		tel.Shutdown(ctx)
	})
	s.sidecarURL = "http://" + pln.Addr().String()
	return s, rec, nil
}

// outcome is what the fusion path did for one request.
type outcome struct {
	stats proxy.Stats
	err   error
}

// recorder wraps the fusion path to keep, per request ("user" field of the
// body, unique per request in the demo), the stats it reported or its error.
// It changes nothing in what the sidecar does.
type recorder struct {
	inner  proxy.Fuser
	mu     sync.Mutex
	byUser map[string]outcome
}

// Fuse implements proxy.Fuser.
func (r *recorder) Fuse(ctx context.Context, req *proxy.Request) (*proxy.Plan, error) {
	plan, err := r.inner.Fuse(ctx, req)
	var body struct {
		User string `json:"user"`
	}
	if json.Unmarshal(req.Body, &body) == nil && body.User != "" {
		o := outcome{err: err}
		if err == nil && plan != nil {
			o.stats = plan.Stats
		}
		r.mu.Lock()
		r.byUser[body.User] = o
		r.mu.Unlock()
	}
	return plan, err
}

func (r *recorder) take(user string) (outcome, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	o, ok := r.byUser[user]
	delete(r.byUser, user)
	return o, ok
}

// measure sends every query once per strategy through the sidecar (and once
// straight to the engine, as a reference), rotating the order of the
// strategies from one query to the next so that none always runs first.
func measure(ctx context.Context, cfg *Config, st *stack, rec *recorder, corpus *Corpus, prompts []Prompt,
	modelName string, bar *bench.Progress) ([]QueryResult, []time.Duration, error) {
	client := &http.Client{Timeout: 5 * time.Minute}
	defer client.CloseIdleConnections()
	sidecar, direct := st.sidecarURL, st.engineURL

	// Warm-up: opens the adapter and the connections, not measured.
	if len(prompts) > 0 {
		body, err := requestBody(modelName, "warm-up", payload(cfg, prompts[0]), 1)
		if err != nil {
			return nil, nil, err
		}
		if _, err := complete(ctx, client, sidecar, body, "reuse", cfg.Ratio); err != nil {
			return nil, nil, fmt.Errorf("demo: warm-up request: %w", err)
		}
		rec.take("warm-up")
	}

	cfg.stage("sending %d queries × %d strategies through the sidecar", len(prompts), len(cfg.Strategies))
	var out []QueryResult
	var directTTFT []time.Duration
	for qi, p := range prompts {
		q := corpus.Queries[qi]
		ids := p.Tokens()
		context := len(ids) - len(p.Prefix) - len(p.Question)
		order := slices.Clone(cfg.Strategies)
		order = append(order, "direct")
		k := qi % len(order)
		order = append(order[k:], order[:k]...)
		for _, s := range order {
			user := q.ID + "/" + s
			body, err := requestBody(modelName, user, payload(cfg, p), cfg.MaxTokens)
			if err != nil {
				return nil, nil, err
			}
			if s == "direct" {
				c, err := complete(ctx, client, direct, body, "", 0)
				if err != nil {
					return nil, nil, fmt.Errorf("demo: query %s straight to the engine: %w", q.ID, err)
				}
				directTTFT = append(directTTFT, c.TTFT)
				bar.Add(1)
				continue
			}
			c, err := complete(ctx, client, sidecar, body, s, cfg.Ratio)
			if err != nil {
				return nil, nil, fmt.Errorf("demo: query %s, strategy %s: %w", q.ID, s, err)
			}
			o, ok := rec.take(user)
			qr := QueryResult{Query: q.ID, Strategy: s, TTFTMs: ms(c.TTFT), PromptTokens: c.PromptTokens,
				ContextTokens: context, CachedTokens: c.CachedTokens, Answer: c.Text}
			switch {
			case !ok:
				qr.Path = proxy.PathPassthrough
			case o.err != nil:
				qr.Path = proxy.PathFallback + ": " + o.err.Error()
			case c.CachedTokens == 0:
				qr.Path = proxy.PathFallback + ": the engine loaded no published KV"
			default:
				qr.Path = proxy.PathFusion
				qr.Hits, qr.Misses, qr.Recomputed = o.stats.Hits, o.stats.Misses, o.stats.RecomputedTokens
			}
			if s == "full" && qr.Path == proxy.PathFusion {
				qr.Recomputed = context
			}
			out = append(out, qr)
			bar.Add(1)
		}
	}
	return out, directTTFT, nil
}

// payload is the "prompt" member of p's requests.
func payload(cfg *Config, p Prompt) any {
	if cfg.Format == FormatText {
		return p.Text
	}
	return p.Tokens()
}

// aggregate turns results into one row per strategy.
func aggregate(strategies []string, ratio float64, results []QueryResult) []Row {
	answers := map[string]string{} // query -> full's answer
	for _, r := range results {
		if r.Strategy == "full" {
			answers[r.Query] = r.Answer
		}
	}
	var rows []Row
	for _, s := range strategies {
		row := Row{Strategy: s, Ratio: ratio}
		var ttft, fid []float64
		hits, lookups := 0, 0
		reasons := map[string]bool{}
		for _, r := range results {
			if r.Strategy != s {
				continue
			}
			row.Requests++
			ttft = append(ttft, r.TTFTMs)
			if r.Path == proxy.PathFusion {
				row.Fused++
				hits += r.Hits
				lookups += r.Hits + r.Misses
				if r.ContextTokens > 0 {
					row.Recomputed += float64(r.Recomputed) / float64(r.ContextTokens)
				}
			} else {
				reasons[r.Path] = true
			}
			if r.PromptTokens > 0 {
				row.CachedShare += float64(r.CachedTokens) / float64(r.PromptTokens)
			}
			if r.Top1 {
				row.Top1++
			}
			row.KL += r.KL
			row.LogitErr += r.LogitErr
			fid = append(fid, r.Fidelity)
			if a, ok := answers[r.Query]; ok && a == r.Answer {
				row.SameAnswer++
			}
		}
		if row.Requests > 0 {
			n := float64(row.Requests)
			row.CachedShare /= n
			row.Top1 /= n
			row.KL /= n
			row.LogitErr /= n
			row.Fidelity = median(fid)
			row.SameAnswer /= n
			row.TTFTMedianMs = median(ttft)
			row.TTFTMeanMs = mean(ttft)
		}
		if row.Fused > 0 {
			row.Recomputed /= float64(row.Fused)
		}
		if lookups > 0 {
			row.HitRate = float64(hits) / float64(lookups)
		}
		for r := range reasons {
			row.FallbackReasons = append(row.FallbackReasons, r)
		}
		sort.Strings(row.FallbackReasons)
		rows = append(rows, row)
	}
	if len(rows) > 0 && rows[0].Strategy == "full" {
		for i := range rows {
			if rows[i].TTFTMedianMs > 0 {
				rows[i].Speedup = rows[0].TTFTMedianMs / rows[i].TTFTMedianMs
			}
		}
	}
	return rows
}

func notes(cfg *Config, r *Report, direct []time.Duration) []string {
	var ds []float64
	for _, d := range direct {
		ds = append(ds, ms(d))
	}
	n := []string{
		fmt.Sprintf("TTFT: wall time from sending a streamed /v1/completions request to the sidecar to its first token, median over %d queries; "+
			"the sidecar's fusion path (look up chunk KV, recompute, publish the prompt's KV to the engine) is inside it. "+
			"Speedup = full's median / the strategy's, measured in this run. For reference, the engine alone (no sidecar, plain prefill): %.1f ms median.",
			r.Queries, median(ds)),
		"full: the sidecar prefills the whole prompt and publishes it; reuse: stored chunk KV as is (0% recomputed); " +
			fmt.Sprintf("cacheblend and fusionrag recompute %.0f%% of the context tokens (fused chunk KV from the offline stage).", 100*cfg.Ratio),
		"hit rate: chunks found in the store by the fusion path; recomputed: context tokens recomputed through all layers; " +
			"engine cached: prompt tokens the engine loaded from published KV (usage.prompt_tokens_details.cached_tokens).",
		"logit err, fidelity, top-1 = full: the last prompt position's logits compared with full prefill's, measured in process with package recompute " +
			"over the same store and chunk KV (the engine returns no logprobs): relative L2 error, the normalised score 100 × (1 − err / reuse's err) " +
			"(median over queries; reuse 0, full 100), and agreement of the argmax (KL of the distributions in demo.json). " +
			"same answer: the greedy completion through the sidecar equals full's.",
		fmt.Sprintf("Offline stage: %d chunks, raw and fused KV (%d neighbours, BM25) in %s.", r.Ingest.Chunks, cfg.Neighbours,
			r.Ingest.Total.Round(100*time.Millisecond)),
	}
	if cfg.Model == "" {
		n = append(n, "The built-in model has random weights: its answers mean nothing and its next-token distributions are nearly one-hot "+
			"(so top-1, KL and same answer saturate); the logit error and the normalised fidelity are what tell the strategies apart.")
	}
	for _, row := range r.Rows {
		if row.Fused < row.Requests {
			n = append(n, fmt.Sprintf("WARNING: %s: %d of %d requests did not take the fusion path (%s); their TTFT is the engine's own prefill.",
				row.Strategy, row.Requests-row.Fused, row.Requests, strings.Join(row.FallbackReasons, "; ")))
		}
	}
	return n
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func median(x []float64) float64 {
	if len(x) == 0 {
		return 0 // JSON has no NaN
	}
	s := slices.Clone(x)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func mean(x []float64) float64 {
	if len(x) == 0 {
		return 0
	}
	t := 0.0
	for _, v := range x {
		t += v
	}
	return t / float64(len(x))
}
