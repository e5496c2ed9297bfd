//go:build cuda

package cuda

// Tests of the device code. They need a GPU: the test binary is built with
// -tags cuda (scripts/cuda-check.sh) and gorgonia.org/cu's init ends the
// process when no driver or GPU is present.

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/fusionrag/fusionrag/internal/shareddata"
	"github.com/fusionrag/fusionrag/model"
)

// kernelTolerance bounds, relative to max|want|, a single kernel's
// difference from hostOps on the same inputs. Both round at the same points;
// they differ in summation order (warp reductions, cuBLAS blocking), in FMA
// contraction, and in expf/logf/sincos ulps, so the output may land one
// storage ulp apart: 1e-5 for fp32 outputs (longer sums reach a few ulps),
// 2^-7 for bf16, 2^-10 for f16 outputs. Attention outputs, lse and
// weights (fp32 dot products of up to 128 terms, then exp) get 5e-5.
var kernelTolerance = map[DType]float64{F32: 1e-5, BF16: 1.0 / 128, F16: 1.0 / 1024}

// pair holds the same buffer on the device and on hostOps.
type pair struct {
	d, h buf
	kind elem
}

type pairOps struct {
	t  *testing.T
	dv *cudaOps
	h  *hostOps
}

func (p pairOps) mk(kind elem, data any) pair {
	p.t.Helper()
	var n int
	switch v := data.(type) {
	case []float32:
		n = len(v)
		if kind == elemHalf {
			data = p.h.dt.encode(v)
		}
	case []int32:
		n = len(v)
	case []float64:
		n = len(v)
	case int:
		n, data = v, nil
	}
	d, err := p.dv.alloc(kind, n)
	if err != nil {
		p.t.Fatal(err)
	}
	h, _ := p.h.alloc(kind, n)
	if data != nil {
		if err := p.dv.upload(d, data); err != nil {
			p.t.Fatal(err)
		}
		if err := p.h.upload(h, data); err != nil {
			p.t.Fatal(err)
		}
	}
	p.t.Cleanup(func() { p.dv.free(d) })
	return pair{d: d, h: h, kind: kind}
}

// read returns a buffer's contents from one side as float32.
func (p pairOps) read(o ops, b buf) []float32 {
	p.t.Helper()
	out := make([]float32, b.n)
	var err error
	switch {
	case b.kind == elemHalf:
		raw := rawHalf(o.dtype(), b.n)
		err = o.download(raw, b)
		o.dtype().decode(out, raw)
	default:
		err = o.download(out, b)
	}
	if err != nil {
		p.t.Fatal(err)
	}
	return out
}

func (p pairOps) check(what string, b pair, tol float64) {
	p.t.Helper()
	if err := p.dv.sync(); err != nil {
		p.t.Fatalf("%s: %v", what, err)
	}
	if err := closeTo(what, p.read(p.dv, b.d), p.read(p.h, b.h), tol); err != nil {
		p.t.Error(err)
	}
}

func randF32(rng *rand.Rand, n int, scale float32) []float32 {
	x := make([]float32, n)
	for i := range x {
		x[i] = (rng.Float32()*2 - 1) * scale
	}
	return x
}

func TestKernelsMatchHostOps(t *testing.T) {
	for _, dt := range []DType{F32, BF16, F16} {
		t.Run(dt.String(), func(t *testing.T) {
			dv, err := newCUDAOps(0, dt)
			if err != nil {
				t.Fatal(err)
			}
			defer dv.close()
			defer dv.enter()()
			p := pairOps{t: t, dv: dv, h: newHostOps(dt)}
			tol := kernelTolerance[dt]
			rng := rand.New(rand.NewPCG(5, 6))

			const n, dim, vocab = 37, 96, 50
			table := p.mk(elemHalf, randF32(rng, vocab*dim, 1))
			ids := make([]int32, n)
			for i := range ids {
				ids[i] = int32(rng.IntN(vocab))
			}
			idb := p.mk(elemI32, ids)
			x := p.mk(elemF32, n*dim)
			must(t, dv.embed(x.d, table.d, idb.d, n, dim), p.h.embed(x.h, table.h, idb.h, n, dim))
			p.check("embed", x, 0)

			w := p.mk(elemF32, randF32(rng, dim, 2))
			xn := p.mk(elemHalf, n*dim)
			must(t, dv.rmsNorm(xn.d, x.d, w.d, n, dim, 1e-5), p.h.rmsNorm(xn.h, x.h, w.h, n, dim, 1e-5))
			p.check("rmsNorm", xn, tol)

			for _, acc := range []bool{false, true} {
				const m, nn, k = 37, 70, 96
				a := p.mk(elemHalf, randF32(rng, m*k, 1))
				wt := p.mk(elemHalf, randF32(rng, nn*k, 0.1))
				out := p.mk(elemF32, randF32(rng, m*nn, 1))
				must(t, dv.gemm(out.d, a.d, wt.d, m, nn, k, acc), p.h.gemm(out.h, a.h, wt.h, m, nn, k, acc))
				p.check(fmt.Sprintf("gemm accumulate=%v", acc), out, 1e-5)
			}

			bias := p.mk(elemF32, randF32(rng, dim, 1))
			must(t, dv.addBias(x.d, bias.d, n, dim), p.h.addBias(x.h, bias.h, n, dim))
			p.check("addBias", x, 0)

			half := p.mk(elemHalf, n*40)
			must(t, dv.toHalf(half.d, x.d.view(10, x.d.n-10), n, 40, dim), p.h.toHalf(half.h, x.h.view(10, x.h.n-10), n, 40, dim))
			p.check("toHalf", half, 0)

			for _, il := range []bool{true, false} {
				const heads, hd = 3, 16
				freq := ropeFreq(model.Config{HeadDim: hd, RopeTheta: 500000,
					RopeScaling: &model.RopeScaling{Type: "llama3", Factor: 8, LowFreqFactor: 1, HighFreqFactor: 4, OriginalMaxPositions: 64}})
				fb := p.mk(elemF64, freq)
				pos := make([]int32, n)
				for i := range pos {
					pos[i] = int32(rng.IntN(40000))
				}
				pb := p.mk(elemI32, pos)
				cs := p.mk(elemF32, n*hd)
				must(t, dv.ropeTable(cs.d, pb.d, fb.d, n, hd/2), p.h.ropeTable(cs.h, pb.h, fb.h, n, hd/2))
				// float64 sincos on both sides, rounded once: equal up to
				// the last bit of float32 in rare double-rounding cases.
				p.check("ropeTable", cs, 1e-7)
				src := p.mk(elemF32, randF32(rng, n*(heads*hd+5), 1))
				dst := p.mk(elemF32, n*heads*hd)
				must(t, dv.rope(dst.d, src.d, cs.d, n, heads, hd, heads*hd+5, heads*hd, il),
					p.h.rope(dst.h, src.h, cs.h, n, heads, hd, heads*hd+5, heads*hd, il))
				p.check(fmt.Sprintf("rope f32 interleaved=%v", il), dst, 1e-5)
				hs := p.mk(elemHalf, randF32(rng, n*heads*hd, 1))
				hdst := p.mk(elemHalf, n*heads*hd)
				must(t, dv.rope(hdst.d, hs.d, cs.d, n, heads, hd, heads*hd, heads*hd, il),
					p.h.rope(hdst.h, hs.h, cs.h, n, heads, hd, heads*hd, heads*hd, il))
				p.check(fmt.Sprintf("rope half interleaved=%v", il), hdst, tol)
			}

			gu := p.mk(elemF32, randF32(rng, n*2*dim, 4))
			sm := p.mk(elemHalf, n*dim)
			must(t, dv.siluMul(sm.d, gu.d, n, dim), p.h.siluMul(sm.h, gu.h, n, dim))
			p.check("siluMul", sm, tol)

			rows := p.mk(elemF32, randF32(rng, 7*300, 1))
			sums := p.mk(elemF32, 300)
			must(t, dv.sumRows(sums.d, rows.d, 7, 300), p.h.sumRows(sums.h, rows.h, 7, 300))
			p.check("sumRows", sums, 1e-6)

			rnd := p.mk(elemHalf, 1000)
			rnd32 := p.mk(elemF32, 1000)
			must(t, dv.fillRandom(rnd.d, 42, 0.5), p.h.fillRandom(rnd.h, 42, 0.5))
			must(t, dv.fillRandom(rnd32.d, 42, 0.5), p.h.fillRandom(rnd32.h, 42, 0.5))
			p.check("fillRandom", rnd, 0)
			p.check("fillRandom f32", rnd32, 0)

			// Attention: partial tiles on both axes, GQA, a shadowed cache
			// entry, cache positions out of order, the head dims the models
			// use; for bf16/f16 both the SIMT and the tensor-core kernel.
			if dt != F32 && !dv.mma {
				t.Errorf("tensor-core attention disabled: %s", dv.attentionKernel(128))
			}
			kernels := []bool{false}
			if dt != F32 {
				kernels = append(kernels, true)
			}
			for _, useMMA := range kernels {
				dv.mma = useMMA
				// The SIMT kernel rounds like hostOps; the tensor-core one
				// also rounds Q and P to the storage type (FlashAttention
				// does the same), which moves outputs by about one storage
				// ulp of their largest value and lse by ~1e-3 relative.
				outTol, lseTol, wTol := max(tol, 5e-5), 5e-5, 5e-5
				if useMMA {
					outTol, lseTol, wTol = 4*tol, 2e-3, 1e-2
				}
				for _, hd := range []int{8, 64, 128} {
					for _, sh := range []struct{ N, C, heads, kvHeads int }{{37, 45, 8, 2}, {1, 70, 4, 4}, {50, 0, 4, 1}, {130, 200, 2, 1}} {
						name := fmt.Sprintf("attention mma=%v hd=%d N=%d C=%d heads=%d/%d", useMMA && (hd == 64 || hd == 128), hd, sh.N, sh.C, sh.heads, sh.kvHeads)
						s := attnShape{N: sh.N, C: sh.C, Heads: sh.heads, KVHeads: sh.kvHeads, HeadDim: hd, Scale: float32(1 / math.Sqrt(float64(hd)))}
						keys := s.Keys()
						kpos := make([]int32, keys)
						for j := range sh.C {
							kpos[j] = int32(rng.IntN(200))
						}
						qpos := make([]int32, sh.N)
						for i := range qpos {
							qpos[i] = int32(150 + 3*i)
							kpos[sh.C+i] = qpos[i]
						}
						if sh.C > 0 {
							kpos[sh.C/2] = math.MaxInt32 // shadowed
						}
						kp, qp := p.mk(elemI32, kpos), p.mk(elemI32, qpos)
						q := p.mk(elemF32, randF32(rng, sh.N*sh.heads*hd, 1))
						k := p.mk(elemHalf, randF32(rng, keys*sh.kvHeads*hd, 1))
						vc := p.mk(elemHalf, randF32(rng, max(sh.C, 1)*sh.kvHeads*hd, 1))
						vb := p.mk(elemHalf, randF32(rng, sh.N*sh.kvHeads*hd, 1))
						out := p.mk(elemHalf, sh.N*sh.heads*hd)
						lse := p.mk(elemF32, sh.heads*sh.N)
						must(t, dv.attention(out.d, q.d, k.d, vc.d, vb.d, kp.d, qp.d, lse.d, s),
							p.h.attention(out.h, q.h, k.h, vc.h, vb.h, kp.h, qp.h, lse.h, s))
						p.check(name+" out", out, outTol)
						p.check(name+" lse", lse, lseTol)
						wts := p.mk(elemF32, sh.heads*sh.N*keys)
						part := p.mk(elemF32, sh.heads*keys)
						must(t, dv.attnWeights(wts.d, part.d, q.d, k.d, kp.d, qp.d, lse.d, s),
							p.h.attnWeights(wts.h, part.h, q.h, k.h, kp.h, qp.h, lse.h, s))
						p.check(name+" weights", wts, wTol)
						p.check(name+" partial", part, wTol)
					}
				}
			}
			dv.mma = dt != F32
		})
	}
}

func must(t *testing.T, errs ...error) {
	t.Helper()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
}

// TestCUDAMatchesCPU is TestRuntimeMatchesCPU on the GPU: the three
// FusionRAG passes against the cpu backend, with the same tolerances.
func TestCUDAMatchesCPU(t *testing.T) {
	for name, mk := range testModels(t) {
		t.Run(name, func(t *testing.T) {
			path := mk(t)
			ref, weights := loadCaptured(t, path)
			for _, dt := range []DType{F32, BF16, F16} {
				t.Run(dt.String(), func(t *testing.T) {
					rt, err := New(ref.Config, weights, Options{DType: dt})
					if err != nil {
						t.Fatal(err)
					}
					defer rt.Close()
					checkPasses(t, rt, ref, tolerance[dt])
				})
			}
		})
	}
}

// TestCUDABackendGreedy loads stories260K with LoadOptions.Backend "cuda"
// in fp32 and decodes greedily through model.Forward: the tokens must be
// the cpu backend's.
func TestCUDABackendGreedy(t *testing.T) {
	path := shareddata.Path(t, "models/stories260K/stories260K.bin")
	t.Setenv(EnvDType, "f32")
	ctx := context.Background()
	decode := func(backend string) []int32 {
		m, err := model.Load(path, model.LoadOptions{Backend: backend})
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		c := model.NewCache(m.Config, 300)
		return greedyDecode(t, 256, func(b model.Batch) ([]float32, error) {
			r, err := m.Forward(ctx, c, b, model.ForwardOptions{Logits: []int{0}, Append: true})
			if err != nil {
				return nil, err
			}
			return r.Logits[0], nil
		})
	}
	want, got := decode("cpu"), decode(BackendName)
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("greedy BOS-only decode on cuda:\n got %v\nwant %v", got, want)
	}
}
