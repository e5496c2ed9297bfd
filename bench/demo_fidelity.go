package bench

import (
	"context"
	"fmt"
	"math"
	"slices"

	"github.com/fusionrag/fusionrag/chunkkv"
	"github.com/fusionrag/fusionrag/fingerprint"
	"github.com/fusionrag/fusionrag/kvstore"
	"github.com/fusionrag/fusionrag/model"
	"github.com/fusionrag/fusionrag/recompute"
)

// demoFirstToken is one strategy's first-token distribution on one prompt,
// compared with full prefill's.
type demoFirstToken struct {
	// KL is KL(full || strategy) of the next-token distributions, nats.
	KL float64
	// Top1 reports that the argmax agrees with full's.
	Top1 bool
	// LogitErr is the relative L2 error of the last position's logits,
	// ||l - l_full|| / ||l_full||. Unlike KL it does not saturate when the
	// distributions are nearly one-hot, as a random-weight model's are.
	LogitErr float64
	// Normalized is 100 × (1 − LogitErr / LogitErr of reuse on RAW chunk
	// KV): the paper's normalised score (Eq. 11), its baseline plain reuse
	// of raw KV for every strategy (reuse of raw KV 0, full 100; the demo's
	// reuse row, on fused KV, is then above 0).
	Normalized float64
}

// demoFidelity measures, in process, how far each strategy's next-token
// distribution at the end of the prompt is from full prefill's. It runs
// package recompute directly over the same store and chunk KV the sidecar
// uses (fused variant, read only), because the engine does not return
// logprobs; the end-to-end counterpart is the greedy answer comparison.
type demoFidelity struct {
	rp  *recompute.Reprocessor
	raw *recompute.Reprocessor // the baseline: reuse of raw chunk KV
}

func newDemoFidelity(m *model.Model, store kvstore.Store, ns fingerprint.Namespace) (*demoFidelity, error) {
	rp, err := recompute.New(recompute.Config{Model: m, Source: &chunkkv.Store{Store: store}, Namespace: ns,
		Variant: fingerprint.VariantFused, NoStoreBack: true})
	if err != nil {
		return nil, err
	}
	raw, err := recompute.New(recompute.Config{Model: m, Source: &chunkkv.Store{Store: store}, Namespace: ns,
		Variant: fingerprint.VariantRaw, NoStoreBack: true})
	if err != nil {
		return nil, err
	}
	return &demoFidelity{rp: rp, raw: raw}, nil
}

// measure runs full and every strategy on p at ratio.
func (f *demoFidelity) measure(ctx context.Context, p demoPrompt, strategies []string, ratio float64) (map[string]demoFirstToken, error) {
	run := func(strategy string) ([]float32, error) {
		res, err := f.rp.Run(ctx, recompute.Request{Prefix: p.Prefix, Chunks: p.Chunks, Question: p.Question,
			Strategy: strategy, Ratio: ratio})
		if err != nil {
			return nil, fmt.Errorf("demo: fidelity, %s: %w", strategy, err)
		}
		return res.LastLogits, nil
	}
	ref, err := run("full")
	if err != nil {
		return nil, err
	}
	out := map[string]demoFirstToken{"full": {Top1: true, Normalized: 100}}
	// reuse (on the demo's fused KV) is always shown.
	todo := slices.DeleteFunc(slices.Clone(strategies), func(s string) bool { return s == "full" || s == "reuse" })
	todo = append([]string{"reuse"}, todo...)
	for _, s := range todo {
		l, err := run(s)
		if err != nil {
			return nil, err
		}
		out[s] = demoFirstToken{KL: KL(ref, l), Top1: model.Argmax(ref) == model.Argmax(l), LogitErr: relErr(l, ref)}
	}
	rawRes, err := f.raw.Run(ctx, recompute.Request{Prefix: p.Prefix, Chunks: p.Chunks, Question: p.Question, Strategy: "reuse"})
	if err != nil {
		return nil, fmt.Errorf("demo: fidelity, reuse of raw KV: %w", err)
	}
	base := relErr(rawRes.LastLogits, ref)
	for s, ft := range out {
		switch {
		case s == "full":
		case base > 0:
			ft.Normalized = 100 * (1 - ft.LogitErr/base)
		case ft.LogitErr == 0:
			ft.Normalized = 100 // raw reuse is exact already: so is everything that is exact
		}
		out[s] = ft
	}
	return out, nil
}

// relErr is ||x - ref|| / ||ref|| in float64 (0 when both are zero).
func relErr(x, ref []float32) float64 {
	var num, den float64
	for i := range ref {
		d := float64(x[i]) - float64(ref[i])
		num += d * d
		den += float64(ref[i]) * float64(ref[i])
	}
	if den == 0 {
		if num == 0 {
			return 0
		}
		return 1 // JSON has no Inf; any error against all-zero logits is total
	}
	return math.Sqrt(num / den)
}
