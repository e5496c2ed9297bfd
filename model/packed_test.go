package model

import (
	"context"
	"math"
	"testing"
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
			saved, savedCls := make([]packedLayer, len(m.layers)), m.clsPack
			for i := range m.layers {
				saved[i], m.layers[i].packed = m.layers[i].packed, packedLayer{}
			}
			m.clsPack = nil
			defer func() {
				for i := range m.layers {
					m.layers[i].packed = saved[i]
				}
				m.clsPack = savedCls
			}()
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
