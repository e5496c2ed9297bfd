package cuda

import (
	"fmt"
	"math"
	"sync"
)

// hostOps implements ops in Go on host memory, mirroring the kernels: same
// rounding points (every write to a half buffer rounds to the DType), same
// attention tiling and online softmax. It is the reference the CUDA ops are
// checked against kernel by kernel, and it lets the whole forward pass of
// runtime.go run and be tested on machines without a GPU.
type hostOps struct {
	dt DType
}

func newHostOps(dt DType) *hostOps { return &hostOps{dt: dt} }

func (h *hostOps) dtype() DType { return h.dt }

func (h *hostOps) alloc(kind elem, n int) (buf, error) {
	if n < 0 {
		return buf{}, fmt.Errorf("cuda: alloc of %d elements", n)
	}
	a := &allocation{n: n}
	switch {
	case kind == elemF32, kind == elemHalf && h.dt == F32:
		a.host = make([]float32, n)
	case kind == elemHalf:
		a.host = make([]uint16, n)
	case kind == elemI32:
		a.host = make([]int32, n)
	case kind == elemF64:
		a.host = make([]float64, n)
	}
	return buf{a: a, kind: kind, n: n}, nil
}

func (h *hostOps) free(buf)      {}
func (h *hostOps) enter() func() { return func() {} }
func (h *hostOps) sync() error   { return nil }
func (h *hostOps) close() error  { return nil }

func (h *hostOps) f32(b buf) []float32 { return b.a.host.([]float32)[b.off : b.off+b.n] }
func (h *hostOps) i32(b buf) []int32   { return b.a.host.([]int32)[b.off : b.off+b.n] }
func (h *hostOps) f64(b buf) []float64 { return b.a.host.([]float64)[b.off : b.off+b.n] }

// half accessors: get widens element i, set rounds and stores.
func (h *hostOps) get(b buf, i int) float32 {
	switch s := b.a.host.(type) {
	case []float32:
		return s[b.off+i]
	case []uint16:
		if h.dt == BF16 {
			return BF16ToF32(s[b.off+i])
		}
		return F16ToF32(s[b.off+i])
	}
	panic("cuda: get on " + b.kind.String())
}

func (h *hostOps) set(b buf, i int, x float32) {
	switch s := b.a.host.(type) {
	case []float32:
		s[b.off+i] = x
	case []uint16:
		if h.dt == BF16 {
			s[b.off+i] = F32ToBF16(x)
		} else {
			s[b.off+i] = F32ToF16(x)
		}
	default:
		panic("cuda: set on " + b.kind.String())
	}
}

func (h *hostOps) upload(dst buf, src any) error {
	switch s := src.(type) {
	case []float32:
		if len(s) != dst.n {
			return fmt.Errorf("cuda: upload of %d floats into %d", len(s), dst.n)
		}
		copy(dst.a.host.([]float32)[dst.off:dst.off+dst.n], s)
	case []uint16:
		if len(s) != dst.n {
			return fmt.Errorf("cuda: upload of %d halves into %d", len(s), dst.n)
		}
		copy(dst.a.host.([]uint16)[dst.off:dst.off+dst.n], s)
	case []int32:
		if len(s) != dst.n {
			return fmt.Errorf("cuda: upload of %d int32 into %d", len(s), dst.n)
		}
		copy(h.i32(dst), s)
	case []float64:
		if len(s) != dst.n {
			return fmt.Errorf("cuda: upload of %d float64 into %d", len(s), dst.n)
		}
		copy(h.f64(dst), s)
	default:
		return fmt.Errorf("cuda: upload of %T", src)
	}
	return nil
}

func (h *hostOps) download(dst any, src buf) error {
	switch d := dst.(type) {
	case []float32:
		copy(d, src.a.host.([]float32)[src.off:src.off+src.n])
	case []uint16:
		copy(d, src.a.host.([]uint16)[src.off:src.off+src.n])
	case []int32:
		copy(d, h.i32(src))
	case []float64:
		copy(d, h.f64(src))
	default:
		return fmt.Errorf("cuda: download into %T", dst)
	}
	return nil
}

func (h *hostOps) copy(dst, src buf) error {
	if dst.kind != src.kind || dst.n != src.n {
		return fmt.Errorf("cuda: copy of %d %v into %d %v", src.n, src.kind, dst.n, dst.kind)
	}
	switch s := src.a.host.(type) {
	case []float32:
		copy(dst.a.host.([]float32)[dst.off:dst.off+dst.n], s[src.off:src.off+src.n])
	case []uint16:
		copy(dst.a.host.([]uint16)[dst.off:dst.off+dst.n], s[src.off:src.off+src.n])
	case []int32:
		copy(h.i32(dst), h.i32(src))
	case []float64:
		copy(h.f64(dst), h.f64(src))
	}
	return nil
}

func (h *hostOps) embed(out, table, ids buf, n, dim int) error {
	o, id := h.f32(out), h.i32(ids)
	for i := range n {
		t := int(id[i])
		for d := range dim {
			o[i*dim+d] = h.get(table, t*dim+d)
		}
	}
	return nil
}

func (h *hostOps) rmsNorm(out, x, w buf, n, dim int, eps float32) error {
	xs, ws := h.f32(x), h.f32(w)
	for i := range n {
		row := xs[i*dim : (i+1)*dim]
		var ss float32
		for _, v := range row {
			ss += v * v
		}
		s := float32(1 / math.Sqrt(float64(ss/float32(dim)+eps)))
		for d, v := range row {
			h.set(out, i*dim+d, ws[d]*(s*v))
		}
	}
	return nil
}

func (h *hostOps) gemm(out, a, w buf, m, n, k int, accumulate bool) error {
	o := h.f32(out)
	ar := make([]float32, k)
	wr := make([]float32, n*k)
	for j := range n * k {
		wr[j] = h.get(w, j)
	}
	for i := range m {
		for x := range k {
			ar[x] = h.get(a, i*k+x)
		}
		for j := range n {
			var s float32
			for x, v := range wr[j*k : (j+1)*k] {
				s += ar[x] * v
			}
			if accumulate {
				o[i*n+j] += s
			} else {
				o[i*n+j] = s
			}
		}
	}
	return nil
}

func (h *hostOps) addBias(x, b buf, n, width int) error {
	xs, bs := h.f32(x), h.f32(b)
	for i := range n {
		for j := range width {
			xs[i*width+j] += bs[j]
		}
	}
	return nil
}

func (h *hostOps) toHalf(out, in buf, rows, width, inStride int) error {
	is := h.f32(in)
	for r := range rows {
		for j := range width {
			h.set(out, r*width+j, is[r*inStride+j])
		}
	}
	return nil
}

func (h *hostOps) ropeTable(cs, pos, freq buf, rows, half int) error {
	c, ps, fs := h.f32(cs), h.i32(pos), h.f64(freq)
	for r := range rows {
		for i := range half {
			a := float64(ps[r]) * fs[i]
			c[(r*half+i)*2] = float32(math.Cos(a))
			c[(r*half+i)*2+1] = float32(math.Sin(a))
		}
	}
	return nil
}

func (h *hostOps) rope(out, in, cs buf, rows, heads, headDim, inStride, outStride int, interleaved bool) error {
	tab := h.f32(cs)
	half := headDim / 2
	get, set := h.get, h.set
	if in.kind == elemF32 {
		get = func(b buf, i int) float32 { return h.f32(b)[i] }
		set = func(b buf, i int, v float32) { h.f32(b)[i] = v }
	}
	for r := range rows {
		for hh := range heads {
			ib, ob := r*inStride+hh*headDim, r*outStride+hh*headDim
			for i := range half {
				c, s := tab[(r*half+i)*2], tab[(r*half+i)*2+1]
				i0, i1 := 2*i, 2*i+1
				if !interleaved {
					i0, i1 = i, i+half
				}
				x0, x1 := get(in, ib+i0), get(in, ib+i1)
				set(out, ob+i0, x0*c-x1*s)
				set(out, ob+i1, x0*s+x1*c)
			}
		}
	}
	return nil
}

func (h *hostOps) siluMul(out, in buf, n, hd int) error {
	is := h.f32(in)
	for i := range n {
		for j := range hd {
			g, u := is[i*2*hd+j], is[i*2*hd+hd+j]
			h.set(out, i*hd+j, g/(1+float32(math.Exp(float64(-g))))*u)
		}
	}
	return nil
}

// attention mirrors kernels/attention.cu: per (block of attnQTile queries,
// head), keys [0, C+q1) in tiles of attnKTile with an online softmax; key
// rows are widened from half, the accumulation is fp32.
func (h *hostOps) attention(out, q, k, vc, vb, kpos, qpos, lse buf, s attnShape) error {
	qs, kp, qp := h.f32(q), h.i32(kpos), h.i32(qpos)
	hd, group := s.HeadDim, s.Heads/s.KVHeads
	qd, kvd := s.Heads*hd, s.KVHeads*hd
	var wg sync.WaitGroup
	for head := range s.Heads {
		wg.Add(1)
		go func() {
			defer wg.Done()
			g := head / group
			kt := make([]float32, attnKTile*hd)
			vt := make([]float32, attnKTile*hd)
			sc := make([]float32, attnKTile)
			acc := make([]float32, hd)
			for q0 := 0; q0 < s.N; q0 += attnQTile {
				q1 := min(q0+attnQTile, s.N)
				keys := s.C + q1
				for i := q0; i < q1; i++ {
					m, l := float32(math.Inf(-1)), float32(0)
					clear(acc)
					qi := qs[(i*s.Heads+head)*hd : (i*s.Heads+head+1)*hd]
					for t0 := 0; t0 < keys; t0 += attnKTile {
						t1 := min(t0+attnKTile, keys)
						for j := t0; j < t1; j++ {
							for d := range hd {
								kt[(j-t0)*hd+d] = h.get(k, j*kvd+g*hd+d)
								if j < s.C {
									vt[(j-t0)*hd+d] = h.get(vc, j*kvd+g*hd+d)
								} else {
									vt[(j-t0)*hd+d] = h.get(vb, (j-s.C)*kvd+g*hd+d)
								}
							}
						}
						tmax := float32(math.Inf(-1))
						for j := t0; j < t1; j++ {
							if kp[j] > qp[i] {
								sc[j-t0] = float32(math.Inf(-1))
								continue
							}
							var dot float32
							for d, x := range qi {
								dot += x * kt[(j-t0)*hd+d]
							}
							sc[j-t0] = dot * s.Scale
							tmax = max(tmax, sc[j-t0])
						}
						if math.IsInf(float64(tmax), -1) {
							continue // nothing visible in this tile
						}
						mNew := max(m, tmax)
						corr := float32(math.Exp(float64(m - mNew)))
						var psum float32
						for j := t0; j < t1; j++ {
							p := float32(0)
							if !math.IsInf(float64(sc[j-t0]), -1) {
								p = float32(math.Exp(float64(sc[j-t0] - mNew)))
							}
							sc[j-t0] = p
							psum += p
						}
						l = l*corr + psum
						for d := range acc {
							a := acc[d] * corr
							for j := t0; j < t1; j++ {
								a += sc[j-t0] * vt[(j-t0)*hd+d]
							}
							acc[d] = a
						}
						m = mNew
					}
					inv := 1 / l
					for d := range acc {
						h.set(out, i*qd+head*hd+d, acc[d]*inv)
					}
					if lse.valid() {
						h.f32(lse)[head*s.N+i] = m + float32(math.Log(float64(l)))
					}
				}
			}
		}()
	}
	wg.Wait()
	return nil
}

func (h *hostOps) attnWeights(weights, partial, q, k, kpos, qpos, lse buf, s attnShape) error {
	qs, kp, qp, ls := h.f32(q), h.i32(kpos), h.i32(qpos), h.f32(lse)
	hd, group := s.HeadDim, s.Heads/s.KVHeads
	kvd, keys := s.KVHeads*hd, s.Keys()
	for head := range s.Heads {
		g := head / group
		for j := range keys {
			kj := make([]float32, hd)
			for d := range hd {
				kj[d] = h.get(k, j*kvd+g*hd+d)
			}
			var sum float32
			for i := range s.N {
				w := float32(0)
				if kp[j] <= qp[i] {
					qi := qs[(i*s.Heads+head)*hd : (i*s.Heads+head+1)*hd]
					var dot float32
					for d, x := range qi {
						dot += x * kj[d]
					}
					w = float32(math.Exp(float64(dot*s.Scale - ls[head*s.N+i])))
				}
				if weights.valid() {
					h.f32(weights)[(head*s.N+i)*keys+j] = w
				}
				sum += w
			}
			if partial.valid() {
				h.f32(partial)[head*keys+j] = sum
			}
		}
	}
	return nil
}

func (h *hostOps) sumRows(out, in buf, rows, width int) error {
	o, is := h.f32(out), h.f32(in)
	for j := range width {
		var s float32
		for r := range rows {
			s += is[r*width+j]
		}
		o[j] = s
	}
	return nil
}

func (h *hostOps) fillRandom(b buf, seed uint64, scale float32) error {
	for i := range b.n {
		v := randomValue(seed, uint64(i)) * scale
		if b.kind == elemF32 {
			h.f32(b)[i] = v
		} else {
			h.set(b, i, v)
		}
	}
	return nil
}
