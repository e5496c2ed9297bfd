package recompute

import (
	"context"
	"math"
	"sort"

	"github.com/fusionrag/fusionrag/model"
)

func init() {
	Register("full", StrategyFunc(runFull))
	Register("reuse", StrategyFunc(runReuse))
	Register("fusionrag", StrategyFunc(runFusionRAG))
	Register("cacheblend", StrategyFunc(runCacheBlend))
	Register("epic", StrategyFunc(runEPIC))
}

// budget is the number of context tokens a ratio asks to recompute:
// round(ratio × context), within [0, context].
func budget(ratio float64, context int) int {
	return min(context, max(0, int(math.Round(ratio*float64(context)))))
}

// topK returns the indices of the k largest scores, in ascending index order.
// Ties go to the lower index; NaN ranks below everything.
func topK(scores []float32, k int) []int {
	k = min(k, len(scores))
	if k <= 0 {
		return nil
	}
	idx := make([]int, len(scores))
	for i := range idx {
		idx[i] = i
	}
	less := func(a, b int) bool { // a ranks before b
		sa, sb := scores[a], scores[b]
		na, nb := sa != sa, sb != sb
		switch {
		case na != nb:
			return nb
		case na || sa == sb:
			return a < b
		}
		return sa > sb
	}
	sort.Slice(idx, func(i, j int) bool { return less(idx[i], idx[j]) })
	sel := idx[:k:k]
	sort.Ints(sel)
	return sel
}

// lastRow asks a pass for the logits of its last batch row.
func lastRow(b model.Batch) []int { return []int{len(b.Tokens) - 1} }

// runFull is a plain prefill of the whole prompt: the reference, and the
// fallback that needs nothing from the store.
func runFull(ctx context.Context, j *Job) error {
	toks := j.req.Tokens()
	b := model.Batch{Tokens: toks, Pos: make([]int32, len(toks))}
	for i := range b.Pos {
		b.Pos[i] = int32(i)
	}
	res, err := j.Forward(ctx, PhaseRecompute, nil, b, model.ForwardOptions{Logits: lastRow(b), ReturnKV: true})
	if err != nil {
		return err
	}
	j.rec.Recomputed = j.layout.Context().Len()
	j.Finish(res.KV, res.Logits[0])
	return nil
}

// recomputeOnAssembly runs the given context positions and Q through all
// layers against the assembly in one pass; their fresh KV replaces the
// assembled entries (the assembly is the job's private copy) and Q's is
// appended. This is the final pass of reuse, fusionrag and epic.
func recomputeOnAssembly(ctx context.Context, j *Job, asm *model.Cache, positions []int) error {
	b := j.Batch(positions)
	res, err := j.Forward(ctx, PhaseRecompute, asm, b, model.ForwardOptions{Logits: lastRow(b), Append: true})
	if err != nil {
		return err
	}
	if len(positions) > 0 {
		j.rec.Selected = positions
	}
	j.rec.Recomputed = len(positions)
	j.Finish(asm, res.Logits[0])
	return nil
}

// runReuse recomputes nothing: Q is prefilled on the assembled chunk KV
// (TurboRAG's "full reuse"). Ratio 0 of every other strategy.
func runReuse(ctx context.Context, j *Job) error {
	asm, err := j.Assembled(ctx)
	if err != nil {
		return err
	}
	return recomputeOnAssembly(ctx, j, asm, nil)
}

// runFusionRAG is the paper's online stage. A first pass prefills Q on the
// assembly and returns the last layer's attention of Q's queries summed over
// heads and query rows: one score per key. The k = round(ratio × context)
// selectable context tokens (Job.Selectable: S and an exact first chunk
// excluded) with the highest scores are then recomputed with Q in one pass,
// each attending to the whole assembled cache at its real position (stale
// entries of unselected tokens included).
//
// Q runs twice, in the scoring pass and in the final one: its KV from the
// first pass attended to stale context and cannot be kept exactly (every Q
// row attends to the recomputed tokens). When Q is long (a long query
// prompt), that second prefill of Q dominates the cost: see
// docs/benchmarks.md.
func runFusionRAG(ctx context.Context, j *Job) error {
	asm, err := j.Assembled(ctx)
	if err != nil {
		return err
	}
	span := j.Selectable()
	k := min(budget(j.req.Ratio, j.layout.Context().Len()), span.Len())
	if k == span.Len() && k > 0 { // everything selectable is selected: no need to score
		return recomputeOnAssembly(ctx, j, asm, seq(span.Begin, span.End))
	}
	last := j.Model().Config.Layers - 1
	qb := j.Batch(nil)
	opts := model.ForwardOptions{AttentionLayers: []int{last}, AttentionSum: true}
	if k == 0 { // the scoring pass is the answer: keep its KV and logits
		opts.Logits, opts.Append = lastRow(qb), true
	}
	r1, err := j.Forward(ctx, PhaseSelect, asm, qb, opts)
	if err != nil {
		return err
	}
	if k == 0 {
		j.Finish(asm, r1.Logits[0])
		return nil
	}
	// Key index i < asm.Len() is assembly entry i, i.e. position i.
	scores := r1.Attention[last].Sum[span.Begin:span.End]
	sel := topK(scores, k)
	for i := range sel {
		sel[i] += span.Begin
	}
	return recomputeOnAssembly(ctx, j, asm, sel)
}

// runEPIC recomputes the first tokens of every selectable chunk (the tokens
// that act as attention sinks once chunks are concatenated; EPIC's
// LegoLink) and Q. The budget, round(ratio × context), is shared among the
// chunks after the exact first one (Job.Selectable) in proportion to their
// lengths, by cumulative rounding: with the usual fixed-size chunks every
// chunk gets the same count, the total is the budget, and ratio 1.0 is exact.
func runEPIC(ctx context.Context, j *Job) error {
	asm, err := j.Assembled(ctx)
	if err != nil {
		return err
	}
	span := j.Selectable()
	total := min(budget(j.req.Ratio, j.layout.Context().Len()), span.Len())
	var sel []int
	done := 0 // selectable tokens of the chunks before c
	prev := 0 // tokens given so far
	for _, c := range j.layout.Chunks {
		if c.Begin < span.Begin {
			continue
		}
		done += c.Len()
		upto := int(math.Round(float64(total) * float64(done) / float64(max(1, span.Len()))))
		sel = append(sel, seq(c.Begin, c.Begin+min(c.Len(), upto-prev))...)
		prev = upto
	}
	return recomputeOnAssembly(ctx, j, asm, sel)
}

// runCacheBlend follows CacheBlend (arXiv 2405.16444): every selectable
// context token (Job.Selectable: an exact first chunk is left as it is) and
// Q run layers [0, CheckLayer] in full (their fresh KV replaces the
// assembly's there: it is exact and already paid for); at the check layer
// the per-token squared L2 deviation of the recomputed V from the cached V
// ranks the context tokens; only the top k = round(ratio × context) and Q run
// the remaining layers, the others keep their cached KV.
//
// V, not K: V enters the attention output linearly, so its deviation bounds
// the error a stale entry injects into every query that attends to it, while
// K's deviation acts through the softmax and is dominated by a few large
// dimensions (and CacheBlend's reference implementation ranks by V too).
func runCacheBlend(ctx context.Context, j *Job) error {
	asm, err := j.Assembled(ctx)
	if err != nil {
		return err
	}
	mc := j.Model().Config
	span := j.Selectable() // an exact first chunk is neither recomputed nor ranked
	nc, nq := span.Len(), len(j.req.Question)
	k := min(budget(j.req.Ratio, j.layout.Context().Len()), nc)
	if nc == 0 || k == nc { // nothing to choose: plain recompute on top of S
		return recomputeOnAssembly(ctx, j, asm, seq(span.Begin, span.End))
	}
	kvd := mc.KVDim()
	b := j.Batch(seq(span.Begin, span.End)) // rows [0, nc) context, [nc, nc+nq) Q
	st, err := j.Model().Embed(b)
	if err != nil {
		return err
	}
	qK, qV := make([][]float32, mc.Layers), make([][]float32, mc.Layers)
	rows := seq(0, nc+nq) // batch row r of the current state is context row rows[r]
	check := j.r.cfg.CheckLayer
	// While every selectable token is in the batch, all assembled entries
	// after span.Begin are shadowed: attend to S's (and the exact chunk's)
	// entries only (same result, without
	// rotating and skipping N stale keys per layer).
	prefixOnly := asm.Slice(0, span.Begin)
	for l := range mc.Layers {
		phase, against := PhaseSelect, prefixOnly
		if l > check {
			phase, against = PhaseRecompute, asm
		}
		r, err := j.Step(ctx, phase, against, st, model.StepOptions{})
		if err != nil {
			return err
		}
		n := len(rows) - nq // context rows in the state
		if l == check {
			dev := make([]float32, nc)
			for i := range nc {
				fresh := r.V[i*kvd : (i+1)*kvd]
				old := asm.V[l][(span.Begin+i)*kvd : (span.Begin+i+1)*kvd]
				var s float64
				for x, f := range fresh {
					d := float64(f - old[x])
					s += d * d
				}
				dev[i] = float32(s)
			}
			// Overwrite after measuring: layer l's assembly is not read again.
			for r2, row := range rows[:n] {
				p := span.Begin + row
				copy(asm.K[l][p*kvd:(p+1)*kvd], r.K[r2*kvd:(r2+1)*kvd])
				copy(asm.V[l][p*kvd:(p+1)*kvd], r.V[r2*kvd:(r2+1)*kvd])
			}
			qK[l], qV[l] = r.K[n*kvd:], r.V[n*kvd:]
			if l < mc.Layers-1 {
				keep := append(topK(dev, k), seq(nc, nc+nq)...)
				st = st.Select(keep)
				rows = keep
			}
			continue
		}
		for r2, row := range rows[:n] {
			p := span.Begin + row
			copy(asm.K[l][p*kvd:(p+1)*kvd], r.K[r2*kvd:(r2+1)*kvd])
			copy(asm.V[l][p*kvd:(p+1)*kvd], r.V[r2*kvd:(r2+1)*kvd])
		}
		qK[l], qV[l] = r.K[n*kvd:], r.V[n*kvd:]
	}
	logits := j.Logits(PhaseRecompute, st, []int{len(rows) - 1})
	// Append Q's KV.
	q := j.layout.Question
	for i := range nq {
		asm.Pos = append(asm.Pos, int32(q.Begin+i))
	}
	for l := range mc.Layers {
		asm.K[l] = append(asm.K[l], qK[l]...)
		asm.V[l] = append(asm.V[l], qV[l]...)
	}
	sel := make([]int, 0, len(rows)-nq)
	for _, row := range rows[:len(rows)-nq] {
		sel = append(sel, span.Begin+row)
	}
	if check == mc.Layers-1 {
		sel = seq(span.Begin, span.End) // every layer ran in full
	}
	j.rec.Selected = sel
	j.rec.Recomputed = len(sel)
	j.Finish(asm, logits[0])
	return nil
}

// seq returns [begin, end) as a slice.
func seq(begin, end int) []int {
	if end <= begin {
		return nil
	}
	s := make([]int, end-begin)
	for i := range s {
		s[i] = begin + i
	}
	return s
}
