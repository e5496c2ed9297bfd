//go:build openblas

package openblas

import (
	"context"
	"fmt"
	"math"
	"os"
	"testing"
	"time"

	"github.com/fusionrag/fusionrag/model"
)

// BenchmarkPrefillBackends is full prefill of the synthetic 31M Llama on
// the openblas backend (ns/op, tokens/s) and x_cpu: the cpu backend's best
// time over openblas's best, in alternate rounds of the same run (> 1:
// openblas is faster). Attention runs the same Go kernel on both; only the
// weight GEMMs differ.
func BenchmarkPrefillBackends(b *testing.B) {
	dir, err := os.MkdirTemp("", "fusionrag-openblas-bench-")
	if err != nil {
		b.Fatal(err)
	}
	defer os.RemoveAll(dir)
	if err := model.WriteSynthetic(dir, model.SyntheticLlama30M(), 30, model.SaveOptions{}); err != nil {
		b.Fatal(err)
	}
	load := func(backend string) *model.Model {
		m, err := model.Load(dir, model.LoadOptions{Backend: backend})
		if err != nil {
			b.Fatal(err)
		}
		return m
	}
	cpuM, obM := load("cpu"), load(Name)
	defer cpuM.Close()
	defer obM.Close()
	for _, n := range []int{512, 2048} {
		b.Run(fmt.Sprintf("tokens=%d", n), func(b *testing.B) {
			batch := model.Batch{Tokens: make([]int32, n), Pos: make([]int32, n)}
			for i := range n {
				batch.Tokens[i], batch.Pos[i] = int32(3+(i*7919)%4000), int32(i)
			}
			opts := model.ForwardOptions{Logits: []int{n - 1}}
			run := func(m *model.Model) time.Duration {
				start := time.Now()
				if _, err := m.Forward(context.Background(), nil, batch, opts); err != nil {
					b.Fatal(err)
				}
				return time.Since(start)
			}
			bc, bo := time.Duration(math.MaxInt64), time.Duration(math.MaxInt64)
			for range 3 {
				bc, bo = min(bc, run(cpuM)), min(bo, run(obM))
			}
			b.ResetTimer()
			for b.Loop() {
				run(obM)
			}
			per := b.Elapsed() / time.Duration(b.N)
			b.ReportMetric(float64(n)/per.Seconds(), "tokens/s")
			b.ReportMetric(float64(bc)/float64(bo), "x_cpu")
		})
	}
}
