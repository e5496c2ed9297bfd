package model

import (
	"context"
	"fmt"
	"math"
	"runtime"
	"sort"
	"sync"
	"sync/atomic"
)

// Batch is the tokens a forward pass computes: Tokens[i] at position Pos[i],
// both [n], Pos strictly increasing.
type Batch struct {
	Tokens, Pos []int32
}

// ForwardOptions selects what Forward returns and whether it updates the cache.
type ForwardOptions struct {
	// Logits lists batch indices whose logits are returned (in this order).
	Logits []int
	// AttentionLayers lists layers whose attention is returned.
	AttentionLayers []int
	// AttentionSum returns, for those layers, only per-key sums over heads
	// and queries (Attention.Sum), not the full [Heads, Queries, Keys] matrix.
	AttentionSum bool
	// ReturnKV returns the batch's own per-layer K (pre-RoPE) and V as a Cache
	// with Pos = Batch.Pos.
	ReturnKV bool
	// Append adds the batch's KV to the cache after the pass. Cache entries
	// whose position equals a batch position (shadowed ones) are overwritten
	// in place; the others are appended in batch order. This modifies the
	// cache's arrays: Clone a shared cache first.
	Append bool
}

// Attention is the softmax attention of one layer for one pass.
//
// Key index: [0, C) are cache entries in cache order (C = cache.Len()),
// [C, C+n) the batch's tokens. Masked keys (later positions, shadowed cache
// entries) have weight 0.
type Attention struct {
	Heads, Queries, Keys int
	// Weights is [Heads, Queries, Keys], nil when only sums were asked.
	Weights []float32
	// Sum is [Keys]: the weights summed over heads and queries.
	Sum []float32
}

// ForwardResult is what Forward computed.
type ForwardResult struct {
	// Logits[i] is the [Vocab] logits of batch index opts.Logits[i].
	Logits [][]float32
	// Attention maps each of opts.AttentionLayers to its attention.
	Attention map[int]*Attention
	// KV is the batch's own KV (opts.ReturnKV), nil otherwise.
	KV *Cache
}

// State is a batch part-way through the decoder, for callers that step layer
// by layer (CacheBlend shrinks the batch between layers).
type State struct {
	Batch  Batch
	Hidden []float32 // [n, Dim] residual stream
	Layer  int       // next layer to run, in [0, Layers]; Layers = done
}

// StepOptions selects what Step returns.
type StepOptions struct {
	Attention    bool // return the layer's attention
	AttentionSum bool // only the per-key sums (implies Attention)
}

// StepResult is what one layer produced.
type StepResult struct {
	// K, V are the batch's [n, KVHeads, HeadDim] K (pre-RoPE) and V at the layer.
	K, V []float32
	// Attention is set when asked for.
	Attention *Attention
}

// checkBatch validates token ids and positions.
func (m *Model) checkBatch(b Batch) error {
	if len(b.Tokens) != len(b.Pos) {
		return fmt.Errorf("model: batch has %d tokens and %d positions", len(b.Tokens), len(b.Pos))
	}
	if len(b.Tokens) == 0 {
		return fmt.Errorf("model: empty batch")
	}
	for i, t := range b.Tokens {
		if t < 0 || int(t) >= m.Config.Vocab {
			return fmt.Errorf("%w: token %d at batch index %d, vocab [0, %d)", ErrToken, t, i, m.Config.Vocab)
		}
	}
	for i, p := range b.Pos {
		if p < 0 || int(p) >= m.Config.MaxPositions {
			return fmt.Errorf("%w: position %d at batch index %d, model limit [0, %d)", ErrPosition, p, i, m.Config.MaxPositions)
		}
		if i > 0 && p <= b.Pos[i-1] {
			return fmt.Errorf("%w: batch positions not strictly increasing (%d then %d at index %d)", ErrPosition, b.Pos[i-1], p, i)
		}
	}
	return nil
}

// Embed starts a batch: the token embeddings, at layer 0.
func (m *Model) Embed(b Batch) (*State, error) {
	if err := m.checkBatch(b); err != nil {
		return nil, err
	}
	d := m.Config.Dim
	st := &State{
		Batch:  Batch{Tokens: append([]int32(nil), b.Tokens...), Pos: append([]int32(nil), b.Pos...)},
		Hidden: make([]float32, len(b.Tokens)*d),
	}
	for i, t := range b.Tokens {
		copy(st.Hidden[i*d:(i+1)*d], m.tokEmb[int(t)*d:(int(t)+1)*d])
	}
	return st, nil
}

// Select keeps the rows (batch indices, sorted ascending) of the state.
func (st *State) Select(rows []int) *State {
	n := len(st.Batch.Tokens)
	d := len(st.Hidden) / max(n, 1)
	out := &State{Layer: st.Layer, Hidden: make([]float32, len(rows)*d),
		Batch: Batch{Tokens: make([]int32, len(rows)), Pos: make([]int32, len(rows))}}
	for j, r := range rows {
		if r < 0 || r >= n || (j > 0 && r <= rows[j-1]) {
			panic(fmt.Sprintf("model: State.Select rows %v not sorted unique in [0, %d)", rows, n))
		}
		out.Batch.Tokens[j] = st.Batch.Tokens[r]
		out.Batch.Pos[j] = st.Batch.Pos[r]
		copy(out.Hidden[j*d:(j+1)*d], st.Hidden[r*d:(r+1)*d])
	}
	return out
}

// Logits applies the final norm and the classifier to rows of the state
// (nil rows: all). Returns [len(rows)][Vocab]. Rows out of range are a
// programming error (panic); Forward validates its options first.
func (m *Model) Logits(st *State, rows []int) [][]float32 {
	n := len(st.Batch.Tokens)
	if rows == nil {
		rows = make([]int, n)
		for i := range rows {
			rows[i] = i
		}
	}
	if len(rows) == 0 {
		return nil
	}
	for _, r := range rows {
		if r < 0 || r >= n {
			panic(fmt.Sprintf("model: Logits row %d out of range [0, %d)", r, n))
		}
	}
	return m.logits(st.Hidden, rows)
}

// logits applies the final norm and the classifier to rows of hidden
// ([n, Dim]) in one GEMM: [len(rows)][Vocab], views of one array.
func (m *Model) logits(hidden []float32, rows []int) [][]float32 {
	c := m.Config
	xb := getFloats(len(rows) * c.Dim)
	defer putFloats(xb)
	x := *xb
	for j, r := range rows {
		rmsNorm(x[j*c.Dim:(j+1)*c.Dim], hidden[r*c.Dim:(r+1)*c.Dim], m.norm, c.NormEps)
	}
	out := make([]float32, len(rows)*c.Vocab)
	m.linear(out, x, m.cls, m.clsPack, len(rows), c.Vocab, c.Dim)
	res := make([][]float32, len(rows))
	for j := range rows {
		res[j] = out[j*c.Vocab : (j+1)*c.Vocab : (j+1)*c.Vocab]
	}
	return res
}

// Forward runs the batch through every layer against the cache (nil: empty).
//
// Each batch query at position p attends to the cache entries with position
// <= p and to the batch tokens with position <= p (itself included). A cache
// entry whose position equals a batch token's is shadowed by it: the fresh
// K/V replaces the cached one for this pass. The cache is modified only with
// opts.Append. Work is proportional to n × (cache length + n).
//
// Forward is ForwardBatch of one sequence; on the host backends the two run
// the same code.
func (m *Model) Forward(ctx context.Context, cache *Cache, b Batch, opts ForwardOptions) (*ForwardResult, error) {
	if err := m.checkForward(cache, b, opts); err != nil {
		return nil, err
	}
	if f, ok := m.backend.(Forwarder); ok {
		return f.Forward(ctx, cache, b, opts)
	}
	res, err := m.forwardHost(ctx, []SeqBatch{{Cache: cache, Batch: b, Opts: opts}})
	if err != nil {
		return nil, err
	}
	return res[0], nil
}

// checkForward validates Forward's arguments.
func (m *Model) checkForward(cache *Cache, b Batch, opts ForwardOptions) error {
	c := m.Config
	for _, i := range opts.Logits {
		if i < 0 || i >= len(b.Tokens) {
			return fmt.Errorf("model: logits index %d outside batch [0, %d)", i, len(b.Tokens))
		}
	}
	for _, l := range opts.AttentionLayers {
		if l < 0 || l >= c.Layers {
			return fmt.Errorf("model: attention layer %d outside [0, %d)", l, c.Layers)
		}
	}
	if opts.Append && cache == nil {
		return fmt.Errorf("model: Append needs a cache")
	}
	if err := cache.check(c); err != nil {
		return err
	}
	return m.checkBatch(b)
}

// merge writes o into c: entries at a position c already holds are
// overwritten in place, the others appended in o's order.
func (c *Cache) merge(o *Cache) {
	at := make(map[int32]int, len(o.Pos))
	for i, p := range o.Pos {
		at[p] = i
	}
	st := c.stride()
	var fresh []int
	replaced := make([]bool, len(o.Pos))
	for ci, p := range c.Pos {
		if oi, ok := at[p]; ok {
			for l := range c.Layers {
				copy(c.K[l][ci*st:(ci+1)*st], o.K[l][oi*st:(oi+1)*st])
				copy(c.V[l][ci*st:(ci+1)*st], o.V[l][oi*st:(oi+1)*st])
			}
			replaced[oi] = true
		}
	}
	for i, r := range replaced {
		if !r {
			fresh = append(fresh, i)
		}
	}
	if len(fresh) == len(o.Pos) {
		c.Append(o)
		return
	}
	for _, i := range fresh {
		c.Pos = append(c.Pos, o.Pos[i])
		for l := range c.Layers {
			c.K[l] = append(c.K[l], o.K[l][i*st:(i+1)*st]...)
			c.V[l] = append(c.V[l], o.V[l][i*st:(i+1)*st]...)
		}
	}
}

// Step runs layer st.Layer on the state against the cache entries of that
// layer, and advances st.Layer. Attention semantics are Forward's.
func (m *Model) Step(ctx context.Context, cache *Cache, st *State, opts StepOptions) (*StepResult, error) {
	if err := cache.check(m.Config); err != nil {
		return nil, err
	}
	if err := m.checkBatch(st.Batch); err != nil {
		return nil, err
	}
	if len(st.Hidden) != len(st.Batch.Tokens)*m.Config.Dim {
		return nil, fmt.Errorf("model: state hidden holds %d floats, want %d", len(st.Hidden), len(st.Batch.Tokens)*m.Config.Dim)
	}
	return m.step(ctx, cache, st, opts)
}

func (m *Model) step(ctx context.Context, cache *Cache, st *State, opts StepOptions) (*StepResult, error) {
	l := st.Layer
	if l < 0 || l >= m.Config.Layers {
		return nil, fmt.Errorf("model: state at layer %d, model has [0, %d)", l, m.Config.Layers)
	}
	n := len(st.Batch.Tokens)
	k, v := make([]float32, n*m.Config.KVDim()), make([]float32, n*m.Config.KVDim())
	seg := []segment{{cache: cache, begin: 0, end: n, pos: st.Batch.Pos, opts: opts}}
	if err := m.layer(ctx, l, st.Hidden, k, v, seg); err != nil {
		return nil, err
	}
	st.Layer++
	return &StepResult{K: k, V: v, Attention: seg[0].attn}, nil
}

// attentionRef is the previous attention kernel, kept as the reference the
// tests and benchmarks compare attention (attention.go) with: it
// materialises the [rows, keys] scores of each (head, query block), with
// exp and row sums in float64. Same contract as attention:
// softmax(q·K^T/sqrt(HeadDim))·V for the batch queries
// over [cache entries of layer l, batch keys]. q is [n, Heads, HeadDim]
// before RoPE (rotated in place); k, v [n, KVHeads, HeadDim] (k pre-RoPE,
// left untouched). It writes the [n, Heads*HeadDim] output into out and
// returns, when asked, the attention. par spreads the work over GOMAXPROCS
// goroutines; the result is the same either way.
func (m *Model) attentionRef(cache *Cache, l int, pos []int32, q, k, v, out []float32, opts StepOptions, par bool) *Attention {
	c := m.Config
	n, hd, kvh, nh := len(pos), c.HeadDim, c.KVHeads, c.Heads
	kvd := kvh * hd
	C := cache.Len()
	total := C + n
	forRange := parallelRange
	if !par {
		forRange = serialRange
	}

	// Keys and values regrouped per KV head: kr[h] is [total, hd], keys
	// rotated to their positions; vr likewise (unrotated).
	krBuf, vrBuf := getFloats(kvh*total*hd), getFloats(kvh*total*hd)
	defer putFloats(krBuf)
	defer putFloats(vrBuf)
	kr, vr := *krBuf, *vrBuf
	keyPos := make([]int32, total)
	visible := make([]bool, total)
	place := func(j int, kj, vj []float32, p int32, tmp, scratch []float32) {
		copy(tmp, kj)
		m.rope.apply(tmp, kvh, p, scratch)
		for h := range kvh {
			copy(kr[(h*total+j)*hd:(h*total+j+1)*hd], tmp[h*hd:(h+1)*hd])
			copy(vr[(h*total+j)*hd:(h*total+j+1)*hd], vj[h*hd:(h+1)*hd])
		}
	}
	forRange(total, 64, func(b, e int) {
		buf := getFloats(kvd + hd)
		defer putFloats(buf)
		tmp, scratch := (*buf)[:kvd], (*buf)[kvd:]
		for j := b; j < e; j++ {
			if j < C {
				p := cache.Pos[j]
				keyPos[j] = p
				i := sort.Search(n, func(i int) bool { return pos[i] >= p })
				visible[j] = !(i < n && pos[i] == p) // shadowed by a batch token
				place(j, cache.K[l][j*kvd:(j+1)*kvd], cache.V[l][j*kvd:(j+1)*kvd], p, tmp, scratch)
			} else {
				i := j - C
				keyPos[j] = pos[i]
				visible[j] = true
				place(j, k[i*kvd:(i+1)*kvd], v[i*kvd:(i+1)*kvd], pos[i], tmp, scratch)
			}
		}
	})
	m.ropeQueries(forRange, q, pos, nh, hd)
	a := newAttention(opts.Attention, opts.AttentionSum, nh, n, total)
	want := a != nil
	scale := float32(1 / math.Sqrt(float64(hd)))
	group := nh / kvh
	mm := m.matMul()
	// One task per (head, block of queries). A block's queries see at most
	// the keys [0, C+i1) (batch keys after the block are later positions);
	// of those, blockKeys keeps in key order only the ones some query of the
	// block can see (visible, position <= the block's last position), so a
	// recompute pass over scattered tokens does not pay for the cache beyond
	// them nor for shadowed entries. Scores are one GEMM [rows, keys] =
	// Q_h · K_h^T over the gathered keys and the output one GEMM [rows, hd] =
	// P · V_h; keys masked for a row get weight exactly 0. Each output is a
	// sum over keys in key order and dropping keys of weight 0 adds nothing
	// (x + 0 == x), so the result does not depend on how the batch was
	// split nor on the gathering. A task owns its slice of out, of Weights
	// and its own partial-sum row, so results do not depend on scheduling.
	const qBlock = 64
	nqb := (n + qBlock - 1) / qBlock
	blockKeys := make([][]int32, nqb) // [nqb][keys of the block], key indices
	contiguous := make([]bool, nqb)   // blockKeys[qb] is exactly [0, C+i1)
	for qb := range nqb {
		i1 := min((qb+1)*qBlock, n)
		pmax := pos[i1-1]
		idx := make([]int32, 0, C+i1)
		for j := 0; j < C+i1; j++ {
			if visible[j] && keyPos[j] <= pmax {
				idx = append(idx, int32(j))
			}
		}
		blockKeys[qb], contiguous[qb] = idx, len(idx) == C+i1
	}
	var partial []float32 // [nh*nqb, total]
	if want {
		partial = make([]float32, nh*nqb*total)
	}
	forRange(nh*nqb, 1, func(tb, te int) {
		rowsMax := min(qBlock, n)
		buf := getFloats(2*rowsMax*hd + rowsMax*total + 2*total*hd)
		defer putFloats(buf)
		qh := (*buf)[:rowsMax*hd]
		oh := (*buf)[rowsMax*hd : 2*rowsMax*hd]
		scores := (*buf)[2*rowsMax*hd : 2*rowsMax*hd+rowsMax*total]
		gather := (*buf)[2*rowsMax*hd+rowsMax*total:]
		for t := tb; t < te; t++ {
			h, qb := t/nqb, t%nqb
			kh := h / group
			i0, i1 := qb*qBlock, min((qb+1)*qBlock, n)
			idx := blockKeys[qb]
			rows, keys := i1-i0, len(idx)
			kh0 := kr[kh*total*hd : (kh*total+C+i1)*hd]
			vh0 := vr[kh*total*hd : (kh*total+C+i1)*hd]
			if !contiguous[qb] {
				kg, vg := gather[:keys*hd], gather[total*hd:total*hd+keys*hd]
				for jj, j := range idx {
					copy(kg[jj*hd:(jj+1)*hd], kh0[int(j)*hd:(int(j)+1)*hd])
					copy(vg[jj*hd:(jj+1)*hd], vh0[int(j)*hd:(int(j)+1)*hd])
				}
				kh0, vh0 = kg, vg
			}
			for i := i0; i < i1; i++ {
				copy(qh[(i-i0)*hd:(i-i0+1)*hd], q[(i*nh+h)*hd:(i*nh+h+1)*hd])
			}
			sc := scores[:rows*keys]
			m.backend.MatMulT(sc, qh, kh0, rows, keys, hd)
			for r := range rows {
				i := i0 + r
				p := pos[i]
				row := sc[r*keys : (r+1)*keys]
				last := int32(C + i) // batch keys after i are later positions
				mx := float32(math.Inf(-1))
				for jj, j := range idx {
					if j <= last && keyPos[j] <= p {
						mx = max(mx, row[jj]*scale)
					}
				}
				var sum float64
				for jj, j := range idx {
					if j > last || keyPos[j] > p {
						row[jj] = 0
						continue
					}
					e := float32(math.Exp(float64(row[jj]*scale - mx)))
					row[jj] = e
					sum += float64(e)
				}
				inv := float32(1 / sum)
				for jj := range row {
					row[jj] *= inv
				}
				if want {
					pr := partial[t*total : (t+1)*total]
					var wrow []float32
					if a.Weights != nil {
						wrow = a.Weights[(h*n+i)*total : (h*n+i+1)*total]
					}
					for jj, w := range row {
						j := idx[jj]
						pr[j] += w
						if wrow != nil {
							wrow[j] = w
						}
					}
				}
			}
			mm(oh[:rows*hd], sc, vh0, rows, hd, keys)
			for i := i0; i < i1; i++ {
				copy(out[(i*nh+h)*hd:(i*nh+h+1)*hd], oh[(i-i0)*hd:(i-i0+1)*hd])
			}
		}
	})
	if want {
		a.Sum = make([]float32, total)
		for t := range nh * nqb {
			row := partial[t*total : (t+1)*total]
			for j, x := range row {
				a.Sum[j] += x
			}
		}
	}
	return a
}

// serialRange is parallelRange on the calling goroutine: fn(0, n).
func serialRange(n, _ int, fn func(begin, end int)) {
	if n > 0 {
		fn(0, n)
	}
}

// parallelRange splits [0, n) into chunks of at least grain and runs fn on
// them over GOMAXPROCS goroutines. Chunks are fixed by n and grain alone.
func parallelRange(n, grain int, fn func(begin, end int)) {
	workers := runtime.GOMAXPROCS(0)
	if n <= grain || workers == 1 {
		if n > 0 {
			fn(0, n)
		}
		return
	}
	chunk := max(grain, (n+4*workers-1)/(4*workers))
	chunks := (n + chunk - 1) / chunk
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(workers, chunks) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				ci := int(next.Add(1) - 1)
				if ci >= chunks {
					return
				}
				fn(ci*chunk, min((ci+1)*chunk, n))
			}
		}()
	}
	wg.Wait()
}

// rmsNorm writes w * x / sqrt(mean(x²) + eps) into out (sum in float64).
func rmsNorm(out, x, w []float32, eps float64) {
	var ss float64
	for _, v := range x {
		ss += float64(v) * float64(v)
	}
	inv := float32(1 / math.Sqrt(ss/float64(len(x))+eps))
	for i, v := range x {
		out[i] = w[i] * (v * inv)
	}
}

// addBias adds b ([cols]) to every row of x ([rows, cols]).
func addBias(x, b []float32) {
	for i := range x {
		x[i] += b[i%len(b)]
	}
}

func addInto(dst, src []float32) {
	for i, v := range src {
		dst[i] += v
	}
}
