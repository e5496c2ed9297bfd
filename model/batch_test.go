package model

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// batchCase is one sequence of a ForwardBatch test: a cache prefilled with
// the first cached tokens of its stream (0: nil cache), then a batch of the
// next n tokens.
type batchCase struct {
	name   string
	cached int
	n      int
	opts   ForwardOptions
	shared string // name of an earlier case whose cache this one reads (no Append)
}

// batchCases mixes what a continuous-batching scheduler sends together:
// decode steps against caches of various lengths, prefill chunks (one of
// them long enough for the parallel attention path), a first chunk with no
// cache, attention outputs and returned KV, and two read-only sequences
// sharing one cache.
func batchCases(layers int) []batchCase {
	last := layers - 1
	return []batchCase{
		{name: "decode-20", cached: 20, n: 1, opts: ForwardOptions{Logits: []int{0}, Append: true}},
		{name: "decode-3", cached: 3, n: 1, opts: ForwardOptions{Logits: []int{0}, Append: true}},
		{name: "first-chunk", n: 30, opts: ForwardOptions{Logits: []int{29, 0}, ReturnKV: true}},
		{name: "chunk-on-cache", cached: 5, n: 70, opts: ForwardOptions{Logits: allRows(70), Append: true,
			AttentionLayers: []int{0, last}}},
		{name: "decode-sum", cached: 40, n: 1, opts: ForwardOptions{Logits: []int{0}, Append: true, ReturnKV: true,
			AttentionLayers: []int{last}, AttentionSum: true}},
		{name: "small-chunk", cached: 9, n: 4, opts: ForwardOptions{Logits: []int{3}, Append: true, AttentionLayers: []int{0}}},
		{name: "reader-a", cached: 12, n: 2, opts: ForwardOptions{Logits: []int{1}}},
		{name: "reader-b", n: 3, shared: "reader-a", opts: ForwardOptions{Logits: []int{0, 2}, ReturnKV: true}},
		{name: "no-outputs", cached: 7, n: 1},
	}
}

// buildBatch prefills every case's cache (twice: one copy for the solo
// Forward, one for the batch) and returns both argument lists.
func buildBatch(t *testing.T, m *Model, cases []batchCase) (solo, batch []SeqBatch) {
	t.Helper()
	caches := map[string][2]*Cache{}
	for i, bc := range cases {
		toks := randomTokens(m, bc.cached+bc.n, uint64(100+i))
		var c [2]*Cache
		begin := bc.cached
		switch {
		case bc.shared != "":
			c = caches[bc.shared]
			begin = c[0].Len()
		case bc.cached > 0:
			c[0] = NewCache(m.Config, 0)
			if _, err := m.Forward(context.Background(), c[0], Batch{Tokens: toks[:bc.cached], Pos: seq(0, bc.cached)},
				ForwardOptions{Append: true}); err != nil {
				t.Fatal(err)
			}
			c[1] = c[0].Clone()
		}
		caches[bc.name] = c
		b := Batch{Tokens: toks[bc.cached:], Pos: seq(begin, begin+bc.n)}
		solo = append(solo, SeqBatch{Cache: c[0], Batch: b, Opts: bc.opts})
		batch = append(batch, SeqBatch{Cache: c[1], Batch: b, Opts: bc.opts})
	}
	return solo, batch
}

// TestForwardBatchMatchesSolo: every sequence of a batch gets exactly what
// its own Forward gives: logits, attention, returned KV and the appended
// cache. Exact (no tolerance): the pure-Go GEMM sums each output in a fixed
// order whatever the other rows are, and attention runs per sequence.
func TestForwardBatchMatchesSolo(t *testing.T) {
	for name, m := range testModels(t) {
		t.Run(name, func(t *testing.T) {
			cases := batchCases(m.Config.Layers)
			solo, batch := buildBatch(t, m, cases)
			want := make([]*ForwardResult, len(solo))
			for i, s := range solo {
				r, err := m.Forward(context.Background(), s.Cache, s.Batch, s.Opts)
				if err != nil {
					t.Fatal(err)
				}
				want[i] = r
			}
			got, err := m.ForwardBatch(context.Background(), batch)
			if err != nil {
				t.Fatal(err)
			}
			for i, bc := range cases {
				if diff := cmp.Diff(want[i], got[i]); diff != "" {
					t.Errorf("%s: batched result differs from solo Forward (-solo +batch):\n%s", bc.name, diff)
				}
				if diff := cmp.Diff(solo[i].Cache, batch[i].Cache); diff != "" {
					t.Errorf("%s: cache after the batch differs (-solo +batch):\n%s", bc.name, diff)
				}
			}
		})
	}
}

// TestForwardBatchDecodeLoop: 16 sequences with different prompts decode
// 12 greedy steps together, one ForwardBatch per step, joining and leaving
// at different steps (continuous batching); each token stream and cache
// equals the sequence's own prefill + decode loop.
func TestForwardBatchDecodeLoop(t *testing.T) {
	m := realOrSynthetic(t)
	const seqs, steps = 16, 12
	type stream struct {
		cache      *Cache
		toks       []int32
		start, end int // steps [start, end) run in the batch
	}
	solo := make([]stream, seqs)
	batch := make([]stream, seqs)
	for i := range seqs {
		prompt := randomTokens(m, 3+i%5, uint64(i))
		start, end := i%3, steps-i%4
		for _, s := range []*[]stream{&solo, &batch} {
			(*s)[i] = stream{cache: NewCache(m.Config, 0), toks: append([]int32(nil), prompt...), start: start, end: end}
		}
	}
	next := func(logits []float32) int32 {
		best := 0
		for j, v := range logits {
			if v > logits[best] {
				best = j
			}
		}
		return int32(best)
	}
	// A step of stream s: the tokens not yet in its cache (the whole prompt
	// first), logits of the last.
	arg := func(s *stream) SeqBatch {
		n := s.cache.Len()
		return SeqBatch{Cache: s.cache, Batch: Batch{Tokens: s.toks[n:], Pos: seq(n, len(s.toks))},
			Opts: ForwardOptions{Logits: []int{len(s.toks) - n - 1}, Append: true}}
	}
	for i := range solo {
		s := &solo[i]
		for range s.end - s.start {
			a := arg(s)
			r, err := m.Forward(context.Background(), a.Cache, a.Batch, a.Opts)
			if err != nil {
				t.Fatal(err)
			}
			s.toks = append(s.toks, next(r.Logits[0]))
		}
	}
	for step := range steps {
		var args []SeqBatch
		var who []int
		for i := range batch {
			if s := &batch[i]; step >= s.start && step < s.end {
				args = append(args, arg(s))
				who = append(who, i)
			}
		}
		res, err := m.ForwardBatch(context.Background(), args)
		if err != nil {
			t.Fatal(err)
		}
		for j, i := range who {
			batch[i].toks = append(batch[i].toks, next(res[j].Logits[0]))
		}
	}
	for i := range seqs {
		if diff := cmp.Diff(solo[i].toks, batch[i].toks); diff != "" {
			t.Errorf("sequence %d: tokens (-solo +batch):\n%s", i, diff)
		}
		if diff := cmp.Diff(solo[i].cache, batch[i].cache); diff != "" {
			t.Errorf("sequence %d: cache (-solo +batch):\n%s", i, diff)
		}
	}
}

// TestForwardBatchRefusals: bad arguments name their sequence in a
// *BatchError and leave every cache untouched; so does a cancelled context.
func TestForwardBatchRefusals(t *testing.T) {
	m := realOrSynthetic(t)
	good := func() *Cache {
		c := NewCache(m.Config, 0)
		if _, err := m.Forward(context.Background(), c, Batch{Tokens: []int32{1, 5, 6}, Pos: seq(0, 3)}, ForwardOptions{Append: true}); err != nil {
			t.Fatal(err)
		}
		return c
	}
	dec := func(c *Cache, tok int32, pos int32) SeqBatch {
		return SeqBatch{Cache: c, Batch: Batch{Tokens: []int32{tok}, Pos: []int32{pos}}, Opts: ForwardOptions{Logits: []int{0}, Append: true}}
	}
	shared := good()
	for _, tc := range []struct {
		name string
		seqs []SeqBatch
		seq  int
		is   error
	}{
		{"bad token", []SeqBatch{dec(good(), 5, 3), dec(good(), int32(m.Config.Vocab), 3)}, 1, ErrToken},
		{"bad position", []SeqBatch{dec(good(), 5, int32(m.Config.MaxPositions)), dec(good(), 5, 3)}, 0, ErrPosition},
		{"append without cache", []SeqBatch{dec(good(), 5, 3), dec(nil, 5, 0)}, 1, nil},
		{"logits index", []SeqBatch{{Batch: Batch{Tokens: []int32{1}, Pos: []int32{0}}, Opts: ForwardOptions{Logits: []int{1}}}}, 0, nil},
		{"shared cache appended", []SeqBatch{dec(shared, 5, 3), {Cache: shared, Batch: Batch{Tokens: []int32{7}, Pos: []int32{3}}}}, 1, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := make([]int, len(tc.seqs))
			for i, s := range tc.seqs {
				before[i] = s.Cache.Len()
			}
			res, err := m.ForwardBatch(context.Background(), tc.seqs)
			var be *BatchError
			if !errors.As(err, &be) || be.Seq != tc.seq || res != nil {
				t.Fatalf("got %v, %v; want a *BatchError for sequence %d", res, err, tc.seq)
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("error %v is not %v", err, tc.is)
			}
			for i, s := range tc.seqs {
				if s.Cache.Len() != before[i] {
					t.Errorf("sequence %d: cache grew from %d to %d", i, before[i], s.Cache.Len())
				}
			}
		})
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	c := good()
	if _, err := m.ForwardBatch(ctx, []SeqBatch{dec(c, 5, 3), dec(good(), 6, 3)}); !errors.Is(err, context.Canceled) || c.Len() != 3 {
		t.Errorf("cancelled: err %v, cache len %d (want context.Canceled, 3)", err, c.Len())
	}
	if res, err := m.ForwardBatch(context.Background(), nil); err != nil || len(res) != 0 {
		t.Errorf("empty batch: %v, %v", res, err)
	}
}

// TestForwardBatchForwarder: a backend that takes whole passes gets one
// validated Forward per sequence.
func TestForwardBatchForwarder(t *testing.T) {
	m, err := Synthetic(Config{Arch: ArchLlama, Dim: 16, HiddenDim: 32, Layers: 1, Heads: 2, KVHeads: 1, HeadDim: 8,
		Vocab: 40, MaxPositions: 64, RopeTheta: 10000, NormEps: 1e-5, TiedEmbeddings: true, BOS: 1, EOS: []int32{2}}, 1)
	if err != nil {
		t.Fatal(err)
	}
	fb := &forwarderBackend{}
	m.backend = fb
	b := func(tok int32) SeqBatch { return SeqBatch{Batch: Batch{Tokens: []int32{tok}, Pos: []int32{0}}} }
	res, err := m.ForwardBatch(context.Background(), []SeqBatch{b(3), b(4), b(5)})
	if err != nil || len(res) != 3 || len(fb.calls) != 3 || fb.calls[2].Tokens[0] != 5 {
		t.Fatalf("got %v, %v, calls %v", res, err, fb.calls)
	}
	if _, err := m.ForwardBatch(context.Background(), []SeqBatch{b(3), b(99)}); err == nil || len(fb.calls) != 3 {
		t.Errorf("bad token: err %v, %d calls (want an error before any call)", err, len(fb.calls))
	}
}

// BenchmarkDecodeBatch compares, on the synthetic 31M Llama with 16
// sequences each holding a 128-token cache, one decode step for all of
// them as 16 Forward calls (solo) and as one ForwardBatch, in the same run;
// x_batch is solo time over batched time.
func BenchmarkDecodeBatch(b *testing.B) {
	m := load30M(b)
	const seqs, cached = 16, 128
	caches := make([]*Cache, seqs)
	for i := range caches {
		r, err := m.Forward(context.Background(), nil, Batch{Tokens: randomTokens(m, cached, uint64(i)), Pos: seq(0, cached)},
			ForwardOptions{ReturnKV: true})
		if err != nil {
			b.Fatal(err)
		}
		caches[i] = r.KV
	}
	args := make([]SeqBatch, seqs)
	for i := range args {
		args[i] = SeqBatch{Cache: caches[i], Batch: Batch{Tokens: []int32{int32(7 + i)}, Pos: []int32{cached}},
			Opts: ForwardOptions{Logits: []int{0}}}
	}
	var solo, batched time.Duration
	b.ReportAllocs()
	for b.Loop() {
		t0 := time.Now()
		for _, a := range args {
			if _, err := m.Forward(context.Background(), a.Cache, a.Batch, a.Opts); err != nil {
				b.Fatal(err)
			}
		}
		t1 := time.Now()
		if _, err := m.ForwardBatch(context.Background(), args); err != nil {
			b.Fatal(err)
		}
		solo += t1.Sub(t0)
		batched += time.Since(t1)
	}
	n := float64(b.N)
	b.ReportMetric(seqs*n/solo.Seconds(), "tok/s-solo")
	b.ReportMetric(seqs*n/batched.Seconds(), "tok/s-batch")
	b.ReportMetric(solo.Seconds()/batched.Seconds(), "x_batch")
}
