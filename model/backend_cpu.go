package model

import "github.com/fusionrag/fusionrag/model/blas"

func init() {
	RegisterBackend("cpu", func() (Backend, error) { return cpuBackend{}, nil })
}

// cpuBackend is the pure-Go backend.
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
