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
// run, of gonum's Sgemm (NoTrans, Trans: the same product); the go
// sub-benchmark also reports x_gonum, its speed over gonum's measured just
// before, which stays meaningful on a loaded machine where absolute numbers
// do not.
func BenchmarkMatMulT(b *testing.B) {
	for _, s := range benchShapes {
		m, n, k := s[0], s[1], s[2]
		r := rand.New(rand.NewPCG(1, 1))
		x, w, out := randSlice(r, m*k), randSlice(r, n*k), make([]float32, m*n)
		flops := 2 * float64(m) * float64(n) * float64(k)
		var base float64 // gonum's ns/op
		b.Run(fmt.Sprintf("gonum/%dx%dx%d", m, n, k), func(b *testing.B) {
			for b.Loop() {
				gonum.Implementation{}.Sgemm(gblas.NoTrans, gblas.Trans, m, n, k, 1, x, k, w, k, 0, out, n)
			}
			base = report(b, flops, 0)
		})
		b.Run(fmt.Sprintf("go/%dx%dx%d", m, n, k), func(b *testing.B) {
			for b.Loop() {
				Go.MatMulT(out, x, w, m, n, k)
			}
			report(b, flops, base)
		})
	}
}

func BenchmarkMatMul(b *testing.B) {
	for _, s := range benchShapes {
		m, n, k := s[0], s[1], s[2]
		r := rand.New(rand.NewPCG(1, 1))
		x, w, out := randSlice(r, m*k), randSlice(r, k*n), make([]float32, m*n)
		flops := 2 * float64(m) * float64(n) * float64(k)
		var base float64
		b.Run(fmt.Sprintf("gonum/%dx%dx%d", m, n, k), func(b *testing.B) {
			for b.Loop() {
				gonum.Implementation{}.Sgemm(gblas.NoTrans, gblas.NoTrans, m, n, k, 1, x, k, w, n, 0, out, n)
			}
			base = report(b, flops, 0)
		})
		b.Run(fmt.Sprintf("go/%dx%dx%d", m, n, k), func(b *testing.B) {
			for b.Loop() {
				Go.MatMul(out, x, w, m, n, k)
			}
			report(b, flops, base)
		})
	}
}

// report sets the GFLOP/s metric and, when base (a baseline's ns/op from
// the same run) is known, x_gonum = base / this ns/op. It returns ns/op.
func report(b *testing.B, flops, base float64) float64 {
	ns := float64(b.Elapsed().Nanoseconds()) / float64(b.N)
	b.ReportMetric(flops/ns, "GFLOP/s")
	if base > 0 {
		b.ReportMetric(base/ns, "x_gonum")
	}
	return ns
}
