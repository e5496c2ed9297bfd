// Package recompute is the online stage of FusionRAG: given a prompt
// S + C_1..C_k + Q split on token ids and the stored KV of its chunks, it
// produces the KV of the whole prompt and the logits of its last position at a
// fraction of the cost of a prefill.
//
// Assembly loads each chunk's position-free KV (K stored before RoPE, as if
// the chunk started right after S), places it at its real offset, and puts
// S's KV (from the store or computed) in front. Missing chunks are computed on
// the fly as raw KV (prefill of S + C, keeping C's slice) and stored back.
// The assembled cache is private to the request: stored and shared chunk KV
// is never modified.
//
// A Strategy then decides what to recompute on top of the assembly. Built in
// (see Strategies):
//
//   - full: plain prefill of the whole prompt, the reference and fallback;
//   - reuse: no recompute, only Q is prefilled on the assembled cache;
//   - fusionrag: Q's last-layer attention over context tokens ranks them;
//     the global top-k (k = ratio × context tokens, S excluded) and Q are
//     recomputed through all layers in one pass against the assembly;
//   - cacheblend: layers [0, CheckLayer] are recomputed for every context
//     token, the tokens whose V deviates most from the cached V at the check
//     layer are kept and only they (and Q) run the remaining layers;
//   - epic: the first m tokens of every chunk (m from the ratio) and Q are
//     recomputed.
//
// The first chunk sits right after S, where its raw KV (prefill of S + C) is
// exactly a full prefill's: it is served raw even in the fused variant
// (Config.FirstChunkFused) and no strategy spends its budget there
// (Job.Selectable); the budget, ratio × all context tokens, goes to the
// other chunks.
//
// Every Run returns a Record of what happened (selection, hits, bytes, FLOPs,
// time per phase) for traces and benchmarks.
package recompute

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/fusionrag/fusionrag/fingerprint"
	"github.com/fusionrag/fusionrag/model"
)

// Strategy turns a validated request into the KV of the whole prompt. It
// obtains what it needs from the Job (assembled context, forward passes that
// are timed and costed) and ends with Job.Finish. Implementations must be safe
// for concurrent use (one Job per request).
type Strategy interface {
	Run(ctx context.Context, j *Job) error
}

// StrategyFunc adapts a function to Strategy.
type StrategyFunc func(ctx context.Context, j *Job) error

// Run calls f.
func (f StrategyFunc) Run(ctx context.Context, j *Job) error { return f(ctx, j) }

var (
	registryMu sync.RWMutex
	registry   = map[string]Strategy{}
)

// Register makes a strategy selectable by name in Request.Strategy. It panics
// when the name is taken (a programming error at init time).
func Register(name string, s Strategy) {
	registryMu.Lock()
	defer registryMu.Unlock()
	if _, dup := registry[name]; dup || name == "" {
		panic("recompute: strategy " + name + " registered twice or unnamed")
	}
	registry[name] = s
}

// Strategies lists the registered strategy names, sorted.
func Strategies() []string {
	registryMu.RLock()
	defer registryMu.RUnlock()
	names := make([]string, 0, len(registry))
	for n := range registry {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

func lookupStrategy(name string) (Strategy, bool) {
	registryMu.RLock()
	defer registryMu.RUnlock()
	s, ok := registry[name]
	return s, ok
}

// Config configures a Reprocessor. New validates it and fills defaults.
type Config struct {
	// Model runs the forward passes. Required.
	Model *model.Model
	// Source holds chunk and prefix KV. Nil: nothing is stored, every chunk
	// and S are computed on the fly (raw).
	Source KVSource
	// Namespace isolates the keys (model, tokenizer, tenant, fusion params);
	// its Variant is ignored (set per key). A zero Namespace.Model is filled
	// from Model.Fingerprint().
	Namespace fingerprint.Namespace
	// Variant is the chunk KV looked up first: fingerprint.VariantRaw (default)
	// or VariantFused. With fused, a missing fused entry falls back to the raw
	// one, then to computing raw KV.
	Variant fingerprint.Variant
	// BlockSize is the block size of prefix keys (fingerprint.SystemPrefixKey).
	// Default fingerprint.BlockSize, the one the engine probes.
	BlockSize int
	// CheckLayer is cacheblend's check layer: layers [0, CheckLayer] are
	// recomputed in full and the deviation is measured at CheckLayer.
	// 0 selects the default, 1 (as in CacheBlend; layer 0's K and V depend on
	// the token alone, so they never deviate); must be below Layers.
	CheckLayer int
	// FirstChunkFused serves the first chunk from fused KV like the others.
	// By default (false) the first chunk, which sits right after S, is
	// looked up as raw KV first: raw KV is the prefill of S + C, so at that
	// position it is exactly what a full prefill computes, and the
	// strategies that recompute do not spend budget on it (Job.Selectable).
	// Fused KV there is C computed after other chunks: not exact, and on
	// stories260K it held 72% of CacheBlend's layer-1 V deviation
	// (docs/benchmarks.md). Only for ablations.
	FirstChunkFused bool
	// NoStoreBack disables storing KV computed on a miss.
	NoStoreBack bool
	// RecomputeBadKV treats a stored entry that does not match (shape,
	// tokens, model) as a miss: it is recomputed and overwritten, and counted
	// in Record.BadEntries. False: Run returns the *KVMismatchError.
	RecomputeBadKV bool
}

// Reprocessor runs requests against one model and one KV source. It is safe
// for concurrent use.
type Reprocessor struct {
	cfg Config
}

// New validates cfg, fills its defaults and returns a Reprocessor.
func New(cfg Config) (*Reprocessor, error) {
	if cfg.Model == nil {
		return nil, errors.New("recompute: Config.Model is nil")
	}
	mc := cfg.Model.Config
	if cfg.Namespace.Model.IsZero() {
		k, err := fingerprint.ParseKey(cfg.Model.Fingerprint())
		if err != nil {
			return nil, fmt.Errorf("recompute: model fingerprint: %w", err)
		}
		cfg.Namespace.Model = k
	}
	switch cfg.Variant {
	case 0:
		cfg.Variant = fingerprint.VariantRaw
	case fingerprint.VariantRaw, fingerprint.VariantFused:
	default:
		return nil, fmt.Errorf("recompute: Config.Variant %v: want raw or fused", cfg.Variant)
	}
	if cfg.BlockSize == 0 {
		cfg.BlockSize = fingerprint.BlockSize
	}
	if cfg.BlockSize < 1 {
		return nil, fmt.Errorf("recompute: Config.BlockSize %d must be >= 1", cfg.BlockSize)
	}
	if cfg.CheckLayer == 0 {
		cfg.CheckLayer = min(1, mc.Layers-1)
	}
	if cfg.CheckLayer < 0 || cfg.CheckLayer >= mc.Layers {
		return nil, fmt.Errorf("recompute: Config.CheckLayer %d outside [0, %d)", cfg.CheckLayer, mc.Layers)
	}
	return &Reprocessor{cfg: cfg}, nil
}

// Config returns the validated configuration (defaults filled).
func (r *Reprocessor) Config() Config { return r.cfg }

// Result is the outcome of one request.
type Result struct {
	// Cache is the KV of the whole prompt, entries in position order
	// 0..n-1, ready for decoding. It is owned by the caller (nothing else
	// references its arrays).
	Cache *model.Cache
	// LastLogits are the [Vocab] logits of the prompt's last position.
	LastLogits []float32
	// Record says what happened.
	Record Record
}

// Phases are wall-clock times of a request's stages.
type Phases struct {
	// Load: fetching chunk and prefix KV from the source.
	Load time.Duration `json:"load_ns"`
	// Compute: computing missing chunk or prefix KV (and storing it back).
	Compute time.Duration `json:"compute_ns"`
	// Assemble: placing S and the chunks into the request's cache.
	Assemble time.Duration `json:"assemble_ns"`
	// Select: the passes that choose what to recompute (fusionrag's Q pass,
	// cacheblend's full layers).
	Select time.Duration `json:"select_ns"`
	// Recompute: the pass that produces the final KV and logits.
	Recompute time.Duration `json:"recompute_ns"`
	// Total: the whole Run.
	Total time.Duration `json:"total_ns"`
}

// Record is a trace of one request.
type Record struct {
	Strategy string  `json:"strategy"`
	Ratio    float64 `json:"ratio"`
	// Token counts: PromptTokens = PrefixTokens + ContextTokens + QuestionTokens.
	PromptTokens   int `json:"prompt_tokens"`
	PrefixTokens   int `json:"prefix_tokens"`
	ContextTokens  int `json:"context_tokens"`
	QuestionTokens int `json:"question_tokens"`
	Chunks         int `json:"chunks"`
	// Selected are the prompt positions of the context tokens recomputed
	// through all layers, ascending (nil for full and reuse).
	Selected []int `json:"selected,omitempty"`
	// Recomputed is the number of context tokens recomputed through all
	// layers (len(Selected); all of them for full).
	Recomputed int `json:"recomputed"`
	// Chunk lookups: hits by variant, misses (computed on the fly), entries
	// that did not match and were recomputed (RecomputeBadKV).
	RawHits   int `json:"raw_hits"`
	FusedHits int `json:"fused_hits"`
	// ExactChunks is the number of leading chunks whose assembled KV is
	// exact (the first chunk served as raw KV right after S: 0 or 1); no
	// strategy selects their tokens.
	ExactChunks int `json:"exact_chunks"`
	Misses      int `json:"misses"`
	// LeaseHits are chunks that missed, found another sidecar computing
	// them (KVLeaser) and were served its KV after a wait; they count in
	// RawHits, not in Misses.
	LeaseHits  int  `json:"lease_hits,omitempty"`
	BadEntries int  `json:"bad_entries"`
	PrefixHit  bool `json:"prefix_hit"`
	// BytesLoaded is the size of the KV read from the source.
	BytesLoaded int64 `json:"bytes_loaded"`
	// Cost counts the floating-point operations of every forward pass run
	// for this request (on-the-fly chunk computation included).
	Cost Cost `json:"cost"`
	// Phases are the times per stage.
	Phases Phases `json:"phases"`
}

// Run reprocesses one request. Errors are the sentinels and typed errors of
// this package (bad request, mismatched stored KV), source errors, or the
// model's; in every case the caller can fall back to the "full" strategy.
func (r *Reprocessor) Run(ctx context.Context, req Request) (*Result, error) {
	start := time.Now()
	mc := r.cfg.Model.Config
	if err := req.Validate(mc.Vocab, mc.MaxPositions); err != nil {
		return nil, err
	}
	name := req.strategyName()
	s, _ := lookupStrategy(name)
	l := req.Layout()
	j := &Job{r: r, req: req, layout: l}
	j.rec = Record{
		Strategy: name, Ratio: req.Ratio,
		PromptTokens: l.Total(), PrefixTokens: len(req.Prefix), ContextTokens: l.Context().Len(),
		QuestionTokens: len(req.Question), Chunks: len(req.Chunks),
	}
	if err := s.Run(ctx, j); err != nil {
		return nil, fmt.Errorf("recompute: %s: %w", name, err)
	}
	if j.res == nil {
		return nil, fmt.Errorf("recompute: strategy %s returned without Finish", name) // a bug in the strategy
	}
	if got := j.res.Cache.Len(); got != l.Total() {
		return nil, fmt.Errorf("recompute: strategy %s produced %d KV entries for a %d-token prompt", name, got, l.Total())
	}
	j.rec.Phases.Total = time.Since(start)
	j.res.Record = j.rec
	return j.res, nil
}
