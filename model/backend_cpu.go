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

// dot is a 4-way unrolled dot product; the summation order is fixed.
func dot(x, y []float32) float32 {
	y = y[:len(x)]
	var s0, s1, s2, s3 float32
	i := 0
	for ; i+4 <= len(x); i += 4 {
		s0 += x[i] * y[i]
		s1 += x[i+1] * y[i+1]
		s2 += x[i+2] * y[i+2]
		s3 += x[i+3] * y[i+3]
	}
	for ; i < len(x); i++ {
		s0 += x[i] * y[i]
	}
	return (s0 + s1) + (s2 + s3)
}
