package model

import "github.com/fusionrag/fusionrag/model/blas"

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
// cpu backend (blas.Pack spreads each over the cores). Memory: about one more copy of those
// matrices (blas.Packed pads the output dimension to a multiple of 16); the
// raw slices stay, for namedWeights (saving, binding) and the embedding
// table the classifier may alias. With the SIMD kernel absent (purego,
// non-amd64) blas.Pack keeps the raw slice and costs nothing.
func (m *Model) packWeights() {
	c := m.Config
	d, qd, kvd, hd := c.Dim, c.QDim(), c.KVDim(), c.HiddenDim
	for i := range m.layers {
		w := &m.layers[i]
		w.packed = packedLayer{
			wq: blas.Pack(w.wq, qd, d),
			wk: blas.Pack(w.wk, kvd, d),
			wv: blas.Pack(w.wv, kvd, d),
			wo: blas.Pack(w.wo, d, qd),
			w1: blas.Pack(w.w1, hd, d),
			w3: blas.Pack(w.w3, hd, d),
			w2: blas.Pack(w.w2, d, hd),
		}
	}
	m.clsPack = blas.Pack(m.cls, c.Vocab, d)
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
