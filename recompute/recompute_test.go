package recompute

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/fusionrag/fusionrag/chunkkv"
	"github.com/fusionrag/fusionrag/fingerprint"
	"github.com/fusionrag/fusionrag/internal/modeltest"
	"github.com/fusionrag/fusionrag/internal/shareddata"
	"github.com/fusionrag/fusionrag/kvstore"
	"github.com/fusionrag/fusionrag/model"
	"github.com/google/go-cmp/cmp"
)

// Tolerances (fp32 throughout), relative to max(1, largest |reference|):
//
//   - exactTol: paths that compute every kept value with the same fp32
//     operations in the same order (ratio 1.0 vs full: S's rows come from a
//     separate prefill, but the GEMM sums each output in a fixed order
//     whatever the batch size, and attention visits the same keys in
//     position order). Measured 0; 1e-6 leaves room for a backend whose
//     blocking depends on the batch size, far below the 1e-3 a real bug shows.
//   - placeTol: the same KV placed through the store and the assembly; K is
//     stored before RoPE so placement only rewrites positions: also exact.
const (
	exactTol = 1e-6
	placeTol = 1e-6
)

// tinySynthetic is a small random Llama with rotate_half RoPE and GQA:
// structurally different from stories260K (interleaved), fast to run.
func tinySynthetic(t testing.TB) *model.Model {
	t.Helper()
	cfg := model.Config{Arch: model.ArchLlama, Dim: 64, HiddenDim: 160, Layers: 4, Heads: 4, KVHeads: 2, HeadDim: 16,
		Vocab: 300, MaxPositions: 1024, RopeTheta: 10000, NormEps: 1e-5, TiedEmbeddings: true, BOS: 1, EOS: []int32{2}}
	return modeltest.Synthetic(t, cfg, 42)
}

func testModels(t *testing.T) map[string]*model.Model {
	ms := map[string]*model.Model{"synthetic": tinySynthetic(t)}
	if _, ok := shareddata.Dir(); ok {
		ms["stories260K"] = modeltest.Stories(t)
	} else {
		t.Logf("SKIPPING stories260K variants: reference data not found (set %s)", shareddata.EnvVar)
	}
	return ms
}

// randomRequest builds S = BOS + 3 tokens, chunks of the given lengths and
// a question of q tokens, from a seeded generator.
func randomRequest(m *model.Model, seed uint64, chunks []int, q int) Request {
	r := rand.New(rand.NewPCG(seed, 99))
	tok := func(n int) []int32 {
		t := make([]int32, n)
		for i := range t {
			t[i] = int32(3 + r.IntN(m.Config.Vocab-3))
		}
		return t
	}
	req := Request{Prefix: append([]int32{m.Config.BOS}, tok(3)...), Question: tok(q)}
	for _, n := range chunks {
		req.Chunks = append(req.Chunks, tok(n))
	}
	return req
}

func run(t *testing.T, r *Reprocessor, req Request, strategy string, ratio float64) *Result {
	t.Helper()
	req.Strategy, req.Ratio = strategy, ratio
	res, err := r.Run(context.Background(), req)
	if err != nil {
		t.Fatalf("%s@%v: %v", strategy, ratio, err)
	}
	return res
}

// relDiff is max |a-b| / max(1, max |b|).
func relDiff(a, b []float32) float64 {
	if len(a) != len(b) {
		return math.Inf(1)
	}
	var worst, scale float64
	for i := range b {
		scale = max(scale, math.Abs(float64(b[i])))
		worst = max(worst, math.Abs(float64(a[i])-float64(b[i])))
	}
	return worst / max(1, scale)
}

// cacheDiff compares two prompt caches: positions must be equal, K and V
// within the returned relative difference.
func cacheDiff(t *testing.T, got, want *model.Cache) float64 {
	t.Helper()
	if d := cmp.Diff(want.Pos, got.Pos); d != "" {
		t.Fatalf("positions differ (-want +got):\n%s", d)
	}
	var worst float64
	for l := range want.Layers {
		worst = max(worst, relDiff(got.K[l], want.K[l]), relDiff(got.V[l], want.V[l]))
	}
	return worst
}

func newRep(t *testing.T, m *model.Model, src KVSource) *Reprocessor {
	t.Helper()
	r, err := New(Config{Model: m, Source: src})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// TestRatioOneEqualsFull: fusionrag, cacheblend (and epic, whose m then
// covers every chunk) at ratio 1.0 recompute every context token against
// S's exact KV, which is a full prefill.
func TestRatioOneEqualsFull(t *testing.T) {
	for name, m := range testModels(t) {
		t.Run(name, func(t *testing.T) {
			r := newRep(t, m, nil)
			req := randomRequest(m, 1, []int{23, 17, 30}, 9)
			full := run(t, r, req, "full", 0)
			for _, s := range []string{"fusionrag", "cacheblend", "epic"} {
				got := run(t, r, req, s, 1)
				if d := relDiff(got.LastLogits, full.LastLogits); d > exactTol {
					t.Errorf("%s@1.0 logits differ from full by %.3g (tolerance %g)", s, d, exactTol)
				}
				if d := cacheDiff(t, got.Cache, full.Cache); d > exactTol {
					t.Errorf("%s@1.0 KV differs from full by %.3g (tolerance %g)", s, d, exactTol)
				}
				// The first chunk's raw KV is exact right after S: the other 47.
				if got.Record.Recomputed != 47 || got.Record.ExactChunks != 1 {
					t.Errorf("%s@1.0 recomputed %d context tokens with %d exact chunks, want 47 and 1", s, got.Record.Recomputed, got.Record.ExactChunks)
				}
			}
		})
	}
}

// TestReuseOneChunkEqualsPrefixCaching: one chunk reused at its original
// offset (right after S, where its raw KV was computed) is prefix caching
// of S + C, so reuse equals a full prefill.
func TestReuseOneChunkEqualsPrefixCaching(t *testing.T) {
	for name, m := range testModels(t) {
		t.Run(name, func(t *testing.T) {
			r := newRep(t, m, nil)
			req := randomRequest(m, 2, []int{40}, 7)
			full := run(t, r, req, "full", 0)
			for _, s := range []string{"reuse", "fusionrag", "cacheblend", "epic"} {
				got := run(t, r, req, s, 0.15)
				if d := relDiff(got.LastLogits, full.LastLogits); d > exactTol {
					t.Errorf("%s logits differ from prefix caching by %.3g (tolerance %g)", s, d, exactTol)
				}
				if d := cacheDiff(t, got.Cache, full.Cache); d > exactTol {
					t.Errorf("%s KV differs from prefix caching by %.3g (tolerance %g)", s, d, exactTol)
				}
			}
		})
	}
}

func memStore(t testing.TB) kvstore.Store {
	t.Helper()
	s, err := kvstore.Open("mem://?max=256MiB")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// TestPlacementAtOffsetsIsExact: KV computed with RoPE at positions
// [o, o+|C|) (the slices of a full prefill), stored position-free and placed
// back at offset o by the assembly, gives exactly the full prefill: moving
// pre-RoPE K to a position and rotating it there equals RoPE at that
// position. Reuse over these in-context KVs must therefore equal full.
func TestPlacementAtOffsetsIsExact(t *testing.T) {
	for name, m := range testModels(t) {
		t.Run(name, func(t *testing.T) {
			src := &chunkkv.Store{Store: memStore(t)}
			r := newRep(t, m, src)
			req := randomRequest(m, 3, []int{31, 12, 25, 8}, 6)
			full := run(t, r, req, "full", 0) // full reads no store
			ns := r.Config().Namespace
			ctx := context.Background()
			for i, c := range req.Layout().Chunks {
				slice := full.Cache.Slice(c.Begin, c.End).Clone()
				slice.Shift(-int32(c.Begin)) // position-free: positions are dropped by the store
				key := fingerprint.ChunkKeyAfter(ns, fingerprint.VariantRaw, req.Prefix, req.Chunks[i])
				if err := src.PutKV(ctx, key, fingerprint.CheckOf(req.Chunks[i]), slice); err != nil {
					t.Fatal(err)
				}
			}
			got := run(t, r, req, "reuse", 0)
			if got.Record.RawHits != 4 || got.Record.Misses != 0 {
				t.Fatalf("record %+v: want 4 raw hits, 0 misses", got.Record)
			}
			if d := relDiff(got.LastLogits, full.LastLogits); d > placeTol {
				t.Errorf("logits differ by %.3g (tolerance %g)", d, placeTol)
			}
			if d := cacheDiff(t, got.Cache, full.Cache); d > placeTol {
				t.Errorf("KV differs by %.3g (tolerance %g)", d, placeTol)
			}
		})
	}
}

// TestStoreRoundTripAndImmutability: the first run computes and stores every
// chunk and S, the second loads them and gives the same result; no strategy
// modifies the stored KV.
func TestStoreRoundTripAndImmutability(t *testing.T) {
	m := tinySynthetic(t)
	store := memStore(t)
	src := &chunkkv.Store{Store: store}
	r := newRep(t, m, src)
	req := randomRequest(m, 4, []int{20, 33, 14}, 5)
	first := run(t, r, req, "fusionrag", 0.2)
	if rec := first.Record; rec.Misses != 3 || rec.RawHits != 0 || rec.PrefixHit {
		t.Fatalf("first run record: misses %d hits %d prefix %v; want 3, 0, false", rec.Misses, rec.RawHits, rec.PrefixHit)
	}
	ns := r.Config().Namespace
	ctx := context.Background()
	payload := func(c []int32) []byte {
		b, err := store.Get(ctx, fingerprint.ChunkKeyAfter(ns, fingerprint.VariantRaw, req.Prefix, c), fingerprint.CheckOf(c))
		if err != nil {
			t.Fatalf("chunk not stored back: %v", err)
		}
		defer b.Release()
		return slices.Clone(b.Payload())
	}
	var snapshot [][]byte
	for _, c := range req.Chunks {
		snapshot = append(snapshot, payload(c))
	}
	for _, s := range Strategies() {
		for _, ratio := range []float64{0, 0.2, 1} {
			got := run(t, r, req, s, ratio)
			if s == "full" {
				continue
			}
			if rec := got.Record; rec.RawHits != 3 || rec.Misses != 0 || !rec.PrefixHit || rec.BytesLoaded == 0 {
				t.Errorf("%s@%v record: hits %d misses %d prefix %v bytes %d", s, ratio, rec.RawHits, rec.Misses, rec.PrefixHit, rec.BytesLoaded)
			}
			if s == "fusionrag" && ratio == 0.2 {
				if d := relDiff(got.LastLogits, first.LastLogits); d > exactTol {
					t.Errorf("second run differs from the first by %.3g", d)
				}
			}
		}
	}
	for i, c := range req.Chunks {
		if !slices.Equal(payload(c), snapshot[i]) {
			t.Errorf("stored KV of chunk %d was modified", i)
		}
	}
}

// TestSelection checks what each strategy selects and records.
func TestSelection(t *testing.T) {
	m := tinySynthetic(t)
	r := newRep(t, m, nil)
	req := randomRequest(m, 5, []int{20, 40, 40}, 8) // context [4, 104)
	ctxSpan := req.Layout().Context()
	for _, tc := range []struct {
		strategy string
		ratio    float64
		want     int
	}{
		{"fusionrag", 0.15, 15}, {"cacheblend", 0.15, 15}, {"epic", 0.15, 15},
		{"fusionrag", 0.3, 30}, {"cacheblend", 0.05, 5}, {"epic", 0.1, 10},
		{"reuse", 0.5, 0}, {"fusionrag", 0, 0}, {"cacheblend", 0, 0}, {"epic", 0, 0},
	} {
		t.Run(fmt.Sprintf("%s@%v", tc.strategy, tc.ratio), func(t *testing.T) {
			got := run(t, r, req, tc.strategy, tc.ratio)
			rec := got.Record
			if rec.Recomputed != tc.want || len(rec.Selected) != tc.want {
				t.Fatalf("recomputed %d, selected %d; want %d", rec.Recomputed, len(rec.Selected), tc.want)
			}
			if !slices.IsSorted(rec.Selected) {
				t.Errorf("selected not ascending: %v", rec.Selected)
			}
			// The first chunk [4, 24) is exact (raw KV right after S): never selected.
			for _, p := range rec.Selected {
				if p < ctxSpan.Begin+20 || p >= ctxSpan.End {
					t.Errorf("selected position %d outside the selectable context [%d, %d)", p, ctxSpan.Begin+20, ctxSpan.End)
				}
			}
			if tc.strategy == "epic" && tc.want > 0 {
				// The budget is shared by the two selectable chunks of 40,
				// cumulative rounding: round(want/2), then the rest.
				first := int(math.Round(float64(tc.want) / 2))
				want := append(seq(24, 24+first), seq(64, 64+tc.want-first)...)
				if d := cmp.Diff(want, rec.Selected); d != "" {
					t.Errorf("epic selection (-want +got):\n%s", d)
				}
			}
			if got.Cache.Len() != req.Layout().Total() {
				t.Errorf("cache holds %d entries, want %d", got.Cache.Len(), req.Layout().Total())
			}
			for i, p := range got.Cache.Pos {
				if int(p) != i {
					t.Fatalf("cache entry %d at position %d", i, p)
				}
			}
			if rec.Cost.Total() <= 0 || rec.Phases.Total <= 0 {
				t.Errorf("record lacks cost or time: %+v", rec)
			}
		})
	}
}

// TestReuseZeroEqualsRatioZero: ratio 0 of fusionrag is reuse.
func TestReuseZeroEqualsRatioZero(t *testing.T) {
	m := tinySynthetic(t)
	r := newRep(t, m, nil)
	req := randomRequest(m, 6, []int{15, 25}, 4)
	reuse := run(t, r, req, "reuse", 0)
	for _, s := range []string{"fusionrag", "epic"} { // cacheblend@0 still recomputes layers [0, CheckLayer]
		got := run(t, r, req, s, 0)
		if d := relDiff(got.LastLogits, reuse.LastLogits); d > exactTol {
			t.Errorf("%s@0 differs from reuse by %.3g", s, d)
		}
	}
}

// TestBadInput: every malformed request or stored entry gives a clear,
// matchable error, never a panic.
func TestBadInput(t *testing.T) {
	m := tinySynthetic(t)
	r := newRep(t, m, nil)
	good := randomRequest(m, 7, []int{10, 10}, 4)
	for _, tc := range []struct {
		name string
		edit func(*Request)
		want error
	}{
		{"negative ratio", func(q *Request) { q.Ratio = -0.1 }, ErrRatio},
		{"ratio above one", func(q *Request) { q.Ratio = 1.5 }, ErrRatio},
		{"NaN ratio", func(q *Request) { q.Ratio = math.NaN() }, ErrRatio},
		{"empty chunk", func(q *Request) { q.Chunks = append(q.Chunks, nil) }, ErrEmptySegment},
		{"empty question", func(q *Request) { q.Question = nil }, ErrEmptySegment},
		{"unknown strategy", func(q *Request) { q.Strategy = "magic" }, ErrStrategy},
		{"token out of range", func(q *Request) { q.Chunks[1] = []int32{5, 300} }, ErrToken},
		{"negative token", func(q *Request) { q.Question = []int32{-1} }, ErrToken},
		{"too long", func(q *Request) { q.Chunks = append(q.Chunks, make([]int32, 1020)) }, ErrTooLong},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := good
			req.Chunks = slices.Clone(good.Chunks)
			tc.edit(&req)
			_, err := r.Run(context.Background(), req)
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
}

func TestFromSpans(t *testing.T) {
	toks := []int32{1, 10, 11, 12, 13, 14, 15, 16, 17}
	for _, tc := range []struct {
		name     string
		prefix   Span
		chunks   []Span
		question Span
		want     error
	}{
		{"ok", Span{0, 1}, []Span{{1, 4}, {4, 7}}, Span{7, 9}, nil},
		{"no chunks", Span{0, 3}, nil, Span{3, 9}, nil},
		{"overlap", Span{0, 1}, []Span{{1, 4}, {3, 7}}, Span{7, 9}, ErrOverlap},
		{"gap", Span{0, 1}, []Span{{1, 4}, {5, 7}}, Span{7, 9}, ErrOverlap},
		{"reversed", Span{0, 1}, []Span{{4, 1}}, Span{4, 9}, ErrOverlap},
		{"empty chunk", Span{0, 1}, []Span{{1, 1}, {1, 7}}, Span{7, 9}, ErrEmptySegment},
		{"empty question", Span{0, 1}, []Span{{1, 9}}, Span{9, 9}, ErrEmptySegment},
		{"short question", Span{0, 1}, []Span{{1, 4}}, Span{4, 8}, ErrOverlap},
		{"past end", Span{0, 1}, []Span{{1, 4}}, Span{4, 12}, ErrOverlap},
		{"prefix not at 0", Span{1, 2}, nil, Span{2, 9}, ErrOverlap},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, err := FromSpans(toks, tc.prefix, tc.chunks, tc.question, "", 0.15)
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			if err == nil {
				if d := cmp.Diff(toks, req.Tokens()); d != "" {
					t.Errorf("tokens (-want +got):\n%s", d)
				}
			}
		})
	}
}

// TestStoredKVMismatch: an entry under the right key with the wrong shape
// (as a buggy or foreign writer would leave) is a *KVMismatchError, or a
// recompute-and-overwrite with RecomputeBadKV; another namespace (model,
// tenant) never hits.
func TestStoredKVMismatch(t *testing.T) {
	m := tinySynthetic(t)
	store := memStore(t)
	src := &chunkkv.Store{Store: store}
	r := newRep(t, m, src)
	req := randomRequest(m, 8, []int{12, 9}, 3)
	ctx := context.Background()
	ns := r.Config().Namespace
	key := fingerprint.ChunkKeyAfter(ns, fingerprint.VariantRaw, req.Prefix, req.Chunks[1])
	wrong := model.NewCache(model.Config{Layers: 2, KVHeads: 2, HeadDim: 16}, 0)
	for range 9 {
		wrong.Append(&model.Cache{Layers: 2, KVHeads: 2, HeadDim: 16, Pos: []int32{0},
			K: [][]float32{make([]float32, 32), make([]float32, 32)}, V: [][]float32{make([]float32, 32), make([]float32, 32)}})
	}
	if err := src.PutKV(ctx, key, fingerprint.CheckOf(req.Chunks[1]), wrong); err != nil {
		t.Fatal(err)
	}
	req.Strategy, req.Ratio = "fusionrag", 0.15
	_, err := r.Run(ctx, req)
	var mm *KVMismatchError
	if !errors.As(err, &mm) || !errors.Is(err, ErrKVMismatch) || mm.Field != "shape" {
		t.Fatalf("got %v, want a shape *KVMismatchError", err)
	}
	t.Logf("error reads: %v", err)

	lenient, err := New(Config{Model: m, Source: src, RecomputeBadKV: true})
	if err != nil {
		t.Fatal(err)
	}
	res, err := lenient.Run(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	// Chunk 0 was never computed (the strict run stopped at chunk 1).
	if res.Record.BadEntries != 1 || res.Record.Misses != 2 {
		t.Errorf("record bad %d misses %d, want 1, 2", res.Record.BadEntries, res.Record.Misses)
	}
	if _, err := r.Run(ctx, req); err != nil { // overwritten with good KV
		t.Errorf("after overwrite: %v", err)
	}

	// Another tenant's namespace sees nothing of ours.
	other, err := New(Config{Model: m, Source: src, Namespace: fingerprint.Namespace{Model: ns.Model, Tenant: "other"}})
	if err != nil {
		t.Fatal(err)
	}
	res, err = other.Run(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if res.Record.RawHits != 0 || res.Record.PrefixHit {
		t.Errorf("tenant isolation broken: %+v", res.Record)
	}
}

func TestPassCost(t *testing.T) {
	c := model.Config{Dim: 8, HiddenDim: 16, Layers: 2, Heads: 2, KVHeads: 1, HeadDim: 4, Vocab: 10}
	perTok := 2.0 * (8*8 + 2*8*4 + 8*8 + 3*8*16)
	// Prefill of 4 tokens: query i sees i+1 keys: 10 key visits.
	got := PassCost(c, nil, []int32{0, 1, 2, 3}, 2, 1)
	want := Cost{GEMM: 4 * 2 * perTok, Attention: 10 * 2 * 4 * 8, Logits: 2 * 8 * 10}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("prefill cost (-want +got):\n%s", d)
	}
	// Two tokens at 1 and 4 over a cache [0, 4): position 1 sees 0, itself
	// (shadowing cached 1): 2; position 4 sees 0, 1 (fresh), 2, 3, 4: 5.
	got = PassCost(c, []int32{0, 1, 2, 3}, []int32{1, 4}, 1, 0)
	want = Cost{GEMM: 2 * perTok, Attention: 7 * 4 * 8}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("recompute cost (-want +got):\n%s", d)
	}
}

func TestTopK(t *testing.T) {
	nan := float32(math.NaN())
	for _, tc := range []struct {
		scores []float32
		k      int
		want   []int
	}{
		{[]float32{1, 5, 3, 5, 0}, 2, []int{1, 3}},
		{[]float32{1, 5, 3, 5, 0}, 3, []int{1, 2, 3}},
		{[]float32{nan, 1, 2}, 2, []int{1, 2}},
		{[]float32{2, 2, 2}, 2, []int{0, 1}},
		{[]float32{1}, 5, []int{0}},
		{nil, 3, nil},
		{[]float32{1, 2}, 0, nil},
	} {
		if d := cmp.Diff(tc.want, topK(tc.scores, tc.k)); d != "" {
			t.Errorf("topK(%v, %d) (-want +got):\n%s", tc.scores, tc.k, d)
		}
	}
}

func TestSelfCheck(t *testing.T) {
	for name, m := range testModels(t) {
		if err := SelfCheck(context.Background(), m); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	tiny := model.Config{Arch: model.ArchLlama, Dim: 8, HiddenDim: 8, Layers: 1, Heads: 1, KVHeads: 1, HeadDim: 8,
		Vocab: 16, MaxPositions: 4, RopeTheta: 10000, NormEps: 1e-5, BOS: -1}
	m := modeltest.Synthetic(t, tiny, 1)
	if err := SelfCheck(context.Background(), m); err == nil {
		t.Error("self-check on a 4-position model: no error")
	}
}
