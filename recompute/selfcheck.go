package recompute

import (
	"context"
	"fmt"
	"math"

	"github.com/fusionrag/fusionrag/model"
)

// SelfCheckTolerance bounds the relative logit difference SelfCheck accepts.
// Both checks compare paths that do the same fp32 operations in the same
// order (measured 0 on the cpu backend); 1e-4 leaves room for backends whose
// GEMM blocking depends on the batch size, while a RoPE or placement bug
// (wrong layout, scaling applied twice) shows up at 1e-2 or more.
const SelfCheckTolerance = 1e-4

// SelfCheck verifies, for a loaded model, the two facts chunk reuse rests on,
// on a small deterministic prompt: (1) one chunk reused right after S equals
// a full prefill (prefix caching), and (2) the fusionrag strategy at ratio
// 1.0 over several chunks placed at their offsets equals a full prefill. It
// is cheap (a few short prefills) and meant to run at startup: a model whose
// RoPE variant the runtime gets wrong fails it, and its requests should then
// never take the reuse path.
func SelfCheck(ctx context.Context, m *model.Model) error {
	r, err := New(Config{Model: m})
	if err != nil {
		return err
	}
	c := m.Config
	n := min(c.MaxPositions, 96)
	if n < 8 {
		return fmt.Errorf("recompute: self-check needs at least 8 positions, model has %d", c.MaxPositions)
	}
	tok := func(i int) int32 { return int32(3+(i*7919)%max(1, c.Vocab-3)) % int32(c.Vocab) }
	span := func(b, e int) []int32 {
		t := make([]int32, e-b)
		for i := range t {
			t[i] = tok(b + i)
		}
		return t
	}
	prefix := span(0, 2)
	if c.BOS >= 0 {
		prefix[0] = c.BOS
	}
	q := n / 8
	ctxLen := n - 2 - q
	cases := []struct {
		name, strategy string
		req            Request
	}{
		{"one chunk reused after S equals prefix caching", "reuse",
			Request{Prefix: prefix, Chunks: [][]int32{span(2, 2+ctxLen)}, Question: span(2+ctxLen, n)}},
		{"fusionrag at ratio 1.0 over placed chunks equals full prefill", "fusionrag",
			Request{Prefix: prefix, Chunks: [][]int32{span(2, 2+ctxLen/3), span(2+ctxLen/3, 2+2*ctxLen/3), span(2+2*ctxLen/3, 2+ctxLen)},
				Question: span(2+ctxLen, n), Ratio: 1}},
	}
	for _, tc := range cases {
		full := tc.req
		full.Strategy = "full"
		want, err := r.Run(ctx, full)
		if err != nil {
			return fmt.Errorf("recompute: self-check: %w", err)
		}
		tc.req.Strategy = tc.strategy
		got, err := r.Run(ctx, tc.req)
		if err != nil {
			return fmt.Errorf("recompute: self-check: %w", err)
		}
		var worst, scale float64
		for i, w := range want.LastLogits {
			scale = max(scale, math.Abs(float64(w)))
			worst = max(worst, math.Abs(float64(got.LastLogits[i])-float64(w)))
		}
		if d := worst / max(1, scale); !(d <= SelfCheckTolerance) {
			return fmt.Errorf("recompute: self-check failed: %s: logits differ by %.3g (tolerance %g)", tc.name, d, SelfCheckTolerance)
		}
	}
	return nil
}
