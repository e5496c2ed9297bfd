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

// BenchmarkMatMulTPacked compares MatMulTPacked with MatMulT on the same
// weight in the same run, at the row counts of decode (1), batched decode
// (16), partial recompute (64, 640) and prefill (2048), for a square
// 512×512 weight and a 1376×512 feed-forward one ([n,k] = [out,in]). The
// packed sub-benchmark reports x_unpacked, MatMulT's ns/op over its own.
func BenchmarkMatMulTPacked(b *testing.B) {
	for _, w := range [][2]int{{512, 512}, {1376, 512}} {
		n, k := w[0], w[1]
		r := rand.New(rand.NewPCG(1, 1))
		wt := randSlice(r, n*k)
		p := Pack(wt, n, k)
		for _, m := range []int{1, 16, 64, 640, 2048} {
			x, out := randSlice(r, m*k), make([]float32, m*n)
			flops := 2 * float64(m) * float64(n) * float64(k)
			var base float64
			b.Run(fmt.Sprintf("unpacked/%dx%dx%d", m, n, k), func(b *testing.B) {
				for b.Loop() {
					Go.MatMulT(out, x, wt, m, n, k)
				}
				base = reportRatio(b, flops, 0, "")
			})
			b.Run(fmt.Sprintf("packed/%dx%dx%d", m, n, k), func(b *testing.B) {
				for b.Loop() {
					MatMulTPacked(out, x, p, m)
				}
				reportRatio(b, flops, base, "x_unpacked")
			})
		}
	}
}

// reportRatio sets GFLOP/s and, when base (a baseline's ns/op from the same
// run) is known, the metric unit = base / this ns/op. It returns ns/op.
func reportRatio(b *testing.B, flops, base float64, unit string) float64 {
	ns := float64(b.Elapsed().Nanoseconds()) / float64(b.N)
	b.ReportMetric(flops/ns, "GFLOP/s")
	if base > 0 {
		b.ReportMetric(base/ns, unit)
	}
	return ns
}

// BenchmarkPack measures the one-time cost of Pack on a 1376×512 weight
// (GB/s of the weight read), to set against the repacking MatMulT does on
// every call.
func BenchmarkPack(b *testing.B) {
	const n, k = 1376, 512
	w := randSlice(rand.New(rand.NewPCG(1, 1)), n*k)
	for b.Loop() {
		Pack(w, n, k)
	}
	b.ReportMetric(float64(4*n*k)/(float64(b.Elapsed().Nanoseconds())/float64(b.N)), "GB/s")
}
