package model

import (
	"context"
	"fmt"
	"math"
	"math/bits"
	"strings"
	"sync"
)

// SeqBatch is one sequence of a ForwardBatch call: Forward's arguments.
type SeqBatch struct {
	Cache *Cache // nil: empty
	Batch Batch
	Opts  ForwardOptions
}

// BatchError reports the sequence of a ForwardBatch call whose arguments
// were refused. Nothing was computed and no cache was modified, so the
// caller may drop that sequence and call again with the others.
type BatchError struct {
	Seq int   // index into the seqs argument
	Err error // what Forward would have returned for it
}

func (e *BatchError) Error() string {
	return fmt.Sprintf("model: batch sequence %d: %s", e.Seq, strings.TrimPrefix(e.Err.Error(), "model: "))
}

func (e *BatchError) Unwrap() error { return e.Err }

// ForwardBatch runs independent sequences in one pass: each result is what
// Forward(ctx, s.Cache, s.Batch, s.Opts) returns, computed together. The
// sequences' rows are concatenated for every weight GEMM (Q/K/V, output,
// SwiGLU and classifier projections), so the weights are streamed once per
// layer for all of them, which is what makes batched decoding cheaper than
// one Forward per sequence; attention runs per sequence against its own
// cache, sequences in parallel.
//
// Exactness: on the host backends every result is bit-identical to the
// sequence's solo Forward, because each output of the weight GEMMs is a
// dot product summed in a fixed order whatever the other rows (package
// blas, "Summation order"), and the rest (norms, RoPE, attention) is per
// row or per sequence. Backends with their own GEMMs (openblas) may round
// differently by batch shape, as their prefill and decode already do.
//
// Arguments are validated first: a sequence Forward would refuse makes
// ForwardBatch return a *BatchError naming it, with nothing computed. Two
// sequences may share a cache only if neither appends to it (caches that
// alias each other's arrays through Slice are the caller's business). With
// a Forwarder backend (CUDA) the sequences run one after the other through
// its Forward; if one fails there, the caches of the sequences before it
// may already have been appended to. On the host backends an error (the
// context's) leaves every cache as it was.
func (m *Model) ForwardBatch(ctx context.Context, seqs []SeqBatch) ([]*ForwardResult, error) {
	for i, s := range seqs {
		if err := m.checkForward(s.Cache, s.Batch, s.Opts); err != nil {
			return nil, &BatchError{Seq: i, Err: err}
		}
		if s.Cache == nil {
			continue
		}
		for j := range i {
			if seqs[j].Cache == s.Cache && (s.Opts.Append || seqs[j].Opts.Append) {
				return nil, &BatchError{Seq: i, Err: fmt.Errorf("model: cache shared with sequence %d and appended to", j)}
			}
		}
	}
	if len(seqs) == 0 {
		return []*ForwardResult{}, nil
	}
	if f, ok := m.backend.(Forwarder); ok {
		res := make([]*ForwardResult, len(seqs))
		for i, s := range seqs {
			r, err := f.Forward(ctx, s.Cache, s.Batch, s.Opts)
			if err != nil {
				return nil, fmt.Errorf("model: batch sequence %d: %w", i, err)
			}
			res[i] = r
		}
		return res, nil
	}
	return m.forwardHost(ctx, seqs)
}

// forwardHost is ForwardBatch on the host kernels, for validated seqs.
func (m *Model) forwardHost(ctx context.Context, seqs []SeqBatch) ([]*ForwardResult, error) {
	c := m.Config
	d, kvd := c.Dim, c.KVDim()
	segs := make([]segment, len(seqs))
	attn := make([]map[int]bool, len(seqs))
	res := make([]*ForwardResult, len(seqs))
	rows, keepKV, wantKV := 0, false, false
	for i, s := range seqs {
		n := len(s.Batch.Tokens)
		segs[i] = segment{cache: s.Cache, begin: rows, end: rows + n, pos: s.Batch.Pos}
		rows += n
		res[i] = &ForwardResult{}
		if len(s.Opts.AttentionLayers) > 0 {
			attn[i] = map[int]bool{}
			for _, l := range s.Opts.AttentionLayers {
				attn[i][l] = true
			}
			res[i].Attention = map[int]*Attention{}
		}
		keepKV = keepKV || s.Opts.ReturnKV
		wantKV = wantKV || s.Opts.ReturnKV || s.Opts.Append
	}

	// The residual stream [rows, Dim]: the token embeddings.
	hb := getFloats(rows * d)
	defer putFloats(hb)
	hidden := *hb
	for i, s := range seqs {
		for j, t := range s.Batch.Tokens {
			r := segs[i].begin + j
			copy(hidden[r*d:(r+1)*d], m.tokEmb[int(t)*d:(int(t)+1)*d])
		}
	}

	// Per layer K (pre-RoPE) and V of all rows, [rows, KVDim]. ReturnKV
	// hands out views, so then they are allocated; otherwise pooled (Append
	// copies them into the cache).
	ks, vs := make([][]float32, c.Layers), make([][]float32, c.Layers)
	var pooled []*[]float32
	defer func() {
		for _, p := range pooled {
			putFloats(p)
		}
	}()
	kvBuf := func() []float32 {
		if keepKV {
			return make([]float32, rows*kvd)
		}
		p := getFloats(rows * kvd)
		pooled = append(pooled, p)
		return *p
	}
	for l := range c.Layers {
		for i, s := range seqs {
			segs[i].opts = StepOptions{Attention: attn[i][l], AttentionSum: attn[i][l] && s.Opts.AttentionSum}
			segs[i].attn = nil
		}
		k, v := kvBuf(), kvBuf()
		if err := m.layer(ctx, l, hidden, k, v, segs); err != nil {
			return nil, err
		}
		if wantKV {
			ks[l], vs[l] = k, v
		} else {
			// Nothing keeps this layer's K/V: reuse the buffers.
			for _, p := range pooled {
				putFloats(p)
			}
			pooled = pooled[:0]
		}
		for i := range segs {
			if segs[i].attn != nil {
				res[i].Attention[l] = segs[i].attn
			}
		}
	}

	// One classifier GEMM for every sequence's logits rows.
	var lrows []int
	for i, s := range seqs {
		for _, r := range s.Opts.Logits {
			lrows = append(lrows, segs[i].begin+r)
		}
	}
	if len(lrows) > 0 {
		all := m.logits(hidden, lrows)
		for i, s := range seqs {
			if n := len(s.Opts.Logits); n > 0 {
				res[i].Logits, all = all[:n:n], all[n:]
			}
		}
	}

	for i, s := range seqs {
		if !s.Opts.Append && !s.Opts.ReturnKV {
			continue
		}
		b, e := segs[i].begin, segs[i].end
		kv := &Cache{Layers: c.Layers, KVHeads: c.KVHeads, HeadDim: c.HeadDim,
			Pos: append([]int32(nil), s.Batch.Pos...), K: make([][]float32, c.Layers), V: make([][]float32, c.Layers)}
		for l := range c.Layers {
			kv.K[l] = ks[l][b*kvd : e*kvd : e*kvd]
			kv.V[l] = vs[l][b*kvd : e*kvd : e*kvd]
		}
		if s.Opts.Append {
			s.Cache.merge(kv)
		}
		if s.Opts.ReturnKV {
			res[i].KV = kv
		}
	}
	return res, nil
}

// segment is one sequence's part of a concatenated pass: rows [begin, end)
// of the residual stream, attending to its own cache.
type segment struct {
	cache      *Cache
	begin, end int
	pos        []int32 // [end-begin] positions of the rows
	opts       StepOptions
	attn       *Attention // set by layer when opts ask for it
}

// parallelRows is the number of rows from which a segment's attention is
// spread over the cores on its own; smaller segments (decode steps) run
// side by side instead, one goroutine each.
const parallelRows = 16

// layer runs decoder layer l over hidden ([rows, Dim], the segments' rows
// back to back, updated in place). It writes the rows' K (pre-RoPE) and V,
// [rows, KVDim], into k and v, and sets segs[i].attn where asked.
func (m *Model) layer(ctx context.Context, l int, hidden, k, v []float32, segs []segment) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	c := m.Config
	w := &m.layers[l]
	d, qd, kvd, hd := c.Dim, c.QDim(), c.KVDim(), c.HiddenDim
	n := len(hidden) / d
	bufs := []*[]float32{getFloats(n * d), getFloats(n * qd), getFloats(n * qd), getFloats(n * d), getFloats(n * hd), getFloats(n * hd)}
	defer func() {
		for _, b := range bufs {
			putFloats(b)
		}
	}()
	xb, q, att, o, h1, h3 := *bufs[0], *bufs[1], *bufs[2], *bufs[3], *bufs[4], *bufs[5]

	// Attention block. The per-row and elementwise steps (norms, SwiGLU)
	// are spread over the cores like the GEMMs: each element is computed
	// the same way whatever the split, so the bits do not change (serial,
	// they were ~10% of a 2K prefill on 2 cores).
	normRows(xb, hidden, w.attnNorm, d, c.NormEps)
	m.linear(q, xb, w.wq, w.packed.wq, n, qd, d)
	m.linear(k, xb, w.wk, w.packed.wk, n, kvd, d)
	m.linear(v, xb, w.wv, w.packed.wv, n, kvd, d)
	if w.bq != nil {
		addBias(q, w.bq)
		addBias(k, w.bk)
		addBias(v, w.bv)
	}
	run := func(s *segment, par bool) {
		b, e := s.begin, s.end
		s.attn = m.attention(s.cache, l, s.pos, q[b*qd:e*qd], k[b*kvd:e*kvd], v[b*kvd:e*kvd], att[b*qd:e*qd], s.opts, par)
	}
	if len(segs) == 1 {
		run(&segs[0], true)
	} else {
		var small []*segment
		for i := range segs {
			if s := &segs[i]; s.end-s.begin >= parallelRows {
				run(s, true)
			} else {
				small = append(small, s)
			}
		}
		parallelRange(len(small), 1, func(b, e int) {
			for _, s := range small[b:e] {
				run(s, false)
			}
		})
	}
	m.linear(o, att, w.wo, w.packed.wo, n, d, qd)
	addInto(hidden, o)

	// Feed-forward block.
	normRows(xb, hidden, w.ffnNorm, d, c.NormEps)
	m.linear(h1, xb, w.w1, w.packed.w1, n, hd, d)
	m.linear(h3, xb, w.w3, w.packed.w3, n, hd, d)
	parallelRange(len(h1), 1<<14, func(b, e int) {
		h3 := h3[b:e]
		for i, g := range h1[b:e] {
			h1[b+i] = g / (1 + float32(math.Exp(float64(-g)))) * h3[i]
		}
	})
	m.linear(o, h1, w.w2, w.packed.w2, n, d, hd)
	addInto(hidden, o)
	return nil
}

// normRows writes rmsNorm of every d-wide row of x into out, rows spread
// over the cores.
func normRows(out, x, w []float32, d int, eps float64) {
	parallelRange(len(x)/d, 64, func(b, e int) {
		for i := b; i < e; i++ {
			rmsNorm(out[i*d:(i+1)*d], x[i*d:(i+1)*d], w, eps)
		}
	})
}

// floatPools recycle the scratch arrays of a pass by power-of-two capacity
// class: pool c holds arrays of capacity 1<<c. A decode step otherwise
// allocates its activations and the rotated copy of the whole cache anew
// for every layer.
var floatPools [40]sync.Pool

// getFloats returns an array of length n, not zeroed: callers overwrite it.
func getFloats(n int) *[]float32 {
	c := bits.Len(uint(max(n, 1) - 1)) // smallest c with 1<<c >= n
	if c >= len(floatPools) {
		s := make([]float32, n)
		return &s
	}
	if p, ok := floatPools[c].Get().(*[]float32); ok {
		*p = (*p)[:n]
		return p
	}
	s := make([]float32, n, 1<<c)
	return &s
}

// putFloats recycles an array from getFloats.
func putFloats(p *[]float32) {
	c := bits.Len(uint(cap(*p))) - 1
	if c < 0 || c >= len(floatPools) || cap(*p) != 1<<c {
		return
	}
	floatPools[c].Put(p)
}
