//go:build cuda

package cuda

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fusionrag/fusionrag/model"
)

// Llama3_8B is the shape of Meta-Llama-3-8B (weights are random: the
// benchmark measures time, not text).
func Llama3_8B() model.Config {
	return model.Config{Arch: model.ArchLlama, Dim: 4096, HiddenDim: 14336, Layers: 32, Heads: 32, KVHeads: 8,
		HeadDim: 128, Vocab: 128256, MaxPositions: 131072, RopeTheta: 500000, NormEps: 1e-5, BOS: 128000,
		EOS: []int32{128001}, RopeScaling: &model.RopeScaling{Type: "llama3", Factor: 8, LowFreqFactor: 1,
			HighFreqFactor: 4, OriginalMaxPositions: 8192}}
}

// benchRow is one measurement, written as JSON when FUSIONRAG_BENCH_JSON is
// set (scripts/cuda-check.sh merges it with the PyTorch numbers).
type benchRow struct {
	Tokens       int     `json:"tokens"`
	Mode         string  `json:"mode"`
	Ms           float64 `json:"ms"`
	TokensPerSec float64 `json:"tokens_per_s,omitempty"`
	SpeedupFull  float64 `json:"speedup_vs_full,omitempty"`
	Recomputed   int     `json:"recomputed_tokens,omitempty"`
}

// benchSizes reads FUSIONRAG_BENCH_TOKENS (comma-separated), default
// 4096,16384,32768.
func benchSizes(b *testing.B) []int {
	s := os.Getenv("FUSIONRAG_BENCH_TOKENS")
	if s == "" {
		s = "4096,16384,32768"
	}
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 128 {
			b.Fatalf("FUSIONRAG_BENCH_TOKENS: bad size %q (>= 128)", f)
		}
		out = append(out, n)
	}
	return out
}

// BenchmarkLlama8B measures, on a Llama-3-8B-shaped model in bf16, at each
// context size: a full prefill (the reference: prefill tokens/s and time to
// first token), "reuse" (the context's KV is on the device; only the
// question's 64 tokens are prefilled against it) and "fusionrag15" (the
// question pass also returns the last layer's attention sums, the top 15% of
// context tokens are selected and recomputed with the question in a second
// pass). Times are wall clock from the call to the logits on the host; KV
// loading from a store is not included (the cache is already on the device).
// Speed-ups are against the full prefill measured in the same run.
func BenchmarkLlama8B(b *testing.B) {
	cfg := Llama3_8B()
	rt, err := NewRandom(cfg, 1, Options{DType: BF16})
	if err != nil {
		b.Fatal(err)
	}
	defer rt.Close()
	b.Logf("attention kernel: %s", rt.AttentionKernel())
	ctx := context.Background()
	const question = 64
	var rows []benchRow
	for _, n := range benchSizes(b) {
		b.Run(fmt.Sprintf("tokens=%d", n), func(b *testing.B) {
			rng := rand.New(rand.NewPCG(uint64(n), 9))
			tokens := randomTokens(rng, n, cfg.Vocab)
			c := n - question
			all := model.Batch{Tokens: tokens, Pos: seq(0, n)}
			ctxBatch := model.Batch{Tokens: tokens[:c], Pos: seq(0, c)}
			qBatch := model.Batch{Tokens: tokens[c:], Pos: seq(c, n)}
			// The context's KV, which also warms up the kernels and cuBLAS.
			r, err := rt.Forward(ctx, nil, ctxBatch, model.ForwardOptions{ReturnKV: true})
			if err != nil {
				b.Fatal(err)
			}
			cache := r.KV
			defer cache.Free()
			last := model.ForwardOptions{Logits: []int{question - 1}}

			var fullNs float64
			measure := func(name string, warm bool, fn func() (int, error)) {
				b.Run(name, func(b *testing.B) {
					if warm {
						if _, err := fn(); err != nil {
							b.Fatal(err)
						}
					}
					var recomputed int
					b.ResetTimer()
					start := time.Now()
					for range b.N {
						if recomputed, err = fn(); err != nil {
							b.Fatal(err)
						}
					}
					ns := float64(time.Since(start).Nanoseconds()) / float64(b.N)
					b.StopTimer()
					row := benchRow{Tokens: n, Mode: name, Ms: ns / 1e6, Recomputed: recomputed}
					b.ReportMetric(ns/1e6, "ttft_ms")
					if name == "full" {
						fullNs = ns
						row.TokensPerSec = float64(n) / (ns / 1e9)
						b.ReportMetric(row.TokensPerSec, "tok/s")
					} else if fullNs > 0 {
						row.SpeedupFull = fullNs / ns
						b.ReportMetric(row.SpeedupFull, "x_full")
					}
					rows = append(rows, row)
				})
			}
			measure("full", false, func() (int, error) {
				_, err := rt.Forward(ctx, nil, all, model.ForwardOptions{Logits: []int{n - 1}})
				return n, err
			})
			measure("reuse", true, func() (int, error) {
				_, err := rt.Forward(ctx, cache, qBatch, last)
				return question, err
			})
			measure("fusionrag15", true, func() (int, error) {
				return fusionPass(ctx, rt, cache, tokens, c, qBatch, 0.15)
			})
		})
	}
	if path := os.Getenv("FUSIONRAG_BENCH_JSON"); path != "" {
		buf, _ := json.MarshalIndent(map[string]any{"device": "cuda", "dtype": "bf16", "model": "llama3-8b-shape",
			"attention_kernel": rt.AttentionKernel(), "rows": rows}, "", "  ")
		if err := os.WriteFile(path, buf, 0o644); err != nil {
			b.Error(err)
		}
	}
}

// fusionPass is FusionRAG's online stage on a device cache holding the
// context [0, c): the question pass returns the last layer's attention
// summed over heads and queries, the top ratio*c context tokens are
// recomputed with the question in one pass (shadowing their cached KV).
// Returns the number of tokens in the second pass.
func fusionPass(ctx context.Context, rt *Runtime, cache *Cache, tokens []int32, c int, q model.Batch, ratio float64) (int, error) {
	lastLayer := rt.Config().Layers - 1
	r, err := rt.Forward(ctx, cache, q, model.ForwardOptions{AttentionLayers: []int{lastLayer}, AttentionSum: true})
	if err != nil {
		return 0, err
	}
	sum := r.Attention[lastLayer].Sum[:c]
	idx := make([]int, c)
	for i := range idx {
		idx[i] = i
	}
	sort.Slice(idx, func(a, b int) bool { return sum[idx[a]] > sum[idx[b]] })
	k := int(ratio * float64(c))
	sel := idx[:k]
	sort.Ints(sel)
	b := model.Batch{Tokens: make([]int32, 0, k+len(q.Tokens)), Pos: make([]int32, 0, k+len(q.Tokens))}
	for _, i := range sel {
		b.Tokens = append(b.Tokens, tokens[i])
		b.Pos = append(b.Pos, int32(i)) // context entry i sits at position i
	}
	b.Tokens = append(b.Tokens, q.Tokens...)
	b.Pos = append(b.Pos, q.Pos...)
	if _, err := rt.Forward(ctx, cache, b, model.ForwardOptions{Logits: []int{len(b.Tokens) - 1}}); err != nil {
		return 0, err
	}
	return len(b.Tokens), nil
}
