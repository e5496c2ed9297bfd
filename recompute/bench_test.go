package recompute

import (
	"context"
	"testing"
	"time"

	"github.com/fusionrag/fusionrag/chunkkv"
	"github.com/fusionrag/fusionrag/internal/modeltest"
	"github.com/fusionrag/fusionrag/model"
)

// BenchmarkStrategies times every strategy on a 1K-token context with chunk
// KV in the memory tier, and reports its speedup over full measured in the
// same run (never an absolute threshold) and its FLOP limit.
//
//	go test -run XXX -bench Strategies ./recompute
func BenchmarkStrategies(b *testing.B) {
	cfg := model.Config{Arch: model.ArchLlama, Dim: 128, HiddenDim: 352, Layers: 4, Heads: 4, KVHeads: 4, HeadDim: 32,
		Vocab: 512, MaxPositions: 2048, RopeTheta: 10000, NormEps: 1e-5, TiedEmbeddings: true, BOS: 1}
	m := modeltest.Synthetic(b, cfg, 3)
	r, err := New(Config{Model: m, Source: &chunkkv.Store{Store: memStore(b)}})
	if err != nil {
		b.Fatal(err)
	}
	chunks := make([]int, 8)
	for i := range chunks {
		chunks[i] = 128
	}
	req := randomRequest(m, 21, chunks, 32)
	ctx := context.Background()
	measure := func(strategy string, ratio float64, n int) (time.Duration, *Result) {
		req.Strategy, req.Ratio = strategy, ratio
		var best time.Duration
		var res *Result
		for range n {
			got, err := r.Run(ctx, req)
			if err != nil {
				b.Fatal(err)
			}
			if res == nil || got.Record.Phases.Total < best {
				best, res = got.Record.Phases.Total, got
			}
		}
		return best, res
	}
	measure("reuse", 0, 1) // stores S and the chunks
	fullT, full := measure("full", 1, 3)
	for _, s := range []struct {
		name  string
		ratio float64
	}{{"full", 1}, {"reuse", 0}, {"fusionrag", 0.15}, {"cacheblend", 0.15}, {"epic", 0.15}} {
		b.Run(s.name, func(b *testing.B) {
			req.Strategy, req.Ratio = s.name, s.ratio
			var res *Result
			for b.Loop() {
				if res, err = r.Run(ctx, req); err != nil {
					b.Fatal(err)
				}
			}
			perOp := b.Elapsed() / time.Duration(b.N)
			b.ReportMetric(float64(fullT)/float64(perOp), "x-full")
			b.ReportMetric(full.Record.Cost.Total()/res.Record.Cost.Total(), "x-flop-limit")
		})
	}
}
