package fusion

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fusionrag/fusionrag/chunkkv"
	"github.com/fusionrag/fusionrag/fingerprint"
	"github.com/fusionrag/fusionrag/kvstore"
	"github.com/fusionrag/fusionrag/model"

	"github.com/zeebo/xxh3"
)

// Config configures an Ingester. NewIngester validates it and fills the
// defaults.
type Config struct {
	// Model computes the KV. Required.
	Model *model.Model
	// Store receives the KV. Required.
	Store kvstore.Store
	// Tenant isolates the keys (see fingerprint.Namespace); empty is the
	// shared tenant.
	Tenant string
	// Prefix is S, the ids every prompt starts with (BOS included). Nil:
	// EncodePrefix(tokenizer, ""), i.e. BOS alone for llama-family
	// tokenizers. Every chunk key includes S.
	Prefix []int32
	// Neighbours is n, the neighbours each chunk is fused with. 0 selects
	// DefaultNeighbours.
	Neighbours int
	// Similarity finds the neighbours; nil selects BM25.
	Similarity Neighbourer
	// RawOnly stores raw KV only (no neighbour search, no fused KV).
	RawOnly bool
	// Workers is the number of chunks computed at once; 0: GOMAXPROCS.
	Workers int
	// BatchSize is the number of consecutive chunks a worker takes at a
	// time; 0 selects 8.
	BatchSize int
	// DType is the stored element type; 0 selects kvstore.Float32.
	DType kvstore.DType
	// Progress, when set, receives a progress bar (rate and ETA) per phase.
	Progress io.Writer
	// OnProgress, when set, is called after every chunk (from the workers:
	// keep it cheap).
	OnProgress func(Progress)
	// Logf reports skipped chunks and similar events; nil: log.Printf.
	Logf func(format string, args ...any)
}

// DefaultNeighbours is the paper's n.
const DefaultNeighbours = 10

// Progress is where an ingest stands.
type Progress struct {
	// Phase is "neighbours", "raw" or "fused".
	Phase string `json:"phase"`
	// Done and Total count the phase's chunks (skipped ones included).
	Done  int `json:"done"`
	Total int `json:"total"`
	// Elapsed is the phase's time so far.
	Elapsed time.Duration `json:"elapsed_ns"`
}

// Summary is the outcome of one ingest.
type Summary struct {
	// Chunks are the distinct chunks (by token ids) ingested; Duplicates
	// chunks seen more than once (stored once).
	Chunks     int `json:"chunks"`
	Duplicates int `json:"duplicates"`
	// Tokens is the sum of the distinct chunks' token counts.
	Tokens int `json:"tokens"`
	// Stored and Skipped (already in the store: a resumed ingest) per variant.
	RawStored    int `json:"raw_stored"`
	RawSkipped   int `json:"raw_skipped"`
	FusedStored  int `json:"fused_stored"`
	FusedSkipped int `json:"fused_skipped"`
	// FusedReplaced counts the chunks of FusedStored whose fused KV was
	// already stored but fused with other neighbours (a re-ingest among
	// other documents, or a store written before neighbour records): it
	// was computed again and replaced.
	FusedReplaced int `json:"fused_replaced"`
	// Failed chunks could not be computed (too long for the model...); the
	// first errors are in Errors.
	Failed int      `json:"failed"`
	Errors []string `json:"errors,omitempty"`
	// Truncated chunks had neighbours dropped to fit the model's context.
	Truncated int `json:"truncated"`
	// NeighbourTokens is the sum over fused chunks of their neighbours'
	// tokens (the extra context fusion attends to).
	NeighbourTokens int `json:"neighbour_tokens"`
	// Bytes is the size of the blobs stored by this run.
	Bytes int64 `json:"bytes"`
	// Phase wall times and the whole run's.
	NeighbourTime time.Duration `json:"neighbour_ns"`
	RawTime       time.Duration `json:"raw_ns"`
	FusedTime     time.Duration `json:"fused_ns"`
	Total         time.Duration `json:"total_ns"`
	// Interrupted: the context ended before the work did; run again to
	// resume.
	Interrupted bool `json:"interrupted"`
}

// ChunksPerMin is the distinct chunks ingested per minute of the whole run.
func (s Summary) ChunksPerMin() float64 { return perMin(s.Chunks, s.Total) }

// RawPerChunk and FusedPerChunk are the mean wall time per computed chunk
// of each phase (0 when none was computed).
func (s Summary) RawPerChunk() time.Duration   { return per(s.RawTime, s.RawStored) }
func (s Summary) FusedPerChunk() time.Duration { return per(s.FusedTime, s.FusedStored) }

func per(d time.Duration, n int) time.Duration {
	if n == 0 {
		return 0
	}
	return d / time.Duration(n)
}

func perMin(n int, d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	return float64(n) / d.Minutes()
}

// String is the human summary printed at the end of an ingest.
func (s Summary) String() string {
	out := fmt.Sprintf("chunks %d (duplicates %d, failed %d), tokens %d, stored %s in %d raw + %d fused blobs (skipped %d raw, %d fused), time %s, %.1f chunks/min",
		s.Chunks, s.Duplicates, s.Failed, s.Tokens, humanBytes(s.Bytes), s.RawStored, s.FusedStored, s.RawSkipped, s.FusedSkipped,
		s.Total.Round(time.Millisecond), s.ChunksPerMin())
	out += fmt.Sprintf("\nphases: neighbours %s, raw %s (%s/chunk), fused %s (%s/chunk)",
		s.NeighbourTime.Round(time.Millisecond), s.RawTime.Round(time.Millisecond), s.RawPerChunk().Round(time.Microsecond),
		s.FusedTime.Round(time.Millisecond), s.FusedPerChunk().Round(time.Microsecond))
	if s.RawPerChunk() > 0 && s.FusedPerChunk() > 0 {
		out += fmt.Sprintf(", fused/raw per chunk %.2fx", float64(s.FusedPerChunk())/float64(s.RawPerChunk()))
	}
	if s.Truncated > 0 {
		out += fmt.Sprintf("\n%d chunks had neighbours dropped to fit the context", s.Truncated)
	}
	if s.Interrupted {
		out += "\ninterrupted: run the same command again to resume"
	}
	return out
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return strconv.FormatInt(n, 10) + " B"
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// Ingester computes and stores the raw and fused KV of chunks. It is safe
// for concurrent Runs (they share nothing but the model and the store).
type Ingester struct {
	cfg   Config
	ns    fingerprint.Namespace
	src   *chunkkv.Store
	b     *Builder
	locks *keyLocks // shared by the queue's per-job copies
}

// chunkNamespace is the key namespace of chunk KV for a model, tenant and
// fusion parameters (fingerprint.ChunkNamespace; the tokenizer is zero for
// a model without one).
func chunkNamespace(m *model.Model, tenant, params string) (fingerprint.Namespace, error) {
	tokFP := ""
	if m.Tokenizer != nil {
		tokFP = m.Tokenizer.Fingerprint()
	}
	ns, err := fingerprint.ChunkNamespace(m.Fingerprint(), tokFP, tenant, params)
	if err != nil {
		return fingerprint.Namespace{}, fmt.Errorf("fusion: %w", err)
	}
	return ns, nil
}

// NewIngester validates cfg, fills its defaults and prefills S.
func NewIngester(ctx context.Context, cfg Config) (*Ingester, error) {
	if cfg.Model == nil {
		return nil, errors.New("fusion: Config.Model is nil")
	}
	if cfg.Store == nil {
		return nil, errors.New("fusion: Config.Store is nil")
	}
	if cfg.Prefix == nil {
		if cfg.Model.Tokenizer == nil {
			if cfg.Model.Config.BOS >= 0 {
				cfg.Prefix = []int32{cfg.Model.Config.BOS}
			}
		} else {
			cfg.Prefix = EncodePrefix(cfg.Model.Tokenizer, "")
		}
	}
	if cfg.Neighbours == 0 {
		cfg.Neighbours = DefaultNeighbours
	}
	if cfg.Neighbours < 0 {
		return nil, fmt.Errorf("fusion: Config.Neighbours %d must be >= 0", cfg.Neighbours)
	}
	if cfg.Similarity == nil {
		cfg.Similarity = &BM25{}
	}
	if cfg.Workers <= 0 {
		cfg.Workers = runtime.GOMAXPROCS(0)
	}
	if cfg.BatchSize <= 0 {
		cfg.BatchSize = 8
	}
	if cfg.DType == 0 {
		cfg.DType = kvstore.Float32
	}
	if cfg.Logf == nil {
		cfg.Logf = log.Printf
	}
	ns, err := chunkNamespace(cfg.Model, cfg.Tenant, fingerprint.FusionParams(cfg.Neighbours, cfg.Similarity.Name()))
	if err != nil {
		return nil, err
	}
	b, err := NewBuilder(ctx, cfg.Model, cfg.Prefix)
	if err != nil {
		return nil, err
	}
	return &Ingester{cfg: cfg, ns: ns, src: &chunkkv.Store{Store: cfg.Store, DType: cfg.DType}, b: b,
		locks: &keyLocks{m: map[fingerprint.Key]*keyLock{}}}, nil
}

// Config returns the validated configuration.
func (in *Ingester) Config() Config { return in.cfg }

// Namespace is the namespace the chunk keys are in.
func (in *Ingester) Namespace() fingerprint.Namespace { return in.ns }

// Key returns the store key of a chunk's KV of the given variant.
func (in *Ingester) Key(v fingerprint.Variant, tokens []int32) fingerprint.Key {
	return fingerprint.ChunkKeyAfter(in.ns, v, in.cfg.Prefix, tokens)
}

// run is the state of one Run.
type run struct {
	in     *Ingester
	chunks []Chunk
	raw    []fingerprint.Key
	fused  []fingerprint.Key
	sum    Summary
	mu     sync.Mutex // guards sum's counters and failed, written by workers
	// failed[i]: chunk i could not be computed; it is neither fused nor
	// anyone's neighbour.
	failed []bool
}

func (r *run) fail(i int, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.failed[i] {
		return
	}
	r.failed[i] = true
	id := r.chunks[i].ID
	r.sum.Failed++
	if len(r.sum.Errors) < MaxErrors {
		r.sum.Errors = append(r.sum.Errors, fmt.Sprintf("chunk %s: %v", id, err))
	}
	r.in.cfg.Logf("fusion: skipping chunk %s: %v", id, err)
}

// Run ingests chunks: raw KV of every chunk, then (unless RawOnly) fused KV
// on top of its neighbours. Chunks whose KV is already stored are skipped,
// so a Run that was interrupted (ctx cancelled, process killed) resumes
// where it stopped when run again; every KV is a pure function of the model,
// S and the chunks, so results do not depend on Workers or on interruptions.
// A chunk's fused KV also depends on its neighbours, which depend on the
// other chunks of the Run: beside it a neighbour record (a digest of the
// neighbours' keys, see neighbourCheck) says which ones it was fused with,
// and a chunk stored with other neighbours is fused again and replaced
// (issue 18 finding 5: the first ingest of a chunk won). Chunks with
// identical ids are one chunk; chunks without ids are ignored. Skipping
// relies on Store.Put being atomic (a key exists only once its whole blob
// does), which the mem, disk (rename) and Redis (parts first, then the
// manifest) tiers guarantee.
//
// A chunk the model cannot take is counted in Summary.Failed and skipped;
// store errors stop the run. When ctx ends, Run returns the summary so far
// with Interrupted set and ctx's error.
func (in *Ingester) Run(ctx context.Context, chunks []Chunk) (Summary, error) {
	start := time.Now()
	r := &run{in: in}
	seen := map[fingerprint.Key]bool{}
	for _, c := range chunks {
		if len(c.Tokens) == 0 {
			continue
		}
		k := in.Key(fingerprint.VariantRaw, c.Tokens)
		if seen[k] {
			r.sum.Duplicates++
			continue
		}
		seen[k] = true
		r.chunks = append(r.chunks, c)
		r.raw = append(r.raw, k)
		r.fused = append(r.fused, in.Key(fingerprint.VariantFused, c.Tokens))
		r.sum.Tokens += len(c.Tokens)
	}
	r.sum.Chunks = len(r.chunks)
	r.failed = make([]bool, len(r.chunks))
	err := r.do(ctx)
	r.sum.Total = time.Since(start)
	if err != nil && ctx.Err() != nil {
		r.sum.Interrupted = true
		return r.sum, ctx.Err()
	}
	return r.sum, err
}

func (r *run) do(ctx context.Context) error {
	in := r.in
	// Raw phase: every chunk's raw KV.
	t := time.Now()
	err := r.phase(ctx, "raw", func(ctx context.Context, i int) error {
		c := &r.chunks[i]
		if ok, err := in.cfg.Store.Has(ctx, r.raw[i]); err != nil {
			return err
		} else if ok {
			r.count(&r.sum.RawSkipped, 0)
			return nil
		}
		kv, err := in.b.Raw(ctx, c.Tokens)
		if err != nil {
			return chunkError{err}
		}
		return r.put(ctx, r.raw[i], c.Tokens, kv, &r.sum.RawStored)
	})
	r.sum.RawTime = time.Since(t)
	if err != nil || in.cfg.RawOnly {
		return err
	}
	// Every chunk that did not fail goes through fuse, which skips it when
	// its fused KV is stored with the same neighbours: the neighbours are
	// searched first, whatever the store holds (BM25 over a job is cheap
	// next to one fused prefill).
	var todo []int
	for i := range r.chunks {
		if !r.failed[i] {
			todo = append(todo, i)
		}
	}
	if len(todo) == 0 {
		return nil
	}
	t = time.Now()
	r.progress("neighbours", 0, 1, t)
	nb, err := in.cfg.Similarity.Neighbours(ctx, r.chunks, in.cfg.Neighbours)
	r.sum.NeighbourTime = time.Since(t)
	if err != nil {
		return fmt.Errorf("fusion: neighbours: %w", err)
	}
	if len(nb) != len(r.chunks) {
		return fmt.Errorf("fusion: %s returned %d neighbour lists for %d chunks", in.cfg.Similarity.Name(), len(nb), len(r.chunks))
	}
	r.progress("neighbours", 1, 1, t)
	t = time.Now()
	err = r.phaseOver(ctx, "fused", todo, func(ctx context.Context, i int) error {
		return r.fuse(ctx, i, nb[i])
	})
	r.sum.FusedTime = time.Since(t)
	return err
}

// chunkError marks a failure of one chunk's computation (not of the store).
type chunkError struct{ err error }

func (e chunkError) Error() string { return e.err.Error() }
func (e chunkError) Unwrap() error { return e.err }

func (r *run) count(p *int, bytes int64) {
	r.mu.Lock()
	*p++
	r.sum.Bytes += bytes
	r.mu.Unlock()
}

func (r *run) put(ctx context.Context, key fingerprint.Key, tokens []int32, kv *model.Cache, counter *int) error {
	_, err := r.putSum(ctx, key, tokens, kv, counter)
	return err
}

// putSum is put that also returns the xxh3 of the stored payload, which a
// fused chunk's neighbour record holds.
func (r *run) putSum(ctx context.Context, key fingerprint.Key, tokens []int32, kv *model.Cache, counter *int) (uint64, error) {
	b, err := r.in.src.Blob(key, fingerprint.CheckOf(tokens), kv)
	if err != nil {
		return 0, fmt.Errorf("fusion: store: %w", err)
	}
	sum := xxh3.Hash(b.Payload())
	if err := r.in.cfg.Store.Put(ctx, b); err != nil {
		return 0, fmt.Errorf("fusion: store: %w", err)
	}
	r.count(counter, int64(b.Size()))
	return sum, nil
}

// fuse computes and stores chunk i's fused KV on top of its neighbours nb.
func (r *run) fuse(ctx context.Context, i int, nb []int) error {
	in := r.in
	c := &r.chunks[i]
	ok := make([]int, 0, len(nb))
	for _, j := range nb {
		if j < 0 || j >= len(r.chunks) || j == i {
			return fmt.Errorf("fusion: %s gave chunk %d the neighbour %d", in.cfg.Similarity.Name(), i, j)
		}
		r.mu.Lock()
		bad := r.failed[j]
		r.mu.Unlock()
		if !bad {
			ok = append(ok, j)
		}
	}
	nb = ok
	lens := make([]int, len(nb))
	for k, j := range nb {
		lens[k] = len(r.chunks[j].Tokens)
	}
	if keep := in.b.Fits(len(c.Tokens), lens); keep < len(nb) {
		nb = nb[:keep]
		r.count(&r.sum.Truncated, 0)
	}
	// The neighbour record: skip when the stored fused KV was fused with
	// these very neighbours. The chunk's key is locked from this check to
	// the record's Put, so that two Runs of this process fusing it with
	// different neighbours cannot leave one's KV under the other's record;
	// two processes can, and the payload digest in the record tells: the
	// pair is then not "same" and the chunk is fused again.
	ver := r.neighbourCheck(nb)
	unlock := in.locks.lock(r.fused[i])
	defer unlock()
	had, same, err := r.storedWith(ctx, i, ver)
	if err != nil {
		return err
	}
	if same {
		r.count(&r.sum.FusedSkipped, 0)
		return nil
	}
	kvs := make([]*model.Cache, len(nb))
	var releases []func()
	defer func() {
		for _, rel := range releases {
			rel()
		}
	}()
	ntok := 0
	for k, j := range nb {
		ld, err := in.src.GetKV(ctx, r.raw[j], fingerprint.CheckOf(r.chunks[j].Tokens))
		switch {
		case err == nil:
			kvs[k] = ld.KV
			if ld.Release != nil {
				releases = append(releases, ld.Release)
			}
		case errors.Is(err, chunkkv.ErrMiss) || errors.Is(err, chunkkv.ErrKVMismatch):
			// Evicted from a bounded store, or failed to compute: compute
			// it again (not stored: the raw phase owns raw entries).
			kv, err := in.b.Raw(ctx, r.chunks[j].Tokens)
			if err != nil {
				return chunkError{fmt.Errorf("neighbour %s: %w", r.chunks[j].ID, err)}
			}
			kvs[k] = kv
		default:
			return fmt.Errorf("fusion: store: %w", err)
		}
		ntok += kvs[k].Len()
	}
	kv, err := in.b.Fused(ctx, c.Tokens, kvs)
	if err != nil {
		return chunkError{err}
	}
	// The fused KV first, its record second: a reader sees the old KV or
	// the new one whole (Put is atomic per key), and a crash between the
	// two leaves an old record, which only costs a fusion more next time.
	// Once the KV is stored its record is written even if the Run is
	// cancelled meanwhile (an interrupted ingest would otherwise leave KV
	// without a record, fused again on resume); recordTimeout bounds it.
	sum, err := r.putSum(ctx, r.fused[i], c.Tokens, kv, &r.sum.FusedStored)
	if err != nil {
		return err
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), recordTimeout)
	defer cancel()
	if err := r.putRecord(rctx, i, ver, sum); err != nil {
		return err
	}
	r.mu.Lock()
	r.sum.NeighbourTokens += ntok
	if had {
		r.sum.FusedReplaced++
	}
	r.mu.Unlock()
	return nil
}

// recordTimeout bounds the Put of a neighbour record that follows its
// fused KV after the Run's context is cancelled.
const recordTimeout = 10 * time.Second

// neighbourCheck is the digest of a fused chunk's neighbours as its record
// holds it: their count, and an xxh3 of the stored dtype and their raw
// keys in layout order (the keys include the model, tokenizer, tenant,
// fusion parameters, S and each neighbour's ids).
func (r *run) neighbourCheck(nb []int) fingerprint.Check {
	buf := make([]byte, 0, 1+16*len(nb))
	buf = append(buf, byte(r.in.cfg.DType))
	for _, j := range nb {
		buf = append(buf, r.raw[j][:]...)
	}
	return fingerprint.Check{Tokens: uint32(len(nb)), Sum: xxh3.Hash(buf)}
}

// recordKey is the key of chunk i's neighbour record
// (fingerprint.NeighbourRecordKey).
func (r *run) recordKey(i int) fingerprint.Key {
	return fingerprint.NeighbourRecordKey(r.in.ns, r.in.cfg.Prefix, r.chunks[i].Tokens)
}

// storedWith reports whether chunk i has fused KV stored (had) and whether
// its record says it was fused with the neighbours of digest ver (same).
// The record is a blob of one element whose Check is the digest, so a
// record of other neighbours is a Get miss (kvstore.ErrCollision); its
// payload (K and V, 8 bytes) holds the xxh3 of the fused payload it was
// written after, so that KV another process stored over this one's (each
// writing its KV, then its record) is not taken for the record's.
func (r *run) storedWith(ctx context.Context, i int, ver fingerprint.Check) (had, same bool, err error) {
	st := r.in.cfg.Store
	rec, err := st.Get(ctx, r.recordKey(i), ver)
	switch {
	case errors.Is(err, kvstore.ErrNotFound):
		if had, err = st.Has(ctx, r.fused[i]); err != nil {
			return false, false, fmt.Errorf("fusion: store: %w", err)
		}
		return had, false, nil
	case err != nil:
		return false, false, fmt.Errorf("fusion: store: %w", err)
	}
	want := binary.LittleEndian.Uint64(rec.Payload())
	_ = rec.Release()
	b, err := st.Get(ctx, r.fused[i], fingerprint.CheckOf(r.chunks[i].Tokens))
	switch {
	case errors.Is(err, kvstore.ErrNotFound):
		// Evicted, corrupt (a counted miss) or under another chunk's ids:
		// fused again.
		return false, false, nil
	case err != nil:
		return false, false, fmt.Errorf("fusion: store: %w", err)
	}
	got := xxh3.Hash(b.Payload())
	_ = b.Release()
	return true, got == want, nil
}

// putRecord stores chunk i's neighbour record: Check ver, payload the
// digest sum of the fused payload it describes.
func (r *run) putRecord(ctx context.Context, i int, ver fingerprint.Check, sum uint64) error {
	b, err := kvstore.NewBlob(kvstore.Meta{DType: kvstore.Float32, Layers: 1, KVHeads: 1, HeadDim: 1, Tokens: 1,
		PositionFree: true, Key: r.recordKey(i), Check: ver})
	if err != nil {
		return err
	}
	binary.LittleEndian.PutUint64(b.Payload(), sum)
	if err := r.in.cfg.Store.Put(ctx, b); err != nil {
		return fmt.Errorf("fusion: store: %w", err)
	}
	return nil
}

// keyLocks is a mutex per key, held by the Runs of one Ingester (and its
// queue's copies) while they check and replace a chunk's fused KV.
type keyLocks struct {
	mu sync.Mutex
	m  map[fingerprint.Key]*keyLock
}

type keyLock struct {
	mu   sync.Mutex
	refs int
}

// lock locks k and returns its unlock.
func (l *keyLocks) lock(k fingerprint.Key) func() {
	l.mu.Lock()
	kl := l.m[k]
	if kl == nil {
		kl = &keyLock{}
		l.m[k] = kl
	}
	kl.refs++
	l.mu.Unlock()
	kl.mu.Lock()
	return func() {
		kl.mu.Unlock()
		l.mu.Lock()
		if kl.refs--; kl.refs == 0 {
			delete(l.m, k)
		}
		l.mu.Unlock()
	}
}

func (r *run) phase(ctx context.Context, name string, fn func(context.Context, int) error) error {
	idx := make([]int, len(r.chunks))
	for i := range idx {
		idx[i] = i
	}
	return r.phaseOver(ctx, name, idx, fn)
}

// phaseOver runs fn over the chunk indices idx with the worker pool,
// batch by batch, reporting progress. A chunkError is counted and skipped;
// any other error stops the phase.
func (r *run) phaseOver(ctx context.Context, name string, idx []int, fn func(context.Context, int) error) error {
	start := time.Now()
	var bar *Bar
	if r.in.cfg.Progress != nil {
		bar = NewBar(r.in.cfg.Progress, name, len(idx))
		defer bar.Done()
	}
	var done atomic.Int64
	bs := r.in.cfg.BatchSize
	nb := (len(idx) + bs - 1) / bs
	return r.parallelN(ctx, nb, func(ctx context.Context, b int) error {
		for _, i := range idx[b*bs : min((b+1)*bs, len(idx))] {
			if err := ctx.Err(); err != nil {
				return err
			}
			err := fn(ctx, i)
			var ce chunkError
			if errors.As(err, &ce) && ctx.Err() == nil {
				r.fail(i, ce.err)
				err = nil
			}
			if err != nil {
				return err
			}
			d := int(done.Add(1))
			if bar != nil {
				bar.Set(d)
			}
			r.progress(name, d, len(idx), start)
		}
		return nil
	})
}

func (r *run) progress(phase string, done, total int, start time.Time) {
	if f := r.in.cfg.OnProgress; f != nil {
		f(Progress{Phase: phase, Done: done, Total: total, Elapsed: time.Since(start)})
	}
}

// parallelN runs fn(0..n-1) on Workers goroutines in index order of
// dispatch; the first error cancels the rest and is returned.
func (r *run) parallelN(ctx context.Context, n int, fn func(context.Context, int) error) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	next := make(chan int)
	var wg sync.WaitGroup
	var once sync.Once
	var first error
	for range min(r.in.cfg.Workers, max(n, 1)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				if err := fn(ctx, i); err != nil {
					once.Do(func() { first = err; cancel(err) })
				}
			}
		}()
	}
feed:
	for i := range n {
		select {
		case next <- i:
		case <-ctx.Done():
			break feed
		}
	}
	close(next)
	wg.Wait()
	if first != nil {
		return first
	}
	return context.Cause(ctx)
}
