package model

import (
	"context"
	"math"
	"testing"
	"time"

	"github.com/fusionrag/fusionrag/model/safetensors"
)

// TestPackedWeights checks that the cpu backend's packed linear layers give
// exactly the bits of the backend's MatMulT on the raw weights: the same
// prefill (every row's logits) and decode step run once packed, then with
// the packed copies dropped. Shapes: stories260K (or its synthetic
// stand-in), and a synthetic model whose dimensions are not multiples of
// the 16-column panel, with an untied classifier.
func TestPackedWeights(t *testing.T) {
	odd, err := Synthetic(Config{Arch: ArchLlama, Dim: 40, HiddenDim: 100, Layers: 2, Heads: 5, KVHeads: 1, HeadDim: 8,
		Vocab: 300, MaxPositions: 128, RopeTheta: 10000, NormEps: 1e-5, BOS: 1, EOS: []int32{2}}, 7)
	if err != nil {
		t.Fatal(err)
	}
	for name, m := range map[string]*Model{"real": realOrSynthetic(t), "odd": odd} {
		t.Run(name, func(t *testing.T) {
			if m.clsPack == nil || m.layers[0].packed.w2 == nil {
				t.Fatal("cpu backend did not pack the weights at load")
			}
			run := func() [][]float32 {
				const n = 37
				toks := randomTokens(m, n+1, 3)
				r, err := m.Forward(context.Background(), nil, Batch{Tokens: toks[:n], Pos: seq(0, n)},
					ForwardOptions{Logits: allRows(n), ReturnKV: true})
				if err != nil {
					t.Fatal(err)
				}
				d, err := m.Forward(context.Background(), r.KV, Batch{Tokens: toks[n:], Pos: []int32{n}}, ForwardOptions{Logits: []int{0}})
				if err != nil {
					t.Fatal(err)
				}
				return append(r.Logits, d.Logits...)
			}
			packed := run()
			defer dropPacked(m)()
			raw := run()
			for i := range raw {
				for j := range raw[i] {
					if math.Float32bits(packed[i][j]) != math.Float32bits(raw[i][j]) {
						t.Fatalf("row %d logit %d: packed %v, raw %v", i, j, packed[i][j], raw[i][j])
					}
				}
			}
			t.Logf("%d rows of %d logits bit-identical", len(raw), len(raw[0]))
		})
	}
}

// dropPacked removes the model's packed weights, so the linear layers run
// on the backend's MatMulT over the raw ones, and returns the undo.
func dropPacked(m *Model) (restore func()) {
	saved, savedCls := make([]packedLayer, len(m.layers)), m.clsPack
	for i := range m.layers {
		saved[i], m.layers[i].packed = m.layers[i].packed, packedLayer{}
	}
	m.clsPack = nil
	return func() {
		for i := range m.layers {
			m.layers[i].packed = saved[i]
		}
		m.clsPack = savedCls
	}
}

// BenchmarkPackedWeights times passes of the synthetic 31M Llama with the
// packed weights and without (the backend's MatMulT repacking every weight
// on every call), alternating the two inside every iteration so both see
// the same machine load, and reports ms of each and x_raw, raw time over
// packed. Shapes: decode (1 row against a 512-token cache), batched decode
// (16 sequences of 1 row, one ForwardBatch), and 64 and 640 rows against
// the cache (FusionRAG's partial recompute), logits of the last row.
func BenchmarkPackedWeights(b *testing.B) {
	m := load30M(b)
	const ctxLen = 512
	toks := randomTokens(m, ctxLen+640, 4)
	r, err := m.Forward(context.Background(), nil, Batch{Tokens: toks[:ctxLen], Pos: seq(0, ctxLen)}, ForwardOptions{ReturnKV: true})
	if err != nil {
		b.Fatal(err)
	}
	rows := func(n int) func() error {
		batch := Batch{Tokens: toks[ctxLen : ctxLen+n], Pos: seq(ctxLen, ctxLen+n)}
		return func() error {
			_, err := m.Forward(context.Background(), r.KV, batch, ForwardOptions{Logits: []int{n - 1}})
			return err
		}
	}
	seqs := make([]SeqBatch, 16)
	for i := range seqs {
		seqs[i] = SeqBatch{Cache: r.KV, Batch: Batch{Tokens: toks[ctxLen+i : ctxLen+i+1], Pos: []int32{ctxLen}}, Opts: ForwardOptions{Logits: []int{0}}}
	}
	cases := []struct {
		name string
		run  func() error
	}{
		{"decode", rows(1)},
		{"batch16", func() error { _, err := m.ForwardBatch(context.Background(), seqs); return err }},
		{"rows64", rows(64)},
		{"rows640", rows(640)},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			var packed, raw time.Duration
			for b.Loop() {
				t0 := time.Now()
				if err := c.run(); err != nil {
					b.Fatal(err)
				}
				t1 := time.Now()
				restore := dropPacked(m)
				err := c.run()
				restore()
				if err != nil {
					b.Fatal(err)
				}
				packed += t1.Sub(t0)
				raw += time.Since(t1)
			}
			n := float64(b.N)
			b.ReportMetric(packed.Seconds()*1e3/n, "ms_packed")
			b.ReportMetric(raw.Seconds()*1e3/n, "ms_raw")
			b.ReportMetric(float64(raw)/float64(packed), "x_raw")
		})
	}
}

// TestPackedReplacesConverted checks the memory rule of packWeights: a
// BF16 model's matrices, converted at load, are dropped once packed and
// namedWeights rebuilds them exactly; an F32 model's, the mapped file
// itself, stay.
func TestPackedReplacesConverted(t *testing.T) {
	cfg := Config{Arch: ArchLlama, Dim: 40, HiddenDim: 100, Layers: 2, Heads: 5, KVHeads: 1, HeadDim: 8,
		Vocab: 300, MaxPositions: 128, RopeTheta: 10000, NormEps: 1e-5, BOS: 1, EOS: []int32{2}}
	for _, dtype := range []string{"BF16", "F32"} {
		t.Run(dtype, func(t *testing.T) {
			dir := t.TempDir()
			if err := WriteSynthetic(dir, cfg, 11, SaveOptions{DType: dtype}); err != nil {
				t.Fatal(err)
			}
			m, err := Load(dir, LoadOptions{})
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			set, err := safetensors.OpenDir(dir)
			if err != nil {
				t.Fatal(err)
			}
			defer set.Close()
			w := m.layers[1]
			wide := w.packed.w2.Bytes() > 0
			if dropped := w.w2 == nil && m.cls == nil; dropped != (wide && dtype == "BF16") {
				t.Errorf("raw w2 and lm_head dropped = %v, want %v (packed layout %v)", dropped, wide && dtype == "BF16", wide)
			}
			for _, nw := range m.namedWeights() {
				want, err := set.Tensors[nw.Name].Float32()
				if err != nil {
					t.Fatal(err)
				}
				if len(nw.Data) != len(want) {
					t.Fatalf("%s: %d values, file holds %d", nw.Name, len(nw.Data), len(want))
				}
				for i := range want {
					if math.Float32bits(nw.Data[i]) != math.Float32bits(want[i]) {
						t.Fatalf("%s[%d] = %v, file holds %v", nw.Name, i, nw.Data[i], want[i])
					}
				}
			}
		})
	}
}
