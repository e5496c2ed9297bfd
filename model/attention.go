package model

import (
	"math"
	"math/bits"
	"sort"
	"sync"

	"github.com/fusionrag/fusionrag/model/blas"
)

// The attention kernel: softmax(q·K^T/sqrt(HeadDim))·V over any query
// subset (full prefill, chunked prefill, the Q-sparse recompute of scattered
// tokens over an assembled cache, decode), without ever holding the
// [queries, keys] score matrix: keys are visited in tiles of attnTile with
// the online softmax (the FlashAttention recurrence). Per query row r it
// keeps the running max m_r, the running sum l_r and the unnormalised output
// acc_r; a tile t of keys with scores x_rj = (q_r·k_j)/sqrt(HeadDim) updates
//
//	m' = max(m_r, max_j x_rj)     (visible j only)
//	p_rj = exp(x_rj - m')         (0 for masked j)
//	l_r  = l_r·exp(m_r - m') + Σ_j p_rj
//	acc_r = acc_r·exp(m_r - m') + Σ_j p_rj·v_j
//
// and the output is acc_r / l_r.
//
// Layout. Per pass and layer, every key a query of the pass can see is
// rotated to its position once (the cache stores K before RoPE) into a
// buffer in the cache's layout. With attnPackRows queries or more, K and V
// are then laid out once per KV head and tile as the b operands of
// blas.PanelMulAdd: K tile [attnTile keys, HeadDim] for S = Q·K^T (panels
// of 16 keys), V tile for O = P·V (panels of 16 dims). That is
// O(keys·KVDim) once, not a transpose or repack per head and query block;
// the products then run on the blas micro-kernels (AVX2/AVX-512) at the
// rate of the weight GEMMs. With fewer queries (decode) nothing is packed:
// scores are blas.Dot8 on the rotated keys and P·V is blas.AxpyRows on V in
// place. Work is split into tasks of one KV head × one block of queries;
// the query heads of a GQA group share the K/V tiles (their rows are
// stacked).
//
// Masking is by position: each key has an effective position (its own, or
// +inf when shadowed by a batch token at the same position, or past the
// keys). A tile whose largest effective position is <= the smallest of the
// block's query positions runs unmasked; one whose smallest is > a row's
// position is skipped for that row (and for the block when > all); only the
// others compare positions per score.
//
// Exactness. Tiles are fixed by key index (tile t is keys [128t, 128t+128) of
// [cache, batch]), never by how the batch was split, and each score is one
// dot product in a fixed order (blas), so a query sees the same tiles with
// the same visible keys in chunked and one-shot prefill, in decode and in
// full recompute: a masked key has p = 0 exactly and adds +0 to every sum,
// a tile masked for a row is an exact no-op, so those paths stay bit for bit
// equal. Against attentionRef (the previous kernel: float64 exp and row sums,
// one softmax over all keys) the results differ by rounding only: the float32
// exp (expf, < 2 ulp), float32 sums in another order and the rescaling by
// exp(m_r - m'); see TestAttentionMatchesRef for the tolerance.
const (
	// attnTile is the keys per tile, a multiple of 16 (blas.PanelCols) and
	// 8 (the exp lanes). 128 measured 2-6% faster than 64 at 2K-4K keys
	// (fewer P·V calls and per-row steps per key) for ~1% more masked work
	// on the diagonal.
	attnTile = 128
	// attnRows is the number of query rows (query × head of a GQA group)
	// of a task: 8 groups of the 6-row micro-kernel, and S [48, 128] and acc
	// [48, HeadDim] stay in L1/L2 with the K/V tiles.
	attnRows = 48
	// attnPackRows is the number of queries from which K/V tiles are laid
	// out as panels for the GEMM micro-kernels; below it (decode) the
	// kernel reads them in place.
	attnPackRows = 8
)

// attentionUseRef makes every pass run attentionRef instead: benchmarks set
// it to time the previous kernel in the same run (never set concurrently
// with a pass).
var attentionUseRef = false

// keyInvisible is the effective position of a key no query may see.
const keyInvisible = math.MaxInt32

// attention computes softmax(q·K^T/sqrt(HeadDim))·V for the batch queries
// over [cache entries of layer l, batch keys]. q is [n, Heads, HeadDim]
// before RoPE (rotated in place); k, v [n, KVHeads, HeadDim] (k pre-RoPE,
// left untouched). It writes the [n, Heads*HeadDim] output into out and
// returns, when asked, the attention. par spreads the work over GOMAXPROCS
// goroutines; the result is the same either way.
//
// The common path (no attention asked) holds per task one [attnRows,
// attnTile] score tile only. When the weights or their sums are asked, a
// second pass over the tiles recomputes the scores and writes
// exp(x - m_r)/l_r with each row's final max and sum.
func (m *Model) attention(cache *Cache, l int, pos []int32, q, k, v, out []float32, opts StepOptions, par bool) *Attention {
	if attentionUseRef {
		return m.attentionRef(cache, l, pos, q, k, v, out, opts, par)
	}
	c := m.Config
	n, hd, kvh, nh := len(pos), c.HeadDim, c.KVHeads, c.Heads
	kvd := kvh * hd
	C := cache.Len()
	total := C + n
	group := nh / kvh
	forRange := parallelRange
	if !par {
		forRange = serialRange
	}
	pmax := pos[n-1]

	// Effective key positions, padded to whole tiles.
	nt := (total + attnTile - 1) / attnTile
	kposBuf := getInt32s(nt * attnTile)
	defer putInt32s(kposBuf)
	kpos := *kposBuf
	for j := range C {
		p := cache.Pos[j]
		i := sort.Search(n, func(i int) bool { return pos[i] >= p })
		if i < n && pos[i] == p {
			p = keyInvisible // shadowed by a batch token
		}
		kpos[j] = p
	}
	copy(kpos[C:total], pos)
	for j := total; j < nt*attnTile; j++ {
		kpos[j] = keyInvisible
	}
	// Per tile: the smallest and largest effective position, and the number
	// of tiles any query needs (the last tile with a key at <= pmax).
	tmin, tmax := make([]int32, nt), make([]int32, nt)
	need := 0
	for t := range nt {
		lo, hi := int32(keyInvisible), int32(math.MinInt32)
		for _, p := range kpos[t*attnTile : (t+1)*attnTile] {
			lo, hi = min(lo, p), max(hi, p)
		}
		tmin[t], tmax[t] = lo, hi
		if lo <= pmax {
			need = t + 1
		}
	}

	// K of the tiles [0, need) rotated to the keys' positions, in the
	// cache's layout: kr is [need·attnTile, KVHeads, HeadDim] (rows of
	// invisible keys and past total are not written: their scores are
	// always masked).
	krBuf := getFloats(need * attnTile * kvd)
	defer putFloats(krBuf)
	kr := *krBuf
	src := func(j int) (kj, vj []float32) {
		if j < C {
			return cache.K[l][j*kvd : (j+1)*kvd], cache.V[l][j*kvd : (j+1)*kvd]
		}
		return k[(j-C)*kvd : (j-C+1)*kvd], v[(j-C)*kvd : (j-C+1)*kvd]
	}
	forRange(min(need*attnTile, total), 256, func(jb, je int) {
		buf := getFloats(hd)
		defer putFloats(buf)
		for j := jb; j < je; j++ {
			if kpos[j] == keyInvisible {
				continue
			}
			kj, _ := src(j)
			row := kr[j*kvd : (j+1)*kvd]
			copy(row, kj)
			m.rope.apply(row, kvh, kpos[j], *buf)
		}
	})

	// With few queries (decode) the scores are dot products against kr
	// and P·V axpys on V in place (blas.Dot8, blas.Axpy); with more, K and
	// V tiles are first laid out as blas panels, once per pass, for the
	// GEMM micro-kernels: kp[(h*nt+t)*kTile:] is tile t of KV head h as
	// panels [attnTile/16][hd][16], vp[(h*nt+t)*vTile:] [ceil(hd/16)][w][16]
	// with w the keys of the tile (a short last tile at its own width).
	// Both give every output the same bits (same products, same order), so
	// the choice is free: packing costs O(keys·KVDim) and pays off from a
	// few queries up.
	packed := n >= attnPackRows
	npv := (hd + blas.PanelCols - 1) / blas.PanelCols
	kTile, vTile := attnTile*hd, npv*blas.PanelCols*attnTile
	var kp, vp []float32
	if packed {
		kpBuf, vpBuf := getFloats(kvh*nt*kTile), getFloats(kvh*nt*vTile)
		defer putFloats(kpBuf)
		defer putFloats(vpBuf)
		kp, vp = *kpBuf, *vpBuf
		forRange(need*kvh, 1, func(tb, te int) {
			const pc = blas.PanelCols
			for th := tb; th < te; th++ {
				t, h := th/kvh, th%kvh
				j0 := t * attnTile
				w := min(attnTile, total-j0)
				kt := kp[(h*nt+t)*kTile : (h*nt+t+1)*kTile]
				vt := vp[(h*nt+t)*vTile : (h*nt+t+1)*vTile]
				for jj := range w {
					j := j0 + jj
					if kpos[j] == keyInvisible {
						// Its score is always masked (K is not read), but
						// p = 0 multiplies V: make it 0, not a stale float
						// (0·Inf would be NaN).
						for d := range hd {
							vt[(d/pc)*w*pc+jj*pc+d%pc] = 0
						}
						continue
					}
					_, vj := src(j)
					kpan := kt[(jj/pc)*hd*pc+jj%pc:]
					for d, x := range kr[j*kvd+h*hd : j*kvd+(h+1)*hd] {
						kpan[d*pc] = x
					}
					vh := vj[h*hd : (h+1)*hd]
					for d0 := 0; d0 < hd; d0 += pc {
						copy(vt[(d0/pc)*w*pc+jj*pc:(d0/pc)*w*pc+jj*pc+pc], vh[d0:min(d0+pc, hd)])
					}
				}
			}
		})
	}
	m.ropeQueries(forRange, q, pos, nh, hd)
	a := newAttention(opts.Attention, opts.AttentionSum, nh, n, total)
	want := a != nil
	scale := float32(1 / math.Sqrt(float64(hd)))
	qPer := max(1, attnRows/group) // queries per task
	nqb := (n + qPer - 1) / qPer
	tasks := kvh * nqb
	var partial []float32 // [tasks, total] per-task column sums
	if want {
		partial = make([]float32, tasks*total)
	}
	// scores writes the raw scores q_r·k_j of tile tt for rows [0, rows)
	// into st [rows, attnTile] (keys [w, attnTile) left 0).
	scores := func(st, qh []float32, kh, tt, rows, w int) {
		clear(st)
		if packed {
			blas.PanelMulAdd(st, attnTile, qh, hd, kp[(kh*nt+tt)*kTile:(kh*nt+tt+1)*kTile], rows, w, hd)
			return
		}
		kt := kr[tt*attnTile*kvd+kh*hd:]
		for r := range rows {
			qr := qh[r*hd : (r+1)*hd]
			for g := 0; g < w; g += 8 {
				c := (*[8]float32)(st[r*attnTile+g:])
				blas.Dot8(qr, kt[g*kvd:], kvd, c)
			}
		}
	}
	forRange(tasks, 1, func(tb, te int) {
		rowsMax := min(qPer, n) * group
		buf := getFloats(rowsMax*hd*2 + rowsMax*attnTile + 2*rowsMax)
		defer putFloats(buf)
		f := *buf
		qh, f := f[:rowsMax*hd], f[rowsMax*hd:]
		acc, f := f[:rowsMax*hd], f[rowsMax*hd:]
		s, f := f[:rowsMax*attnTile], f[rowsMax*attnTile:]
		mr, lr := f[:rowsMax], f[rowsMax:2*rowsMax]
		rpos := make([]int32, rowsMax)
		for t := tb; t < te; t++ {
			kh, qb := t/nqb, t%nqb
			i0, i1 := qb*qPer, min((qb+1)*qPer, n)
			rows := (i1 - i0) * group
			// Row r is query i0 + r/group, head kh*group + r%group.
			for r := range rows {
				i, h := i0+r/group, kh*group+r%group
				copy(qh[r*hd:(r+1)*hd], q[(i*nh+h)*hd:(i*nh+h+1)*hd])
				rpos[r] = pos[i]
				mr[r], lr[r] = float32(math.Inf(-1)), 0
			}
			clear(acc[:rows*hd])
			bmin, bmax := pos[i0], pos[i1-1]
			for tt := range need {
				if tmin[tt] > bmax {
					continue
				}
				j0 := tt * attnTile
				w := min(attnTile, total-j0)
				st := s[:rows*attnTile]
				scores(st, qh, kh, tt, rows, w)
				full := tmax[tt] <= bmin
				kt := kpos[j0 : j0+attnTile]
				for r := range rows {
					row := st[r*attnTile : (r+1)*attnTile]
					p := rpos[r]
					if !full && tmin[tt] > p {
						clear(row[:w]) // the whole tile is later than this row
						continue
					}
					var alpha float32
					if full {
						alpha = softmaxTile(row, nil, 0, scale, &mr[r], &lr[r])
					} else {
						alpha = softmaxTile(row, kt, p, scale, &mr[r], &lr[r])
					}
					if alpha != 1 {
						scaleRow(acc[r*hd:(r+1)*hd], alpha)
					}
				}
				if packed {
					blas.PanelMulAdd(acc, hd, st, attnTile, vp[(kh*nt+tt)*vTile:(kh*nt+tt)*vTile+npv*blas.PanelCols*w], rows, hd, w)
				} else {
					// V in place: the keys of the tile in the cache and
					// in the batch are two runs of rows KVDim apart.
					split := min(max(C-j0, 0), w) // keys [0, split) are cache entries
					for r := range rows {
						ar, pr := acc[r*hd:(r+1)*hd], st[r*attnTile:r*attnTile+w]
						if split > 0 {
							blas.AxpyRows(pr[:split], cache.V[l][j0*kvd+kh*hd:], kvd, ar)
						}
						if split < w {
							blas.AxpyRows(pr[split:], v[(j0+split-C)*kvd+kh*hd:], kvd, ar)
						}
					}
				}
			}
			for r := range rows {
				i, h := i0+r/group, kh*group+r%group
				inv := 1 / lr[r]
				o := out[(i*nh+h)*hd : (i*nh+h+1)*hd]
				for d, x := range acc[r*hd : (r+1)*hd] {
					o[d] = x * inv
				}
			}
			if !want {
				continue
			}
			// Second pass: the weights exp(x - m_r)/l_r with the final
			// max and sum of every row.
			pr := partial[t*total : (t+1)*total]
			for tt := range need {
				if tmin[tt] > bmax {
					continue
				}
				j0 := tt * attnTile
				w := min(attnTile, total-j0)
				st := s[:rows*attnTile]
				scores(st, qh, kh, tt, rows, w)
				kt := kpos[j0 : j0+attnTile]
				for r := range rows {
					p := rpos[r]
					if tmin[tt] > p {
						continue
					}
					row := st[r*attnTile : (r+1)*attnTile]
					weightsTile(row, kt, p, scale, mr[r], 1/lr[r])
					for jj, x := range row[:w] {
						pr[j0+jj] += x
					}
					if a.Weights != nil {
						i, h := i0+r/group, kh*group+r%group
						copy(a.Weights[(h*n+i)*total+j0:(h*n+i)*total+j0+w], row[:w])
					}
				}
			}
		}
	})
	if want {
		a.Sum = make([]float32, total)
		for t := range tasks {
			for j, x := range partial[t*total : (t+1)*total] {
				a.Sum[j] += x
			}
		}
	}
	return a
}

// softmaxTile runs one tile of the online softmax on a row of raw scores
// (len attnTile; the scores past the tile's keys are masked by kpos):
// x_j = s_j·scale, masked to -inf where kpos[j] > p (kpos nil: no mask);
// m' = max(*mr, max x_j); row[j] = exp(x_j - m'); *lr = *lr·alpha + Σ row[j]
// with alpha = exp(*mr - m'); *mr = m'. It returns alpha, the factor the
// row's output accumulator must be scaled by. A row with nothing visible
// yet (m' = -inf) is zeroed and returns 1.
//
// Σ row[j] is summed in 8 lanes (lane j%8, in increasing j) and then
// ((l0+l4)+(l2+l6))+((l1+l5)+(l3+l7)), the order of the AVX2 kernel.
func softmaxTile(row []float32, kpos []int32, p int32, scale float32, mr, lr *float32) float32 {
	row = row[:attnTile]
	mx := float32(math.Inf(-1))
	if kpos == nil {
		mx = maxScaled(row, scale)
	} else {
		mx = maxScaledMasked(row, kpos[:attnTile], p, scale)
	}
	mNew := max(*mr, mx)
	if math.IsInf(float64(mNew), -1) {
		clear(row)
		return 1
	}
	alpha := float32(1)
	if mNew != *mr {
		alpha = expf(*mr - mNew)
	}
	sum := expScaled(row, scale, mNew) // masked entries are -inf: exp = 0
	*lr = *lr*alpha + sum
	*mr = mNew
	return alpha
}

// weightsTile writes the final weights exp(s_j·scale - mr)·invL of a row
// (0 where kpos[j] > p).
func weightsTile(row []float32, kpos []int32, p int32, scale, mr, invL float32) {
	row = row[:attnTile]
	maxScaledMasked(row, kpos[:attnTile], p, scale)
	expScaled(row, scale, mr)
	for j := range row {
		row[j] *= invL
	}
}

// scaleRow multiplies x by a.
func scaleRow(x []float32, a float32) {
	for i := range x {
		x[i] *= a
	}
}

// maxScaledGo is maxScaled's reference: row[j] = s_j·scale (kept for the
// exp pass) and the max of the row.
func maxScaledGo(row []float32, scale float32) float32 {
	mx := float32(math.Inf(-1))
	for j, s := range row {
		x := s * scale
		row[j] = x
		mx = max(mx, x)
	}
	return mx
}

// maxScaledMaskedGo: row[j] = s_j·scale, or -inf where kpos[j] > p; returns
// the max.
func maxScaledMaskedGo(row []float32, kpos []int32, p int32, scale float32) float32 {
	mx := float32(math.Inf(-1))
	kpos = kpos[:len(row)]
	for j, s := range row {
		x := s * scale
		if kpos[j] > p {
			x = float32(math.Inf(-1))
		}
		row[j] = x
		mx = max(mx, x)
	}
	return mx
}

// expScaledGo: row[j] = expf(row[j] - m) for already scaled row, returning
// the sum in the lane order of softmaxTile. (scale is unused: maxScaled
// already applied it; it is kept in the signature for the kernel.)
func expScaledGo(row []float32, _ float32, m float32) float32 {
	var lanes [8]float32
	for j, x := range row {
		e := expf(x - m)
		row[j] = e
		lanes[j%8] += e
	}
	return ((lanes[0] + lanes[4]) + (lanes[2] + lanes[6])) + ((lanes[1] + lanes[5]) + (lanes[3] + lanes[7]))
}

// expf constants: Cody-Waite split of ln 2 (ln2Hi has 9 significant bits,
// so n·ln2Hi is exact for |n| <= 2^15) and the Cephes expf polynomial
// coefficients.
const (
	expLog2e = 1.44269504088896341
	expLn2Hi = 0.693359375
	expLn2Lo = -2.12194440e-4
	expP0    = 1.9875691500e-4
	expP1    = 1.3981999507e-3
	expP2    = 8.3334519073e-3
	expP3    = 4.1665795894e-2
	expP4    = 1.6666665459e-1
	expP5    = 5.0000001201e-1
	// expMin is the underflow cut: below it expf returns 0 (exp(-87.3365)
	// is the smallest normal float32, 2^-126).
	expMin = -87.33654
	expMax = 88.72283
)

// expf is e^x in float32 for the softmax: x = n·ln2 + r with n =
// round(x·log2e) (to nearest even) and |r| <= ln2/2 (Cody-Waite, two
// constants), e^r by a degree-6 polynomial (Cephes expf: 1 + r + r²·P(r)),
// times 2^n built from the exponent bits. Every product and sum is rounded
// to float32 separately (explicit conversions: no fused multiply-add), in
// the order of the AVX2 kernel, which gives the same bits. Relative error
// against math.Exp: < 2e-7 (about 2 ulp) on [expMin, 0]; 0 below expMin
// (and for -inf), +inf above expMax.
func expf(x float32) float32 {
	if !(x >= expMin) { // also NaN → 0; the softmax never has NaN
		return 0
	}
	if x > expMax {
		return float32(math.Inf(1))
	}
	t := float32(x * expLog2e)
	nf := float32(math.RoundToEven(float64(t)))
	r := float32(x - float32(nf*expLn2Hi))
	r = float32(r - float32(nf*expLn2Lo))
	y := float32(expP0)
	y = float32(float32(y*r) + expP1)
	y = float32(float32(y*r) + expP2)
	y = float32(float32(y*r) + expP3)
	y = float32(float32(y*r) + expP4)
	y = float32(float32(y*r) + expP5)
	r2 := float32(r * r)
	y = float32(float32(float32(y*r2)+r) + 1)
	// 2^n for n in [-126, 128]: at n = 128 (x just below expMax) build
	// 2^127 and double.
	ni := int32(nf)
	if ni > 127 {
		return float32(y*math.Float32frombits(uint32(127+127)<<23)) * 2
	}
	return float32(y * math.Float32frombits(uint32(ni+127)<<23))
}

// int32Pools recycle the key-position arrays like floatPools.
var int32Pools [40]sync.Pool

func getInt32s(n int) *[]int32 {
	c := bits.Len(uint(max(n, 1) - 1))
	if c >= len(int32Pools) {
		s := make([]int32, n)
		return &s
	}
	if p, ok := int32Pools[c].Get().(*[]int32); ok {
		*p = (*p)[:n]
		return p
	}
	s := make([]int32, n, 1<<c)
	return &s
}

func putInt32s(p *[]int32) {
	c := bits.Len(uint(cap(*p))) - 1
	if c < 0 || c >= len(int32Pools) || cap(*p) != 1<<c {
		return
	}
	int32Pools[c].Put(p)
}

// ropeQueries rotates the queries q [n, nh*hd] in place to their positions
// pos [n] (the keys are placed with theirs as they are gathered), blocks of
// queries spread by forRange (parallelRange or serialRange).
func (m *Model) ropeQueries(forRange func(n, grain int, fn func(b, e int)), q []float32, pos []int32, nh, hd int) {
	forRange(len(pos), 64, func(b, e int) {
		buf := getFloats(hd)
		defer putFloats(buf)
		for i := b; i < e; i++ {
			m.rope.apply(q[i*nh*hd:(i+1)*nh*hd], nh, pos[i], *buf)
		}
	})
}

// newAttention returns the Attention a pass of n queries over total keys
// reports when the weights or only their sum (Weights nil) are asked for:
// Weights [nh, n, total] unless sumOnly; nil when neither is.
func newAttention(weights, sumOnly bool, nh, n, total int) *Attention {
	if !weights && !sumOnly {
		return nil
	}
	a := &Attention{Heads: nh, Queries: n, Keys: total}
	if !sumOnly {
		a.Weights = make([]float32, nh*n*total)
	}
	return a
}
