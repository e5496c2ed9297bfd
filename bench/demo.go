package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/fusionrag/fusionrag/engine"
	"github.com/fusionrag/fusionrag/fusion"
	"github.com/fusionrag/fusionrag/internal/shareddata"
	"github.com/fusionrag/fusionrag/kvstore"
	"github.com/fusionrag/fusionrag/model"
	"github.com/fusionrag/fusionrag/proxy"
	"github.com/fusionrag/fusionrag/recompute"
)

// Corpus choices for DemoConfig.Corpus.
const (
	DemoCorpusAuto      = "auto"      // NQ-open when the reference data is there, else generated
	DemoCorpusNQ        = "nq"        // NQ-open, an error when absent
	DemoCorpusGenerated = "generated" // the built-in generated corpus
)

// DemoStrategies are the strategies the demo compares by default.
var DemoStrategies = []string{"full", "reuse", "cacheblend", "fusionrag"}

// demoSystem is S, the instruction every demo prompt starts with (after BOS).
const demoSystem = "Answer the question using the documents."

// DemoConfig configures RunDemo. Zero fields get the documented defaults;
// Quick changes the defaults of the sizes to a run of a few seconds of
// compute.
type DemoConfig struct {
	// Model is a Hugging Face model directory or a llama2.c checkpoint.
	// Empty: the built-in synthetic model (see WriteDemoModel), written to
	// a temporary directory.
	Model string
	// Corpus is DemoCorpusAuto (default), DemoCorpusNQ or
	// DemoCorpusGenerated.
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
	// Default DemoStrategies.
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
	// Format is how prompts are sent: DemoFormatTokens (default) or
	// DemoFormatText.
	Format string
	// Command is recorded in the report's meta (os.Args).
	Command []string
}

// Prompt formats for DemoConfig.Format. Either way the sidecar finds the chunks
// with its index of known chunks (filled by the ingest) on the ids the
// engine runs.
const (
	// DemoFormatTokens sends the prompt as token ids: S, then each chunk's
	// ingested ids, then the question's, exactly.
	DemoFormatTokens = "tokens"
	// DemoFormatText sends the prompt as text, as most clients do; the engine
	// encodes it whole, and chunks are found when their ids in context are
	// their ingested ids (the default template starts with a blank line so
	// that they are, for tokenizers that do not merge across newlines).
	DemoFormatText = "text"
)

// errDemoConfig is wrapped by every configuration error of the demo.
var errDemoConfig = errors.New("demo: invalid config")

// fill fills the demo's defaults in place and validates.
func (c *DemoConfig) fill() error {
	bad := func(f string, a ...any) error { return fmt.Errorf("%w: %s", errDemoConfig, fmt.Sprintf(f, a...)) }
	if c.Corpus == "" {
		c.Corpus = DemoCorpusAuto
	}
	if c.Format == "" {
		c.Format = DemoFormatTokens
	}
	if c.Format != DemoFormatTokens && c.Format != DemoFormatText {
		return bad("format %q: want tokens or text", c.Format)
	}
	if !slices.Contains([]string{DemoCorpusAuto, DemoCorpusNQ, DemoCorpusGenerated}, c.Corpus) {
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
		c.Strategies = DemoStrategies
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
	known := recompute.Strategies()
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
func (c *DemoConfig) stage(format string, a ...any) {
	if c.Log != nil {
		clear := ""
		if IsTerminal(c.Log) {
			clear = "\r\x1b[K" // over the progress bar's line; the bar redraws below
		}
		fmt.Fprintf(c.Log, clear+"demo: "+format+"\n", a...)
	}
}

// RunDemo runs the demo, `fusionrag demo`: fusionrag end to end in one
// process, with no service to install. It starts the built-in synthetic
// model (or any model directory), a memory KV store, this project's engine
// and the sidecar in front of it on loopback ports; ingests a small corpus
// offline (raw and fused chunk KV, package fusion); then sends RAG queries
// over real HTTP through the sidecar, once per strategy (headers
// X-Fusionrag-Strategy and X-Fusionrag-Ratio), and reports time to first
// token, speedup over full prefill, store hit rate, recomputed share and
// fidelity to full prefill (DemoReport: a table, JSON and a PNG chart).
// Like the other harnesses of this package it measures the product through
// the product packages and has no product code path of its own; the command
// is a few lines over it. Cancel ctx to stop it.
func RunDemo(ctx context.Context, cfg DemoConfig) (*DemoReport, error) {
	start := time.Now()
	if err := cfg.fill(); err != nil {
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
		cfg.stage("writing the built-in synthetic model (%s parameters) to %s", humanCount(demoModelConfig().Params()), modelPath)
		if err := WriteDemoModel(modelPath); err != nil {
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
	prefix := fusion.EncodePrefix(m.Tokenizer, demoSystem)
	ch, err := fusion.NewChunker(fusion.Chunker{Tokenizer: m.Tokenizer, Template: tmpl, Size: cfg.ChunkTokens,
		MaxTokens: m.Config.MaxPositions - len(prefix)})
	if err != nil {
		return nil, err
	}
	corpus, err := loadDemoCorpus(&cfg, ch)
	if err != nil {
		return nil, err
	}
	prompts := make([]demoPrompt, len(corpus.Queries))
	for i, q := range corpus.Queries {
		prompts[i] = corpus.prompt(m.Tokenizer, tmpl, demoSystem, q)
		if n := len(prompts[i].Tokens()) + cfg.MaxTokens; n > m.Config.MaxPositions {
			return nil, fmt.Errorf("%w: query %s needs %d positions, the model has %d (fewer or shorter chunks)",
				errDemoConfig, q.ID, n, m.Config.MaxPositions)
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
	bar := NewProgress(demoProgressWriter(cfg.Progress), "fusionrag demo", total, false)
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
	st, rec, err := startDemoStack(m, &cfg, store)
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

	results, direct, err := demoMeasure(ctx, &cfg, st, rec, corpus, prompts, engine.DefaultModelName, bar)
	if err != nil {
		return nil, err
	}

	// Fidelity of the first token, in process over the same store.
	cfg.stage("first-token fidelity in process (%d queries)", len(prompts))
	fid, err := newDemoFidelity(m, store, in.Namespace())
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

	r := &DemoReport{Meta: NewMeta(cfg.Command, modelName, cfg.Quick), ModelParams: m.Config.Params(),
		Corpus: corpus.Source, Chunks: len(corpus.Chunks), Queries: len(prompts), Ingest: summary, Results: results}
	for _, p := range prompts {
		r.PromptTokens += float64(len(p.Tokens())) / float64(len(prompts))
		r.ContextTokens += float64(len(p.Tokens())-len(p.Prefix)-len(p.Question)) / float64(len(prompts))
	}
	r.Rows = aggregateDemo(cfg.Strategies, cfg.Ratio, results)
	r.Notes = demoNotes(&cfg, r, direct)
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

func loadDemoCorpus(cfg *DemoConfig, ch *fusion.Chunker) (*demoCorpus, error) {
	dir := cfg.DataDir
	if dir == "" {
		dir, _ = shareddata.Dir()
	}
	haveNQ := false
	if dir != "" {
		if _, err := os.Stat(filepath.Join(dir, demoNQFile)); err == nil {
			haveNQ = true
		}
	}
	switch {
	case cfg.Corpus == DemoCorpusNQ && !haveNQ:
		return nil, fmt.Errorf("%w: NQ-open not found at %q (set %s)", errDemoCorpus, filepath.Join(dir, demoNQFile), shareddata.EnvVar)
	case cfg.Corpus == DemoCorpusGenerated || !haveNQ:
		if cfg.Corpus == DemoCorpusAuto {
			cfg.stage("reference data not found (set %s): using the generated corpus", shareddata.EnvVar)
		}
		return generatedDemoCorpus(ch, cfg.Queries, cfg.ChunksPerQuery, cfg.Pool, cfg.Seed)
	}
	return nqDemoCorpus(dir, ch, cfg.Queries, cfg.ChunksPerQuery, cfg.Pool, cfg.Seed)
}

// demoProgressWriter is w when it is a terminal (the bar redraws in place),
// else nil: logs get the stage lines instead.
func demoProgressWriter(w io.Writer) io.Writer {
	if w == nil || !IsTerminal(w) {
		return io.Discard
	}
	return w
}
