package recompute

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/fusionrag/fusionrag/chunkkv"
	"github.com/fusionrag/fusionrag/fingerprint"
	"github.com/fusionrag/fusionrag/model"
	"golang.org/x/sync/errgroup"
)

// Phase names the stage a forward pass is accounted to.
type Phase int

const (
	// PhaseSelect: passes that decide what to recompute.
	PhaseSelect Phase = iota
	// PhaseRecompute: the pass that produces the final KV and logits.
	PhaseRecompute
)

// Job is one request in flight: what a Strategy works with. Its methods time
// and cost the work they do into the Record.
type Job struct {
	r      *Reprocessor
	req    Request
	layout Layout
	rec    Record
	res    *Result
	asm    *model.Cache
	// exact is the number of leading chunks whose assembled KV is exact.
	exact int
	// releases return the source's loans once the assembly holds a copy.
	relMu    sync.Mutex
	releases []func()
}

// Request is the validated request.
func (j *Job) Request() *Request { return &j.req }

// Layout is where the segments sit.
func (j *Job) Layout() Layout { return j.layout }

// Model is the model to run.
func (j *Job) Model() *model.Model { return j.r.cfg.Model }

// Config is the Reprocessor's validated configuration.
func (j *Job) Config() *Config { return &j.r.cfg }

// Record is the trace being filled; strategies set Selected and Recomputed.
func (j *Job) Record() *Record { return &j.rec }

// Finish sets the result: the KV of the whole prompt (position order) and the
// last position's logits.
func (j *Job) Finish(kv *model.Cache, lastLogits []float32) {
	j.res = &Result{Cache: kv, LastLogits: lastLogits}
}

func (j *Job) phase(p Phase) *time.Duration {
	if p == PhaseSelect {
		return &j.rec.Phases.Select
	}
	return &j.rec.Phases.Recompute
}

// Forward runs m.Forward, accounting its time to phase p and its cost to the
// record. cache must hold its entries in ascending position order (every
// cache this package builds does) for the cost to be exact.
func (j *Job) Forward(ctx context.Context, p Phase, cache *model.Cache, b model.Batch, opts model.ForwardOptions) (*model.ForwardResult, error) {
	t := time.Now()
	var cachePos []int32
	if cache != nil {
		cachePos = cache.Pos
	}
	cost := PassCost(j.Model().Config, cachePos, b.Pos, j.Model().Config.Layers, len(opts.Logits))
	res, err := j.Model().Forward(ctx, cache, b, opts)
	*j.phase(p) += time.Since(t)
	if err == nil {
		j.rec.Cost = j.rec.Cost.Add(cost)
	}
	return res, err
}

// Step runs one layer (m.Step), accounted like Forward.
func (j *Job) Step(ctx context.Context, p Phase, cache *model.Cache, st *model.State, opts model.StepOptions) (*model.StepResult, error) {
	t := time.Now()
	var cachePos []int32
	if cache != nil {
		cachePos = cache.Pos
	}
	cost := PassCost(j.Model().Config, cachePos, st.Batch.Pos, 1, 0)
	res, err := j.Model().Step(ctx, cache, st, opts)
	*j.phase(p) += time.Since(t)
	if err == nil {
		j.rec.Cost = j.rec.Cost.Add(cost)
	}
	return res, err
}

// Logits runs m.Logits on rows of st, accounted to phase p.
func (j *Job) Logits(p Phase, st *model.State, rows []int) [][]float32 {
	t := time.Now()
	out := j.Model().Logits(st, rows)
	*j.phase(p) += time.Since(t)
	j.rec.Cost.Logits += float64(len(out)) * 2 * float64(j.Model().Config.Dim) * float64(j.Model().Config.Vocab)
	return out
}

// Selectable is the span of context tokens a strategy may choose to
// recompute: the context without its leading exact chunks (Record.ExactChunks;
// the first chunk when its raw KV sits right after S). Valid once Assembled
// has run.
func (j *Job) Selectable() Span {
	span := j.layout.Context()
	if j.exact > 0 {
		span.Begin = j.layout.Chunks[j.exact-1].End
	}
	return span
}

// Batch returns the prompt tokens at the given positions (ascending) followed
// by the whole question, ready for a pass against the assembly.
func (j *Job) Batch(positions []int) model.Batch {
	b := model.Batch{
		Tokens: make([]int32, 0, len(positions)+len(j.req.Question)),
		Pos:    make([]int32, 0, len(positions)+len(j.req.Question)),
	}
	for _, p := range positions {
		b.Tokens = append(b.Tokens, j.tokenAt(p))
		b.Pos = append(b.Pos, int32(p))
	}
	q := j.layout.Question
	for i, t := range j.req.Question {
		b.Tokens = append(b.Tokens, t)
		b.Pos = append(b.Pos, int32(q.Begin+i))
	}
	return b
}

// tokenAt returns the prompt token at position p (binary search over chunks).
func (j *Job) tokenAt(p int) int32 {
	l := j.layout
	switch {
	case p < l.Prefix.End:
		return j.req.Prefix[p]
	case p >= l.Question.Begin:
		return j.req.Question[p-l.Question.Begin]
	}
	lo, hi := 0, len(l.Chunks)
	for lo < hi {
		m := (lo + hi) / 2
		if l.Chunks[m].End <= p {
			lo = m + 1
		} else {
			hi = m
		}
	}
	return j.req.Chunks[lo][p-l.Chunks[lo].Begin]
}

// Assembled returns the KV of S + C_1..C_k at positions [0, Context().End),
// loaded (or computed) and placed once per job. The cache is private to the
// job, in position order, with capacity for the question: strategies may
// overwrite and append to it, and usually return it as the result.
func (j *Job) Assembled(ctx context.Context) (*model.Cache, error) {
	if j.asm != nil {
		return j.asm, nil
	}
	defer func() {
		for _, f := range j.releases {
			f()
		}
		j.releases = nil
	}()
	prefix, err := j.prefixKV(ctx)
	if err != nil {
		return nil, err
	}
	chunks, err := j.chunkKV(ctx, prefix)
	if err != nil {
		return nil, err
	}
	t := time.Now()
	mc := j.Model().Config
	asm := model.NewCache(mc, j.layout.Total())
	pos := asm.Pos[:j.layout.Context().End]
	for i := range pos {
		pos[i] = int32(i)
	}
	asm.Pos = pos
	for l := range mc.Layers {
		k, v := asm.K[l], asm.V[l]
		if prefix != nil {
			k = append(k, prefix.K[l]...)
			v = append(v, prefix.V[l]...)
		}
		for _, c := range chunks {
			k = append(k, c.K[l]...)
			v = append(v, c.V[l]...)
		}
		asm.K[l], asm.V[l] = k, v
	}
	j.rec.Phases.Assemble += time.Since(t)
	j.asm = asm
	return asm, nil
}

// checkKV verifies that a stored KV fits the model and covers n tokens.
func (j *Job) checkKV(key fingerprint.Key, kv *model.Cache, n int) error {
	mc := j.Model().Config
	if kv == nil {
		return &KVMismatchError{Key: key.String(), Field: "shape", Got: "nil", Want: "a cache"}
	}
	if kv.Layers != mc.Layers || kv.KVHeads != mc.KVHeads || kv.HeadDim != mc.HeadDim {
		return &KVMismatchError{Key: key.String(), Field: "shape",
			Got:  fmt.Sprintf("[layers %d, kv heads %d, head dim %d]", kv.Layers, kv.KVHeads, kv.HeadDim),
			Want: fmt.Sprintf("[layers %d, kv heads %d, head dim %d]", mc.Layers, mc.KVHeads, mc.HeadDim)}
	}
	if kv.Len() != n {
		return &KVMismatchError{Key: key.String(), Field: "tokens", Got: strconv.Itoa(kv.Len()), Want: strconv.Itoa(n)}
	}
	want := n * mc.KVDim()
	if len(kv.K) != mc.Layers || len(kv.V) != mc.Layers {
		return &KVMismatchError{Key: key.String(), Field: "shape", Got: fmt.Sprintf("%d/%d layer arrays", len(kv.K), len(kv.V)), Want: strconv.Itoa(mc.Layers)}
	}
	for l := range mc.Layers {
		if len(kv.K[l]) != want || len(kv.V[l]) != want {
			return &KVMismatchError{Key: key.String(), Field: "shape",
				Got: fmt.Sprintf("layer %d with %d K / %d V floats", l, len(kv.K[l]), len(kv.V[l])), Want: strconv.Itoa(want)}
		}
	}
	return nil
}

// get reads one entry, folding a bad entry into a miss when configured.
func (j *Job) get(ctx context.Context, key fingerprint.Key, tokens []int32) (*model.Cache, int64, error) {
	ld, err := j.r.cfg.Source.GetKV(ctx, key, fingerprint.CheckOf(tokens))
	if err != nil {
		return nil, 0, err
	}
	if ld.Release != nil {
		j.relMu.Lock()
		j.releases = append(j.releases, ld.Release)
		j.relMu.Unlock()
	}
	if err := j.checkKV(key, ld.KV, len(tokens)); err != nil {
		return nil, 0, err
	}
	return ld.KV, ld.Size, nil
}

// miss reports whether err means "compute it": absent, or bad and allowed
// to be replaced. bad is set for the latter.
func (j *Job) miss(err error) (miss, bad bool) {
	switch {
	case errors.Is(err, ErrMiss):
		return true, false
	case errors.Is(err, ErrKVMismatch) && j.r.cfg.RecomputeBadKV:
		return true, true
	}
	return false, false
}

// put stores computed KV unless disabled; failures to store are not the
// request's failure (the KV is correct) and are ignored.
func (j *Job) put(ctx context.Context, key fingerprint.Key, tokens []int32, kv *model.Cache) {
	if j.r.cfg.Source == nil || j.r.cfg.NoStoreBack {
		return
	}
	_ = j.r.cfg.Source.PutKV(ctx, key, fingerprint.CheckOf(tokens), kv)
}

// lease asks a shared source (KVLeaser) for the lease on a chunk about to
// be computed. It returns the chunk's KV when another holder stored it
// meanwhile, else a release to call once the computed KV is put. Without a
// leasing source, or when nothing is stored back, there is nothing to
// share: no KV and a no-op release.
func (j *Job) lease(ctx context.Context, key fingerprint.Key, tokens []int32) (*model.Cache, int64, func(), error) {
	nop := func() {}
	l, ok := j.r.cfg.Source.(KVLeaser)
	if !ok || j.r.cfg.NoStoreBack {
		return nil, 0, nop, nil
	}
	ld, release, err := l.LeaseKV(ctx, key, fingerprint.CheckOf(tokens))
	if release == nil {
		release = nop
	}
	if err != nil || ld.KV == nil {
		return nil, 0, release, err
	}
	if ld.Release != nil {
		j.relMu.Lock()
		j.releases = append(j.releases, ld.Release)
		j.relMu.Unlock()
	}
	if j.checkKV(key, ld.KV, len(tokens)) != nil {
		return nil, 0, release, nil // unusable: compute it
	}
	return ld.KV, ld.Size, release, nil
}

// prefixKV returns S's KV at positions [0, |S|), nil for an empty S.
func (j *Job) prefixKV(ctx context.Context) (*model.Cache, error) {
	s := j.req.Prefix
	if len(s) == 0 {
		return nil, nil
	}
	var key fingerprint.Key
	if j.r.cfg.Source != nil {
		var err error
		key, err = fingerprint.SystemPrefixKey(j.r.cfg.Namespace, s, j.r.cfg.BlockSize)
		if err != nil {
			return nil, err
		}
		t := time.Now()
		kv, size, err := j.get(ctx, key, s)
		j.rec.Phases.Load += time.Since(t)
		if err == nil {
			j.rec.PrefixHit = true
			j.rec.BytesLoaded += size
			return kv, nil
		}
		miss, bad := j.miss(err)
		if !miss {
			return nil, fmt.Errorf("prefix KV: %w", err)
		}
		if bad {
			j.rec.BadEntries++
		}
	}
	t := time.Now()
	defer func() { j.rec.Phases.Compute += time.Since(t) }()
	b := model.Batch{Tokens: s, Pos: make([]int32, len(s))}
	for i := range b.Pos {
		b.Pos[i] = int32(i)
	}
	j.rec.Cost = j.rec.Cost.Add(PassCost(j.Model().Config, nil, b.Pos, j.Model().Config.Layers, 0))
	res, err := j.Model().Forward(ctx, nil, b, model.ForwardOptions{ReturnKV: true})
	if err != nil {
		return nil, fmt.Errorf("prefix KV: %w", err)
	}
	if j.r.cfg.Source != nil {
		j.put(ctx, key, s, res.KV)
	}
	return res.KV, nil
}

// chunkKV returns each chunk's KV (shared, read-only for hits), loading in
// parallel and computing misses as raw KV on top of prefix.
func (j *Job) chunkKV(ctx context.Context, prefix *model.Cache) ([]*model.Cache, error) {
	cfg := &j.r.cfg
	n := len(j.req.Chunks)
	out := make([]*model.Cache, n)
	if n == 0 {
		return out, nil
	}
	rawKeys := make([]fingerprint.Key, n)
	for i, c := range j.req.Chunks {
		rawKeys[i] = fingerprint.ChunkKeyAfter(cfg.Namespace, fingerprint.VariantRaw, j.req.Prefix, c)
	}
	missing := make([]bool, n)
	for i := range missing {
		missing[i] = true
	}
	firstFused := false // the first chunk is served from fused KV
	if cfg.Source != nil {
		t := time.Now()
		type outcome struct {
			size       int64
			fused, bad bool
		}
		oc := make([]outcome, n)
		g, gctx := errgroup.WithContext(ctx)
		g.SetLimit(8)
		for i, c := range j.req.Chunks {
			g.Go(func() error {
				keys := []fingerprint.Key{rawKeys[i]}
				fusedAt := -1 // index of the fused key in keys
				if cfg.Variant == fingerprint.VariantFused {
					fused := fingerprint.ChunkKeyAfter(cfg.Namespace, fingerprint.VariantFused, j.req.Prefix, c)
					if i == 0 && !cfg.FirstChunkFused { // raw is exact right after S
						keys, fusedAt = []fingerprint.Key{rawKeys[i], fused}, 1
					} else {
						keys, fusedAt = []fingerprint.Key{fused, rawKeys[i]}, 0
					}
				}
				for ki, key := range keys {
					kv, size, err := j.get(gctx, key, c)
					if err == nil {
						out[i], missing[i] = kv, false
						oc[i] = outcome{size: size, fused: ki == fusedAt}
						return nil
					}
					miss, bad := j.miss(err)
					if !miss {
						return fmt.Errorf("chunk %d KV: %w", i, err)
					}
					oc[i].bad = oc[i].bad || bad
				}
				return nil
			})
		}
		err := g.Wait()
		j.rec.Phases.Load += time.Since(t)
		if err != nil {
			return nil, err
		}
		for i, o := range oc {
			if o.bad {
				j.rec.BadEntries++
			}
			if missing[i] {
				continue
			}
			j.rec.BytesLoaded += o.size
			if o.fused {
				firstFused = firstFused || i == 0
				j.rec.FusedHits++
			} else {
				j.rec.RawHits++
			}
		}
	}
	// Raw KV of the first chunk (a raw hit or computed below) is exact.
	if !firstFused {
		j.exact = 1
	}
	j.rec.ExactChunks = j.exact
	t := time.Now()
	defer func() { j.rec.Phases.Compute += time.Since(t) }()
	s := len(j.req.Prefix)
	var cachePos []int32
	if prefix != nil {
		cachePos = prefix.Pos
	}
	for i, c := range j.req.Chunks {
		if !missing[i] {
			continue
		}
		kv, size, release, err := j.lease(ctx, rawKeys[i], c)
		if err != nil {
			return nil, fmt.Errorf("chunk %d KV: %w", i, err)
		}
		if kv != nil {
			// Another sidecar computed it while this one waited.
			j.rec.RawHits++
			j.rec.LeaseHits++
			j.rec.BytesLoaded += size
			out[i] = kv
			continue
		}
		j.rec.Misses++
		kv, err = chunkkv.RawKV(ctx, j.Model(), prefix, s, c)
		if err != nil {
			release()
			return nil, fmt.Errorf("chunk %d KV: %w", i, err)
		}
		j.rec.Cost = j.rec.Cost.Add(PassCost(j.Model().Config, cachePos, kv.Pos, j.Model().Config.Layers, 0))
		j.put(ctx, rawKeys[i], c, kv)
		release() // after the put: waiters find the blob
		out[i] = kv
	}
	return out, nil
}
