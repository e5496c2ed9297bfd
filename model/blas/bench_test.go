package blas

import (
	"fmt"
	"math/rand/v2"
	"testing"

	gblas "gonum.org/v1/gonum/blas"
	"gonum.org/v1/gonum/blas/gonum"
)

// benchShapes are m×n×k: prefill-sized squares, a long prefill against a
// square weight, and decode (GEMV) against a 4096² weight.
var benchShapes = [][3]int{{512, 512, 512}, {2048, 512, 512}, {1, 4096, 4096}}

// BenchmarkMatMulT reports GFLOP/s of this package's kernel and, in the same
// run, of gonum's Sgemm (NoTrans, Trans: the same product) so the ratio is
// visible whatever the machine's load.
func BenchmarkMatMulT(b *testing.B) {
	for _, s := range benchShapes {
		m, n, k := s[0], s[1], s[2]
		r := rand.New(rand.NewPCG(1, 1))
		x, w, out := randSlice(r, m*k), randSlice(r, n*k), make([]float32, m*n)
		flops := 2 * float64(m) * float64(n) * float64(k)
		b.Run(fmt.Sprintf("go/%dx%dx%d", m, n, k), func(b *testing.B) {
			for b.Loop() {
				Go.MatMulT(out, x, w, m, n, k)
			}
			b.ReportMetric(flops*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
		})
		b.Run(fmt.Sprintf("gonum/%dx%dx%d", m, n, k), func(b *testing.B) {
			for b.Loop() {
				gonum.Implementation{}.Sgemm(gblas.NoTrans, gblas.Trans, m, n, k, 1, x, k, w, k, 0, out, n)
			}
			b.ReportMetric(flops*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
		})
	}
}

func BenchmarkMatMul(b *testing.B) {
	for _, s := range benchShapes {
		m, n, k := s[0], s[1], s[2]
		r := rand.New(rand.NewPCG(1, 1))
		x, w, out := randSlice(r, m*k), randSlice(r, k*n), make([]float32, m*n)
		flops := 2 * float64(m) * float64(n) * float64(k)
		b.Run(fmt.Sprintf("go/%dx%dx%d", m, n, k), func(b *testing.B) {
			for b.Loop() {
				Go.MatMul(out, x, w, m, n, k)
			}
			b.ReportMetric(flops*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
		})
		b.Run(fmt.Sprintf("gonum/%dx%dx%d", m, n, k), func(b *testing.B) {
			for b.Loop() {
				gonum.Implementation{}.Sgemm(gblas.NoTrans, gblas.NoTrans, m, n, k, 1, x, k, w, n, 0, out, n)
			}
			b.ReportMetric(flops*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
		})
	}
}
