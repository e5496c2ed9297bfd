// Package rag is the fusion path of the sidecar: it finds S, the chunks and
// Q in a request, looks their KV up, recomputes and publishes through the
// engine adapter. Its Fuser implements proxy.Fuser, the interface the proxy
// owns and consumes; the proxy itself imports neither this package nor the
// model, the store or the recompute strategies it uses (package sidecar
// wires them together).
//
// Files: fuser.go (Fuse: lookup, recompute, publish, the background warm-up
// and the adapter's lifetime), segment.go (S, chunks and Q on the engine's
// ids: content parts, markers, known chunks, passages), chunkindex.go (the
// per-tenant index of known chunks) and budget.go (the memory bound of
// runs in flight).
package rag

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/fusionrag/fusionrag/adapters"
	"github.com/fusionrag/fusionrag/chunkkv"
	"github.com/fusionrag/fusionrag/fingerprint"
	"github.com/fusionrag/fusionrag/kvstore"
	"github.com/fusionrag/fusionrag/model"
	"github.com/fusionrag/fusionrag/model/tokenizer"
	"github.com/fusionrag/fusionrag/prompt"
	"github.com/fusionrag/fusionrag/proxy"
	"github.com/fusionrag/fusionrag/recompute"
)

// Fuser is the fusion path: it segments a request on the token ids the
// engine will run (same tokenizer, same chat template, same prompt -> ids
// function, package prompt), looks the chunks' KV up in the store
// (computing and storing the missing ones), recomputes with the request's
// strategy and ratio (package recompute), publishes the KV of the whole
// prompt but its last token through the engine adapter, and returns the
// adapter's lease, which points the forwarded request at it.
//
// Segment conventions, tried in this order:
//
//	(a) chat content parts: when the last user message has two text parts or
//	    more, each part but the last is a chunk and the last is Q; S is
//	    everything before the first chunk (system message, earlier turns).
//	    Each chunk owns the template's glue in front of it (see
//	    fingerprint.PartCuts), so with the plain template a part
//	    "Document: t\n..." is the chunk "\n\nDocument: t\n..." that the
//	    offline ingest stores (fusion.DefaultTemplate).
//	(b) Fusion.Separator or Fusion.MarkerOpen/MarkerClose in a completions
//	    text prompt or in the last user message's string content, stripped
//	    from what the engine sees unless Fusion.KeepMarkers.
//	(c) chunks met before (and stored) recognised inside an unmarked prompt
//	    with a fingerprint.ChunkIndex.
//
// Markers are found in the text and mapped onto tokens through the
// tokenizer's byte offsets, so a marker that tokenizes differently in
// context is never silently missed; a chunk whose cut falls inside a token
// keeps exactly the ids it has in the prompt. Every KV is looked up and
// stored under the exact ids of its span, in a namespace that includes the
// model, the tokenizer and the tenant: the worst a surprising tokenization
// can cause is a miss, never a wrong or foreign KV.
type Fuser struct {
	cfg     proxy.Config
	m       *model.Model
	tok     tokenizer.Tokenizer
	chat    *tokenizer.ChatTemplate
	source  recompute.KVSource
	modelFP fingerprint.Key
	tokFP   fingerprint.Key
	log     *slog.Logger
	index   fingerprint.ChunkIndex // explicitly indexed chunks, known to every tenant
	// maxPromptBytes bounds the bytes of prompt text that can fit in the
	// context (see promptByteBound): longer prompts are skipped before
	// they are tokenized.
	maxPromptBytes int
	// budget bounds the bytes in flight of concurrent runs (budget.go).
	budget *Budget

	// seen holds, per tenant, the chunks met in that tenant's requests
	// (convention c): one tenant's prompts never reveal what another sent.
	seen knownChunks

	engMu    sync.Mutex
	eng      *liveEngine
	openEng  func(ctx context.Context) (adapters.Engine, error)
	lastOpen time.Time
	openErr  error

	warming chan struct{} // one background warm-up at a time
}

// Config configures New.
type Config struct {
	// Proxy is the validated proxy configuration: Fusion (strategy, ratio,
	// missing fraction, separators) and Limits.MaxChunks are used.
	Proxy proxy.Config
	// Model computes KV; it must have a tokenizer. Required.
	Model *model.Model
	// Store holds chunk and prefix KV (tenant in every key). Nil: nothing is
	// stored and every chunk is computed.
	Store kvstore.Store
	// Engine publishes KV to the engine. When nil, OpenEngine is called on
	// the first fusion (and again, at most once a second, while it fails),
	// so the sidecar may start before the engine.
	Engine     adapters.Engine
	OpenEngine func(ctx context.Context) (adapters.Engine, error)
	// Logger (default slog.Default()).
	Logger *slog.Logger
}

// New validates cfg and builds the fusion path.
func New(cfg Config) (*Fuser, error) {
	if cfg.Model == nil || cfg.Model.Tokenizer == nil {
		return nil, errors.New("rag: the fusion path needs a model with its tokenizer")
	}
	if cfg.Engine == nil && cfg.OpenEngine == nil {
		return nil, errors.New("rag: the fusion path needs an engine adapter (Engine or OpenEngine)")
	}
	if err := cfg.Proxy.Validate(); err != nil {
		// Upstream is not needed here; every other field must be valid.
		var bad bool
		for _, e := range unwrapJoined(err) {
			if !startsWith(e.Error(), "upstream:") {
				bad = true
			}
		}
		if bad {
			return nil, err
		}
	}
	f := &Fuser{cfg: cfg.Proxy, m: cfg.Model, tok: cfg.Model.Tokenizer, openEng: cfg.OpenEngine,
		log: cfg.Logger, warming: make(chan struct{}, 1)}
	if cfg.Engine != nil {
		f.eng = &liveEngine{Engine: cfg.Engine}
	}
	if f.log == nil {
		f.log = slog.Default()
	}
	f.index.MaxChunks = maxIndexedChunks
	var err error
	if f.chat, err = prompt.TemplateOf(f.tok); err != nil {
		return nil, fmt.Errorf("rag: chat template: %w", err)
	}
	if f.modelFP, err = fingerprint.ParseKey(cfg.Model.Fingerprint()); err != nil {
		return nil, fmt.Errorf("rag: model fingerprint: %w", err)
	}
	f.tokFP = fingerprint.TokenizerFingerprint([]byte(f.tok.Fingerprint()))
	f.maxPromptBytes = promptByteBound(f.tok, cfg.Model.Config.MaxPositions)
	f.budget = NewBudget(cfg.Proxy.Limits.FusionMemory)
	if st := cfg.Store; st != nil {
		// A shared store alone (one Redis URL) goes behind a tiered store
		// too, so that its outage is a miss with backoff, never a fusion
		// failure that counts against the breaker (kvstore.Tiered). Local
		// tiers are left as they are (a tiered store copies mapped blobs).
		if _, shared := st.(kvstore.Leaser); shared {
			if _, tiered := st.(*kvstore.Tiered); !tiered {
				st = kvstore.NewTiered(st) // not closed by the fuser: cfg.Store's owner closes it
			}
		}
		f.source = &chunkkv.Store{Store: st}
	}
	return f, nil
}

func unwrapJoined(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}

func startsWith(s, p string) bool { return len(s) >= len(p) && s[:len(p)] == p }

// Close closes the adapter the fuser opened.
func (f *Fuser) Close() error {
	f.engMu.Lock()
	defer f.engMu.Unlock()
	if f.eng != nil && f.eng.owned {
		err := f.eng.Close()
		f.eng = nil
		return err
	}
	return nil
}

// mismatchReopen is how long an adapter that failed to open with
// adapters.ErrMismatch (or was retired for it) is not re-opened: the engine
// serves another model until someone redeploys it, and a re-open costs the
// engine a handshake (llamacpp saves and restores a probe slot). Other open
// failures (the engine not up yet) are retried after a second.
const mismatchReopen = 30 * time.Second

// engine returns the adapter, opening it on first use (and again after a
// failure or a retirement, at most once per second, once per
// mismatchReopen after a mismatch).
func (f *Fuser) engine(ctx context.Context) (*liveEngine, error) {
	f.engMu.Lock()
	defer f.engMu.Unlock()
	if f.eng != nil {
		return f.eng, nil
	}
	wait := time.Second
	if errors.Is(f.openErr, adapters.ErrMismatch) {
		wait = mismatchReopen
	}
	if f.openErr != nil && (time.Since(f.lastOpen) < wait || f.openEng == nil) {
		return nil, f.openErr
	}
	f.lastOpen = time.Now()
	eng, err := f.openEng(ctx)
	if err != nil {
		f.openErr = fmt.Errorf("rag: opening the engine adapter: %w", err)
		return nil, f.openErr
	}
	f.eng, f.openErr = &liveEngine{Engine: eng, owned: true}, nil
	return f.eng, nil
}

// retire drops e, an adapter whose Publish reported adapters.ErrMismatch,
// when the fuser opened it: the next fusion re-opens the adapter (a new
// handshake) after mismatchReopen, so a redeployed engine is found again.
// e is closed once its last lease is released. An adapter given in
// Config.Engine is kept (the breaker bounds the cost).
func (f *Fuser) retire(e *liveEngine, err error) {
	if !e.owned {
		return
	}
	f.engMu.Lock()
	if f.eng == e {
		f.eng = nil
		f.openErr = fmt.Errorf("rag: engine adapter retired: %w", err)
		f.lastOpen = time.Now()
	}
	f.engMu.Unlock()
	e.retire()
}

// liveEngine is the fuser's adapter with a count of its leases still held,
// so that a retired adapter is closed only when no request uses it.
type liveEngine struct {
	adapters.Engine
	owned bool // opened by the fuser (OpenEngine): closed when retired

	mu      sync.Mutex
	leases  int
	retired bool
}

func (e *liveEngine) publish(ctx context.Context, p adapters.Publication) (adapters.Lease, error) {
	e.mu.Lock()
	e.leases++
	e.mu.Unlock()
	l, err := e.Engine.Publish(ctx, p)
	if err == nil && l == nil {
		err = errors.New("rag: adapter published without a lease")
	}
	if err != nil {
		e.released()
		return nil, err
	}
	return &liveLease{Lease: l, e: e}, nil
}

func (e *liveEngine) released() {
	e.mu.Lock()
	e.leases--
	last := e.retired && e.leases == 0
	e.mu.Unlock()
	if last {
		_ = e.Close()
	}
}

func (e *liveEngine) retire() {
	e.mu.Lock()
	already := e.retired
	e.retired = true
	idle := e.leases == 0
	e.mu.Unlock()
	if !already && idle {
		_ = e.Close()
	}
}

// liveLease is a lease of a liveEngine.
type liveLease struct {
	adapters.Lease
	e *liveEngine
}

// Release implements adapters.Lease.
func (l *liveLease) Release() {
	l.Lease.Release()
	l.e.released()
}

// truncateAttr bounds a span attribute an adapter chose.
func truncateAttr(s string) string {
	if len(s) > 64 {
		return s[:64]
	}
	return s
}

// Fuse implements Fuser.
func (f *Fuser) Fuse(ctx context.Context, req *proxy.Request) (*proxy.Plan, error) {
	_, span := proxy.StartPhase(ctx, proxy.SpanSegment)
	sg, err := f.segment(req)
	if err == nil {
		inexact := 0
		for _, e := range sg.seg.Exact {
			if !e {
				inexact++
			}
		}
		span.SetAttributes(attribute.String(proxy.AttrSegmentation, sg.how), attribute.Int(proxy.AttrChunks, len(sg.seg.Chunks)),
			attribute.Int(proxy.AttrInexactChunks, inexact), attribute.Int(proxy.AttrPrefixTokens, sg.seg.Prefix.Len()),
			attribute.Int(proxy.AttrQuestionTokens, sg.seg.Question.Len()))
	}
	span.End()
	if err != nil {
		return nil, err
	}
	if max := f.cfg.Limits.MaxChunks; max > 0 && len(sg.seg.Chunks) > max {
		return nil, proxy.Skip(proxy.SkipTooManyChunks)
	}
	if sg.seg.Prefix.Len() == 0 {
		return nil, proxy.Skip(proxy.SkipNoChunks) // recompute keys chunks by S; BOS-less prompts have none
	}
	if len(sg.ids) > f.m.Config.MaxPositions {
		return nil, proxy.Skip(proxy.SkipPromptTooLong)
	}

	strategy, ratio := f.cfg.Fusion.Strategy, f.cfg.Fusion.Ratio
	if req.Override.Strategy != "" {
		strategy = req.Override.Strategy
	}
	if req.Override.HasRatio {
		ratio = req.Override.Ratio
	}
	// Memory budget (limits.fusion_memory, budget.go): reserved before the
	// recompute, released once the KV is published (or the run fails).
	need := fusionBytes(f.m.Config, len(sg.ids), sg.seg.Prefix.End, sg.seg.Question.Len(), strategy, ratio)
	if !f.budget.Reserve(need) {
		return nil, proxy.Skip(proxy.SkipOverBudget)
	}
	defer f.budget.Release(need)
	k := len(sg.seg.Chunks)
	known := proxy.Stats{Strategy: strategy, Ratio: ratio, Chunks: k} // what a skip below reports; hits and misses once looked up

	// Look up and recompute. A source wrapper sees every chunk lookup (all
	// of them run before any chunk is computed) and stops the run before
	// the first computation when more than MaxMissingFraction of the
	// chunks are missing; it also times the lookups for fusion.lookup.
	// The offline ingest's namespace for the tenant and the configured
	// fusion parameters, so that chunks ingested for it are found.
	ns, err := fingerprint.ChunkNamespace(f.m.Fingerprint(), f.tok.Fingerprint(), req.Tenant,
		fingerprint.FusionParams(f.cfg.Fusion.Neighbours, f.cfg.Fusion.Similarity))
	if err != nil {
		return nil, fmt.Errorf("rag: %w", err)
	}
	var src recompute.KVSource
	var cs *countingSource
	if f.source != nil {
		cs = newCountingSource(f.source, ns, sg, int(math.Floor(f.cfg.Fusion.MaxMissingFraction*float64(k)+1e-9)))
		src = cs
	}
	rp, err := recompute.New(recompute.Config{Model: f.m, Source: src, Namespace: ns,
		Variant: fingerprint.VariantFused, RecomputeBadKV: true})
	if err != nil {
		return nil, err
	}
	rreq, err := toRecompute(sg, strategy, ratio)
	if err != nil {
		return nil, withStats(requestSkip(err), known)
	}
	rctx, rspan := proxy.StartPhase(ctx, proxy.SpanRecompute, attribute.String(proxy.AttrStrategy, strategy), attribute.Float64(proxy.AttrRatio, ratio))
	res, err := rp.Run(rctx, rreq)
	if cs != nil {
		known.Hits, known.Misses = cs.counts()
		cs.span(ctx, known)
	}
	if err != nil {
		if errors.Is(err, errTooManyMissing) {
			rspan.SetAttributes(attribute.String(proxy.AttrSkipReason, proxy.SkipTooManyMissing),
				attribute.Int(proxy.AttrHits, known.Hits), attribute.Int(proxy.AttrMisses, known.Misses))
			rspan.End()
			f.warm(ns, rreq, req.Tenant, sg)
			return nil, proxy.SkipWith(proxy.SkipTooManyMissing, known)
		}
		err = requestSkip(err)
		if !errors.Is(err, proxy.ErrSkip) {
			proxy.SpanError(rspan, err)
		}
		rspan.End()
		return nil, withStats(err, known)
	}
	rec := res.Record
	known.Hits, known.Misses = rec.RawHits+rec.FusedHits, rec.Misses
	known.RecomputedTokens, known.ContextTokens, known.BytesLoaded = rec.Recomputed, rec.PrefixTokens+rec.ContextTokens, rec.BytesLoaded
	rspan.SetAttributes(
		attribute.Int(proxy.AttrHits, rec.RawHits+rec.FusedHits), attribute.Int(proxy.AttrMisses, rec.Misses),
		attribute.Int("fusionrag.bad_entries", rec.BadEntries), attribute.Int(proxy.AttrRecomputedTokens, rec.Recomputed),
		attribute.Float64(proxy.AttrLoadSeconds, rec.Phases.Load.Seconds()), attribute.Float64(proxy.AttrComputeSeconds, rec.Phases.Compute.Seconds()),
		attribute.Float64(proxy.AttrSelectSeconds, rec.Phases.Select.Seconds()), attribute.Float64(proxy.AttrRecomputeSecond, rec.Phases.Recompute.Seconds()))
	rspan.End()

	// Publish the KV of every token but the last, which the engine
	// prefills itself to get the logits. The adapter sees the body exactly
	// as Lease.Rewrite will receive it (applyPlan passes it through
	// LeaseBody again, which leaves it as it is).
	pctx, pspan := proxy.StartPhase(ctx, proxy.SpanPublish)
	defer pspan.End()
	eng, err := f.engine(pctx)
	if err != nil {
		proxy.SpanError(pspan, err)
		switch {
		case errors.Is(err, adapters.ErrMismatch):
			return nil, withStats(proxy.Fallback(proxy.ReasonEngineMismatch, err), known)
		case ctx.Err() != nil:
			return nil, err
		}
		return nil, withStats(proxy.Fallback(proxy.AdapterReason(err, proxy.ReasonAdapterOpen), err), known)
	}
	fwd := req.Body
	if sg.body != nil {
		fwd = sg.body
	}
	if fwd, err = proxy.LeaseBody(fwd); err != nil {
		return nil, err
	}
	L := len(sg.ids)
	pns := fingerprint.PublishNamespace(req.Tenant, ns.Params, strategy, ratio)
	lease, err := eng.publish(pctx, adapters.Publication{Namespace: pns, Prompt: sg.ids, KV: res.Cache.Slice(0, L-1),
		Path: req.Route.Path(), Body: fwd})
	if err != nil {
		if r := adapters.ReasonOf(err); r != "" {
			pspan.SetAttributes(attribute.String(proxy.AttrAdapterReason, truncateAttr(r)))
		}
		switch {
		case errors.Is(err, adapters.ErrNoPublish):
			pspan.SetAttributes(attribute.String(proxy.AttrSkipReason, proxy.SkipNoPublish))
			return nil, proxy.SkipWith(proxy.SkipNoPublish, known)
		case errors.Is(err, adapters.ErrBusy):
			pspan.SetAttributes(attribute.String(proxy.AttrSkipReason, proxy.SkipEngineBusy))
			return nil, proxy.SkipWith(proxy.SkipEngineBusy, known)
		case errors.Is(err, adapters.ErrRequest):
			// The request's own tokens or shape (adapters.ErrRequest):
			// forwarded as it is, not a failure of the path.
			reason := proxy.AdapterReason(err, proxy.SkipEngineRejects)
			pspan.SetAttributes(attribute.String(proxy.AttrSkipReason, reason))
			return nil, proxy.SkipWith(reason, known)
		}
		proxy.SpanError(pspan, err)
		switch {
		case ctx.Err() != nil:
			return nil, err // the proxy tells a deadline from a cancel
		case errors.Is(err, adapters.ErrMismatch):
			f.retire(eng, err)
			return nil, withStats(proxy.Fallback(proxy.ReasonEngineMismatch, err), known)
		}
		return nil, withStats(proxy.Fallback(proxy.AdapterReason(err, proxy.ReasonAdapterError), err), known)
	}
	pspan.SetAttributes(attribute.Int("fusionrag.published_tokens", L-1))

	// The chunks are in the store now: later unmarked prompts may find them.
	for i, c := range sg.seg.Chunks {
		if sg.seg.Exact[i] {
			f.Remember(req.Tenant, sg.ids[c.Begin:c.End])
		}
	}
	return &proxy.Plan{Lease: lease, Body: fwd, Stats: known}, nil
}

// withStats attaches s to a *SkipError or *FallbackError that carries none,
// so the proxy counts the request's chunks; other errors are returned as
// they are.
func withStats(err error, s proxy.Stats) error {
	var se *proxy.SkipError
	var fe *proxy.FallbackError
	switch {
	case errors.As(err, &se) && se.Stats == nil:
		se.Stats = &s
	case errors.As(err, &fe) && fe.Stats == nil:
		fe.Stats = &s
	}
	return err
}

// warm computes and stores the chunks of a request that skipped fusion
// because too many were missing, in the background (at most one warm-up at
// a time; others are dropped), so that the next request with these chunks
// finds them. It runs the "reuse" strategy: missing chunks are computed as
// raw KV and stored, and only the question is prefilled on top. Once
// stored, the chunks cut exactly are remembered for tenant (Remember), as
// a fused request's are: a later unmarked prompt of that tenant finds them.
func (f *Fuser) warm(ns fingerprint.Namespace, req recompute.Request, tenant string, sg *segmented) {
	select {
	case f.warming <- struct{}{}:
	default:
		return
	}
	req.Strategy, req.Ratio = "reuse", 0
	// The warm-up holds memory like any run: it takes its share of the
	// budget (limits.fusion_memory) or does not run. It reserves in its own
	// goroutine, which normally starts after the calling Fuse has released
	// its reservation; a warm-up that still finds the budget full is
	// dropped (the next request with these chunks warms them).
	need := fusionBytes(f.m.Config, len(sg.ids), sg.seg.Prefix.End, sg.seg.Question.Len(), req.Strategy, req.Ratio)
	go func() {
		defer func() { <-f.warming }()
		if !f.budget.Reserve(need) {
			f.log.Debug("fusion warm-up dropped: over the memory budget", "bytes", need)
			return
		}
		defer f.budget.Release(need)
		ctx, cancel := context.WithTimeout(context.Background(), warmTimeout)
		defer cancel()
		rp, err := recompute.New(recompute.Config{Model: f.m, Source: f.source, Namespace: ns, RecomputeBadKV: true})
		if err == nil {
			_, err = rp.Run(ctx, req)
		}
		if err != nil {
			f.log.Debug("fusion warm-up failed", "err", err)
			return
		}
		for i, c := range sg.seg.Chunks {
			if sg.seg.Exact[i] {
				f.Remember(tenant, sg.ids[c.Begin:c.End])
			}
		}
	}()
}

// requestSkip turns the recompute errors that a request's own content
// causes (ids outside the vocabulary, which the engine refuses too; an empty
// segment; a prompt over the context) into skips: bad input is not a failure
// of the fusion path and must not count against its breaker. Other errors
// are returned as they are.
func requestSkip(err error) error {
	switch {
	case errors.Is(err, recompute.ErrTooLong):
		return proxy.Skip(proxy.SkipPromptTooLong)
	case errors.Is(err, recompute.ErrToken):
		return proxy.Skip(proxy.SkipEngineRejects)
	case errors.Is(err, recompute.ErrEmptySegment), errors.Is(err, recompute.ErrOverlap):
		return proxy.Skip(proxy.SkipNoChunks)
	}
	return err
}

// warmTimeout bounds one background warm-up.
const warmTimeout = time.Minute

func toRecompute(sg *segmented, strategy string, ratio float64) (recompute.Request, error) {
	chunks := make([]recompute.Span, len(sg.seg.Chunks))
	for i, c := range sg.seg.Chunks {
		chunks[i] = recompute.Span{Begin: c.Begin, End: c.End}
	}
	return recompute.FromSpans(sg.ids, recompute.Span{Begin: sg.seg.Prefix.Begin, End: sg.seg.Prefix.End}, chunks,
		recompute.Span{Begin: sg.seg.Question.Begin, End: sg.seg.Question.End}, strategy, ratio)
}

var errTooManyMissing = errors.New("rag: too many chunks missing from the store")

// countingSource is the fuser's view of the store during one request: it
// notes which chunks were found (under their raw or fused key), times the
// lookups (the fusion.lookup span), and refuses the first chunk
// computation when more than allowed chunks are missing.
//
// recompute looks every chunk up (in parallel) before it computes any
// missing one, and asks the source for a lease (LeaseKV) right before each
// computation, so LeaseKV is where the decision falls: by then every lookup
// has returned, and the counts are those of the whole request, not of the
// lookups that happened to finish before the limit was crossed.
type countingSource struct {
	inner   recompute.KVSource
	chunkOf map[fingerprint.Key]int // raw and fused key -> chunk index
	k       int
	allowed int

	mu         sync.Mutex
	found      []bool
	lookups    int // GetKV calls, prefix included
	first      time.Time
	last       time.Time
	lookupTime time.Duration // summed over calls (they overlap)
}

func newCountingSource(inner recompute.KVSource, ns fingerprint.Namespace, sg *segmented, allowed int) *countingSource {
	k := len(sg.seg.Chunks)
	c := &countingSource{inner: inner, chunkOf: make(map[fingerprint.Key]int, 2*k), k: k, allowed: allowed, found: make([]bool, k)}
	prefix := sg.ids[:sg.seg.Prefix.End]
	for i, ch := range sg.seg.Chunks {
		ids := sg.ids[ch.Begin:ch.End]
		c.chunkOf[fingerprint.ChunkKeyAfter(ns, fingerprint.VariantRaw, prefix, ids)] = i
		c.chunkOf[fingerprint.ChunkKeyAfter(ns, fingerprint.VariantFused, prefix, ids)] = i
	}
	return c
}

func (c *countingSource) GetKV(ctx context.Context, key fingerprint.Key, check fingerprint.Check) (recompute.Loaded, error) {
	t := time.Now()
	ld, err := c.inner.GetKV(ctx, key, check)
	end := time.Now()
	c.mu.Lock()
	if c.lookups == 0 || t.Before(c.first) {
		c.first = t
	}
	if end.After(c.last) {
		c.last = end
	}
	c.lookups++
	c.lookupTime += end.Sub(t)
	if i, ok := c.chunkOf[key]; ok && err == nil {
		c.found[i] = true
	}
	c.mu.Unlock()
	return ld, err
}

// counts returns the chunks found and the chunks not found.
func (c *countingSource) counts() (hits, misses int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, f := range c.found {
		if f {
			hits++
		}
	}
	return hits, c.k - hits
}

// span emits fusion.lookup, a child of the request span in ctx, over
// [first lookup, last lookup's return) with the chunks' hits and misses.
// The lookups run inside recompute.Run, so the span is written afterwards
// with their own timestamps.
func (c *countingSource) span(ctx context.Context, s proxy.Stats) {
	if !trace.SpanFromContext(ctx).IsRecording() {
		return
	}
	c.mu.Lock()
	first, last, n, sum := c.first, c.last, c.lookups, c.lookupTime
	c.mu.Unlock()
	if n == 0 {
		first = time.Now()
		last = first
	}
	_, sp := proxy.StartSpan(ctx, proxy.SpanLookup, trace.WithTimestamp(first), trace.WithAttributes(
		attribute.Int(proxy.AttrChunks, s.Chunks), attribute.Int(proxy.AttrHits, s.Hits), attribute.Int(proxy.AttrMisses, s.Misses),
		attribute.Float64(proxy.AttrHitRate, s.HitRate()), attribute.Int("fusionrag.store_lookups", n),
		attribute.Float64(proxy.AttrLoadSeconds, sum.Seconds())))
	sp.End(trace.WithTimestamp(last))
}

func (c *countingSource) PutKV(ctx context.Context, key fingerprint.Key, check fingerprint.Check, kv *model.Cache) error {
	return c.inner.PutKV(ctx, key, check, kv)
}

// LeaseKV is asked right before a missing chunk is computed (every lookup
// has returned by then): it fails the run with errTooManyMissing when more
// than allowed chunks are missing. Otherwise it forwards the inner
// source's lease (sidecars sharing a store compute a cold chunk once);
// without one, compute at once.
func (c *countingSource) LeaseKV(ctx context.Context, key fingerprint.Key, check fingerprint.Check) (recompute.Loaded, func(), error) {
	if _, misses := c.counts(); misses > c.allowed {
		return recompute.Loaded{}, nil, errTooManyMissing
	}
	if l, ok := c.inner.(recompute.KVLeaser); ok {
		return l.LeaseKV(ctx, key, check)
	}
	return recompute.Loaded{}, func() {}, nil
}
