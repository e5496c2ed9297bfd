package fusion

import (
	"context"
	"testing"
	"time"

	"github.com/fusionrag/fusionrag/model"
)

// BenchmarkFusedVsRaw measures the cost of fusion per chunk against the raw
// prefill of the same chunk, both in every iteration: the fused/raw ratio
// is the figure (absolute times depend on the machine). A 256-token chunk on
// 10 neighbours of 256 tokens, on the tests' synthetic model.
func BenchmarkFusedVsRaw(b *testing.B) {
	m := synthModel(b, tinyConfig(4096))
	ctx := context.Background()
	bl, err := NewBuilder(ctx, m, []int32{1})
	if err != nil {
		b.Fatal(err)
	}
	chunk := func(seed int) []int32 {
		c := make([]int32, 256)
		for i := range c {
			c[i] = int32(3 + (seed*7919+i*31)%509)
		}
		return c
	}
	var nb []*model.Cache
	for j := range 10 {
		kv, err := bl.Raw(ctx, chunk(j+1))
		if err != nil {
			b.Fatal(err)
		}
		nb = append(nb, kv)
	}
	c := chunk(0)
	var raw, fused time.Duration
	b.ResetTimer()
	for b.Loop() {
		t := time.Now()
		if _, err := bl.Raw(ctx, c); err != nil {
			b.Fatal(err)
		}
		raw += time.Since(t)
		t = time.Now()
		if _, err := bl.Fused(ctx, c, nb); err != nil {
			b.Fatal(err)
		}
		fused += time.Since(t)
	}
	b.ReportMetric(float64(raw.Microseconds())/float64(b.N)/1000, "raw-ms/chunk")
	b.ReportMetric(float64(fused.Microseconds())/float64(b.N)/1000, "fused-ms/chunk")
	b.ReportMetric(float64(fused)/float64(raw), "fused/raw")
}

// BenchmarkBM25 reports the neighbour search per chunk over a synthetic
// corpus of 2,000 chunks.
func BenchmarkBM25(b *testing.B) {
	words := Words("the quick brown fox jumps over lazy dog while seven wizards quietly judge boxing matches near an old river bank under pale moon light", true)
	chunks := make([]Chunk, 2000)
	for i := range chunks {
		var t []byte
		for k := range 60 {
			t = append(t, words[(i*13+k*k*7)%len(words)]...)
			t = append(t, ' ')
		}
		chunks[i] = Chunk{Text: string(t)}
	}
	for b.Loop() {
		if _, err := (&BM25{}).Neighbours(context.Background(), chunks, 10); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N)/float64(len(chunks)), "µs/chunk")
}
