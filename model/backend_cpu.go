package model

import (
	"unsafe"

	"github.com/fusionrag/fusionrag/model/blas"
)

func init() {
	RegisterBackend("cpu", func() (Backend, error) { return cpuBackend{}, nil })
}

// cpuBackend is the pure-Go backend. Models loaded on it pack their linear
// layers' weights once (packWeights) and run those products with
// blas.MatMulTPacked, which gives the bits of blas.Go.MatMulT without
// repacking the weight on every call.
type cpuBackend struct{}

func (cpuBackend) Name() string { return "cpu" }

// MatMulT uses the pure-Go kernel of package blas directly (not the
// process-wide blas.Current, which another backend may have replaced), so
// "cpu" always means the deterministic reference kernel.
func (cpuBackend) MatMulT(out, a, b []float32, m, n, k int) { blas.Go.MatMulT(out, a, b, m, n, k) }

// MatMul is blas.Go.MatMul (see MatMuler).
func (cpuBackend) MatMul(out, a, b []float32, m, n, k int) { blas.Go.MatMul(out, a, b, m, n, k) }

// matMul returns the backend's MatMul, or the pure-Go kernel's.
func (m *Model) matMul() func(out, a, b []float32, m, n, k int) {
	if mm, ok := m.backend.(MatMuler); ok {
		return mm.MatMul
	}
	return blas.Go.MatMul
}

// packedLayer is a decoder layer's matrices packed for blas.MatMulTPacked,
// each the same [out, in] matrix as the layerWeights field of that name.
type packedLayer struct {
	wq, wk, wv, wo, w1, w3, w2 *blas.Packed
}

// packWeights packs every linear layer's weight and the classifier for the
// cpu backend (blas.Pack spreads each over the cores).
//
// Memory: a packed matrix is the size of the raw one (its output dimension
// padded to a multiple of 16). A raw matrix that was converted at load
// (F16/BF16 safetensors) is dropped once packed, so the packed copy
// replaces it; namedWeights rebuilds it on demand (blas.Packed.Unpack). A
// raw matrix that is the stored bytes themselves (F32 safetensors and
// llama2.c files, mapped; synthetic models) stays, since the fingerprint
// hashes those bytes: for a mapped file that is page cache the kernels no
// longer touch. The classifier keeps its raw matrix when it is the
// embedding table. Without the SIMD kernel (purego, non-amd64) blas.Pack
// keeps the raw slice and costs nothing.
func (m *Model) packWeights() {
	c := m.Config
	d, qd, kvd, hd := c.Dim, c.QDim(), c.KVDim(), c.HiddenDim
	stored := m.storedRanges()
	pack := func(raw *[]float32, n, k int) *blas.Packed {
		p := blas.Pack(*raw, n, k)
		if p.Bytes() > 0 && !stored(*raw) {
			*raw = nil
		}
		return p
	}
	for i := range m.layers {
		w := &m.layers[i]
		w.packed = packedLayer{
			wq: pack(&w.wq, qd, d),
			wk: pack(&w.wk, kvd, d),
			wv: pack(&w.wv, kvd, d),
			wo: pack(&w.wo, d, qd),
			w1: pack(&w.w1, hd, d),
			w3: pack(&w.w3, hd, d),
			w2: pack(&w.w2, d, hd),
		}
	}
	if c.TiedEmbeddings {
		m.clsPack = blas.Pack(m.cls, c.Vocab, d)
	} else {
		m.clsPack = pack(&m.cls, c.Vocab, d)
	}
}

// storedRanges returns a test for whether a weight's memory lies inside the
// bytes of some manifest tensor (the stored file data).
func (m *Model) storedRanges() func(w []float32) bool {
	type span struct{ begin, end uintptr } // [begin, end)
	var spans []span
	for _, t := range m.manifest {
		if len(t.raw) > 0 {
			b := uintptr(unsafe.Pointer(&t.raw[0]))
			spans = append(spans, span{b, b + uintptr(len(t.raw))})
		}
	}
	return func(w []float32) bool {
		if len(w) == 0 {
			return true
		}
		a := uintptr(unsafe.Pointer(&w[0]))
		for _, s := range spans {
			if a >= s.begin && a < s.end {
				return true
			}
		}
		return false
	}
}

// rawWeight returns w, or when packing dropped it (nil) a fresh copy
// unpacked from p.
func rawWeight(w []float32, p *blas.Packed) []float32 {
	if w != nil || p == nil {
		return w
	}
	n, k := p.Dims()
	out := make([]float32, n*k)
	p.Unpack(out)
	return out
}

// linear computes out[rows, n] = x[rows, k] · w[n, k]^T for a weight w: on
// its packed copy p when the model has one (cpu backend; the same bits as
// blas.Go.MatMulT), else with the backend's MatMulT on w itself.
func (m *Model) linear(out, x, w []float32, p *blas.Packed, rows, n, k int) {
	if p != nil {
		blas.MatMulTPacked(out, x, p, rows)
		return
	}
	m.backend.MatMulT(out, x, w, rows, n, k)
}
