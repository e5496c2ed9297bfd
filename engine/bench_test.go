package engine

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/fusionrag/fusionrag/fingerprint"
	"github.com/fusionrag/fusionrag/internal/modeltest"
	"github.com/fusionrag/fusionrag/kvstore"
	"github.com/fusionrag/fusionrag/model"
)

// benchModel is a small synthetic Llama (dim 128, 4 layers, 4 heads / 2 KV
// heads, SwiGLU 384, vocab 512, 4096 positions): big enough that prefill
// dominates TTFT, small enough for a 2-core machine.
func benchModel(tb testing.TB) *model.Model {
	tb.Helper()
	cfg := model.Config{Arch: model.ArchLlama, Dim: 128, HiddenDim: 384, Layers: 4, Heads: 4, KVHeads: 2, HeadDim: 32,
		Vocab: 512, MaxPositions: 4096, RopeTheta: 10000, NormEps: 1e-5, TiedEmbeddings: true, BOS: 1, EOS: []int32{2}}
	return modeltest.Synthetic(tb, cfg, 42)
}

// run submits one request of prompt ids and waits for it, returning the
// time to the first token.
func run(tb testing.TB, e *Engine, ids []int32, maxTokens int, ns string) time.Duration {
	req := &Request{Sampling: Sampling{Temperature: 0, TopP: 1, MaxTokens: maxTokens, IgnoreEOS: true}, KVNamespace: ns}
	q := &seq{ctx: context.Background(), req: req, prompt: ids, limit: e.limit, maxTokens: maxTokens, stopIDs: e.stopIDs}
	t0 := time.Now()
	if ns != "" {
		q.s = e.lm.NewSequence()
		q.cached = e.kv.Load(q.ctx, ns, ids, q.s)
	}
	if err := e.sched.submit(q); err != nil {
		tb.Fatal(err)
	}
	var ttft time.Duration
	for {
		o, err := q.next(context.Background())
		if err != nil {
			tb.Fatal(err)
		}
		q.mu.Lock()
		gen := q.generated
		q.mu.Unlock()
		if ttft == 0 && gen > 0 {
			ttft = time.Since(t0)
		}
		if o.done {
			if o.err != nil {
				tb.Fatal(o.err)
			}
			return ttft
		}
	}
}

func benchIDs(n int) []int32 {
	ids := make([]int32, n)
	ids[0] = 1
	for i := 1; i < n; i++ {
		ids[i] = int32(3 + (i*7919)%500)
	}
	return ids
}

// BenchmarkTTFT2K measures time to first token for a 2048-token prompt by
// full prefill and with the exact KV of the prompt published (pushed store),
// in the same run, and reports both and their ratio.
func BenchmarkTTFT2K(b *testing.B) {
	m := benchModel(b)
	lm := NewModelLM(m)
	push, err := kvstore.Open("mem://?max=256MiB")
	if err != nil {
		b.Fatal(err)
	}
	l, h, d := lm.KVShape()
	conn, err := NewConnector(ConnectorConfig{Model: lm.Fingerprint(), Tokenizer: byteTok{}.Fingerprint(),
		Layers: l, KVHeads: h, HeadDim: d, Pushed: push})
	if err != nil {
		b.Fatal(err)
	}
	e, err := New(Config{PrefillChunk: 4096}, lm, byteTok{}, WithConnector(conn))
	if err != nil {
		b.Fatal(err)
	}
	defer e.Close()
	ids := benchIDs(2048)
	kv := modeltest.Prefill(b, m, ids)
	key, _ := fingerprint.PrefixKey(fingerprint.KVNamespace(lm.Fingerprint(), byteTok{}.Fingerprint(), "beef"), ids, len(ids), fingerprint.BlockSize)
	blob, err := kvstore.FromFloat32(kvstore.Meta{DType: kvstore.Float32, Layers: l, KVHeads: h, HeadDim: d, Tokens: len(ids),
		PositionFree: true, Key: key, Check: fingerprint.CheckOf(ids)}, kv.K, kv.V)
	if err != nil {
		b.Fatal(err)
	}
	if err := push.Put(context.Background(), blob); err != nil {
		b.Fatal(err)
	}
	var full, cached time.Duration
	b.ResetTimer()
	for range b.N {
		full += run(b, e, ids, 1, "")
		cached += run(b, e, ids, 1, "beef")
	}
	n := float64(b.N)
	b.ReportMetric(full.Seconds()*1e3/n, "full-ms")
	b.ReportMetric(cached.Seconds()*1e3/n, "kv-ms")
	b.ReportMetric(full.Seconds()/cached.Seconds(), "speedup")
}

// BenchmarkDecode measures decode throughput (generated tokens/s after a
// short prompt) with 1 and with 16 concurrent requests, in the same run,
// and reports both and their ratio.
func BenchmarkDecode(b *testing.B) {
	m := benchModel(b)
	e, err := New(Config{MaxBatch: 16}, NewModelLM(m), byteTok{})
	if err != nil {
		b.Fatal(err)
	}
	defer e.Close()
	const tokens = 64
	ids := benchIDs(16)
	measure := func(conc int) float64 {
		t0 := time.Now()
		var wg sync.WaitGroup
		for range conc {
			wg.Add(1)
			go func() { defer wg.Done(); run(b, e, ids, tokens, "") }()
		}
		wg.Wait()
		return float64(conc*tokens) / time.Since(t0).Seconds()
	}
	var one, sixteen float64
	b.ResetTimer()
	for range b.N {
		one += measure(1)
		sixteen += measure(16)
	}
	n := float64(b.N)
	b.ReportMetric(one/n, "tok/s-1")
	b.ReportMetric(sixteen/n, "tok/s-16")
	b.ReportMetric(sixteen/one, "ratio")
}

// unbatchedLM hides an LM's ExtendBatch, so the scheduler runs one Extend
// per sequence (interleaved on Workers goroutines, not batched): the
// baseline BenchmarkDecodeConcurrency compares continuous batching with.
type unbatchedLM struct{ LM }

// BenchmarkDecodeConcurrency decodes 16 requests (8-token prompts, 32
// greedy tokens each) through the scheduler on a synthetic Llama with
// 4M parameters (16 MB of fp32 weights, beyond the L2 caches, so a decode
// step streams them): one after the other, then all at once, on the
// batching engine and on the same model with batching hidden, all in the
// same run. Reports decode tok/s with 1 and 16 concurrent requests and the
// concurrent/sequential wall-time ratios (ratio-batched, and
// ratio-interleaved for the unbatched scheduler).
func BenchmarkDecodeConcurrency(b *testing.B) {
	cfg := model.Config{Arch: model.ArchLlama, Dim: 256, HiddenDim: 768, Layers: 4, Heads: 8, KVHeads: 4, HeadDim: 32,
		Vocab: 2048, MaxPositions: 1024, RopeTheta: 10000, NormEps: 1e-5, TiedEmbeddings: true, BOS: 1, EOS: []int32{2}}
	m := modeltest.Synthetic(b, cfg, 7)
	const streams, tokens = 16, 32
	engines := map[string]*Engine{}
	for name, lm := range map[string]LM{"batched": NewModelLM(m), "interleaved": unbatchedLM{NewModelLM(m)}} {
		e, err := New(Config{MaxBatch: streams}, lm, byteTok{})
		if err != nil {
			b.Fatal(err)
		}
		defer e.Close()
		engines[name] = e
	}
	prompt := func(i int) []int32 {
		ids := benchIDs(8)
		ids[1] = int32(3 + i)
		return ids
	}
	sequential := func(e *Engine) time.Duration {
		t0 := time.Now()
		for i := range streams {
			run(b, e, prompt(i), tokens, "")
		}
		return time.Since(t0)
	}
	concurrent := func(e *Engine) time.Duration {
		t0 := time.Now()
		var wg sync.WaitGroup
		for i := range streams {
			wg.Add(1)
			go func() { defer wg.Done(); run(b, e, prompt(i), tokens, "") }()
		}
		wg.Wait()
		return time.Since(t0)
	}
	var seqB, conB, seqI, conI time.Duration
	for b.Loop() {
		seqB += sequential(engines["batched"])
		conB += concurrent(engines["batched"])
		seqI += sequential(engines["interleaved"])
		conI += concurrent(engines["interleaved"])
	}
	n := float64(b.N)
	b.ReportMetric(streams*tokens*n/seqB.Seconds(), "tok/s-1")
	b.ReportMetric(streams*tokens*n/conB.Seconds(), "tok/s-16")
	b.ReportMetric(conB.Seconds()/seqB.Seconds(), "ratio-batched")
	b.ReportMetric(conI.Seconds()/seqI.Seconds(), "ratio-interleaved")
}
