package model

import (
	"context"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"
)

var (
	bench30MOnce sync.Once
	bench30M     *Model
	bench30MErr  error
)

// load30M writes the synthetic ~31M-parameter Llama (SyntheticLlama30M) as
// an HF directory once per process and loads it through Load, the path real
// models take.
func load30M(b *testing.B) *Model {
	b.Helper()
	bench30MOnce.Do(func() {
		dir, err := os.MkdirTemp("", "fusionrag-bench-30m-")
		if err != nil {
			bench30MErr = err
			return
		}
		if bench30MErr = WriteSynthetic(dir, SyntheticLlama30M(), 30, SaveOptions{}); bench30MErr != nil {
			return
		}
		bench30M, bench30MErr = Load(dir, LoadOptions{})
		os.RemoveAll(dir) // the mapping stays valid after unlink
	})
	if bench30MErr != nil {
		b.Fatal(bench30MErr)
	}
	return bench30M
}

// gemmBaseline times the weight GEMMs of one prefill of n tokens (every
// layer's q/k/v/o and SwiGLU projections, the classifier for one row) as
// the model runs them (packed weights on the cpu backend): the part of the
// work any implementation must do.
// Best of three, the first also warming the mapped weights.
func gemmBaseline(m *Model, n int) time.Duration {
	best := time.Duration(1<<63 - 1)
	for range 3 {
		best = min(best, gemmOnce(m, n))
	}
	return best
}

func gemmOnce(m *Model, n int) time.Duration {
	c := m.Config
	x := make([]float32, n*max(c.Dim, c.HiddenDim, c.QDim()))
	out := make([]float32, max(n*max(c.HiddenDim, c.Dim, c.QDim()), c.Vocab))
	start := time.Now()
	for _, w := range m.layers {
		m.linear(out, x, w.wq, w.packed.wq, n, c.QDim(), c.Dim)
		m.linear(out, x, w.wk, w.packed.wk, n, c.KVDim(), c.Dim)
		m.linear(out, x, w.wv, w.packed.wv, n, c.KVDim(), c.Dim)
		m.linear(out, x, w.wo, w.packed.wo, n, c.Dim, c.QDim())
		m.linear(out, x, w.w1, w.packed.w1, n, c.HiddenDim, c.Dim)
		m.linear(out, x, w.w3, w.packed.w3, n, c.HiddenDim, c.Dim)
		m.linear(out, x, w.w2, w.packed.w2, n, c.Dim, c.HiddenDim)
	}
	m.linear(out, x, m.cls, m.clsPack, 1, c.Vocab, c.Dim)
	return time.Since(start)
}

// BenchmarkPrefill measures prefill throughput of the synthetic 31M Llama at
// 512 and 2048 tokens (one pass, logits of the last token). Besides tokens/s
// it reports x_gemm: the pass's time over the weight GEMMs alone measured in
// the same run, i.e. the overhead of attention, norms and RoPE (at 2048
// tokens attention is quadratic and shows).
func BenchmarkPrefill(b *testing.B) {
	for _, n := range []int{512, 2048} {
		b.Run(fmt.Sprintf("tokens=%d", n), func(b *testing.B) {
			m := load30M(b)
			toks := randomTokens(m, n, 1)
			batch := Batch{Tokens: toks, Pos: seq(0, n)}
			base := gemmBaseline(m, n)
			b.ResetTimer()
			for b.Loop() {
				if _, err := m.Forward(context.Background(), nil, batch, ForwardOptions{Logits: []int{n - 1}}); err != nil {
					b.Fatal(err)
				}
			}
			per := b.Elapsed() / time.Duration(b.N)
			b.ReportMetric(float64(n)/per.Seconds(), "tokens/s")
			b.ReportMetric(float64(per)/float64(base), "x_gemm")
		})
	}
}

// BenchmarkDecode measures one-token decode steps against a 512-token cache.
func BenchmarkDecode(b *testing.B) {
	m := load30M(b)
	n := 512
	toks := randomTokens(m, n+1, 2)
	r, err := m.Forward(context.Background(), nil, Batch{Tokens: toks[:n], Pos: seq(0, n)}, ForwardOptions{ReturnKV: true})
	if err != nil {
		b.Fatal(err)
	}
	one := Batch{Tokens: toks[n:], Pos: []int32{int32(n)}}
	base := gemmBaseline(m, 1)
	b.ResetTimer()
	for b.Loop() {
		if _, err := m.Forward(context.Background(), r.KV, one, ForwardOptions{Logits: []int{0}}); err != nil {
			b.Fatal(err)
		}
	}
	per := b.Elapsed() / time.Duration(b.N)
	b.ReportMetric(1/per.Seconds(), "tokens/s")
	b.ReportMetric(float64(per)/float64(base), "x_gemm")
}
