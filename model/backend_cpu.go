package model

import (
	"runtime"
	"sync"
)

func init() {
	RegisterBackend("cpu", func() (Backend, error) { return cpuBackend{}, nil })
}

// cpuBackend is the pure-Go backend.
type cpuBackend struct{}

func (cpuBackend) Name() string { return "cpu" }

// MatMulT: TODO(blas) switch to blas.MatMulT once model/blas lands; until
// then a private row-parallel kernel.
func (cpuBackend) MatMulT(out, a, b []float32, m, n, k int) { matMulT(out, a, b, m, n, k) }

// matMulT computes out[m,n] = a[m,k]·b[n,k]^T, parallel over blocks of b's
// rows (so decode, m=1, is parallel too). Each output is one dot product
// accumulated in a fixed order, so results do not depend on m or on the
// split: a row computed alone equals the same row computed in a batch.
func matMulT(out, a, b []float32, m, n, k int) {
	workers := runtime.GOMAXPROCS(0)
	if int64(m)*int64(n)*int64(k) < 1<<16 || workers == 1 {
		matMulTRange(out, a, b, m, n, k, 0, n)
		return
	}
	const block = 64
	blocks := (n + block - 1) / block
	workers = min(workers, blocks)
	var wg sync.WaitGroup
	var mu sync.Mutex
	next := 0
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				mu.Lock()
				j := next
				next++
				mu.Unlock()
				if j >= blocks {
					return
				}
				matMulTRange(out, a, b, m, n, k, j*block, min((j+1)*block, n))
			}
		}()
	}
	wg.Wait()
}

func matMulTRange(out, a, b []float32, m, n, k, j0, j1 int) {
	const rows = 32 // a rows per tile, to reuse b rows from cache
	for i0 := 0; i0 < m; i0 += rows {
		i1 := min(i0+rows, m)
		for j := j0; j < j1; j++ {
			bj := b[j*k : (j+1)*k]
			for i := i0; i < i1; i++ {
				out[i*n+j] = dot(a[i*k:(i+1)*k], bj)
			}
		}
	}
}

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
