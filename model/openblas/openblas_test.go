//go:build openblas

package openblas

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"

	gblas "gonum.org/v1/gonum/blas"
	"gonum.org/v1/gonum/blas/gonum"

	"github.com/fusionrag/fusionrag/model"
	"github.com/fusionrag/fusionrag/model/blas"
)

func randSlice(r *rand.Rand, n int) []float32 {
	s := make([]float32, n)
	for i := range s {
		s[i] = float32(r.NormFloat64())
	}
	return s
}

// checkClose compares got against want (the pure-Go kernel) elementwise.
// Both are k-term float32 dot products in different orders (OpenBLAS blocks
// and vectorises k, with FMA), each within γ_k·Σ|a·b| of the exact value,
// so they differ by at most 2γ_k·Σ|a·b|, γ_k = k·u/(1-k·u), u = 2^-24.
func checkClose(t *testing.T, got, want, a, b []float32, m, n, k int, bT bool) {
	t.Helper()
	const u = 1.0 / (1 << 24)
	g := float64(k+1) * u / (1 - float64(k+1)*u)
	for i := range m {
		for j := range n {
			var abs float64
			for p := range k {
				bv := b[p*n+j]
				if bT {
					bv = b[j*k+p]
				}
				abs += math.Abs(float64(a[i*k+p]) * float64(bv))
			}
			if d := math.Abs(float64(got[i*n+j]) - float64(want[i*n+j])); d > 2*g*abs+1e-30 {
				t.Fatalf("out[%d,%d] = %v, pure Go %v, diff %g > bound %g", i, j, got[i*n+j], want[i*n+j], d, 2*g*abs)
			}
		}
	}
}

var shapes = [][3]int{
	{0, 0, 0}, {0, 3, 4}, {3, 0, 4}, {2, 3, 0},
	{1, 1, 1}, {1, 7, 257}, {1, 1000, 300}, {3, 4, 5}, {5, 7, 11},
	{7, 100, 513}, {65, 97, 129}, {130, 193, 300}, {33, 250, 700},
}

func TestMatMulTAgainstBlas(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for _, s := range shapes {
		m, n, k := s[0], s[1], s[2]
		t.Run(fmt.Sprintf("%dx%dx%d", m, n, k), func(t *testing.T) {
			a, b := randSlice(r, m*k), randSlice(r, n*k)
			got, want := randSlice(r, m*n), make([]float32, m*n)
			Kernel{}.MatMulT(got, a, b, m, n, k)
			blas.Go.MatMulT(want, a, b, m, n, k)
			checkClose(t, got, want, a, b, m, n, k, true)
		})
	}
}

func TestMatMulAgainstBlas(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for _, s := range shapes {
		m, n, k := s[0], s[1], s[2]
		t.Run(fmt.Sprintf("%dx%dx%d", m, n, k), func(t *testing.T) {
			a, b := randSlice(r, m*k), randSlice(r, k*n)
			got, want := randSlice(r, m*n), make([]float32, m*n)
			Kernel{}.MatMul(got, a, b, m, n, k)
			blas.Go.MatMul(want, a, b, m, n, k)
			checkClose(t, got, want, a, b, m, n, k, false)
		})
	}
}

func TestRegistered(t *testing.T) {
	if !slices.Contains(model.Backends(), Name) {
		t.Fatalf("model.Backends() = %v, want %q among them", model.Backends(), Name)
	}
	be, err := model.NewBackend(Name)
	if err != nil {
		t.Fatal(err)
	}
	if be.Name() != Name {
		t.Errorf("Name() = %q, want %q", be.Name(), Name)
	}
	out := make([]float32, 2)
	be.MatMulT(out, []float32{1, 2}, []float32{3, 4, 5, 6}, 1, 2, 2)
	if diff := slices.Compare(out, []float32{11, 17}); diff != 0 {
		t.Errorf("out = %v, want [11 17]", out)
	}
	t.Logf("OpenBLAS: %s, %d threads", Config(), Threads())
}

func TestShortSlicePanics(t *testing.T) {
	defer func() {
		if r := recover(); r == nil {
			t.Fatal("short a did not panic")
		}
	}()
	Kernel{}.MatMulT(make([]float32, 4), make([]float32, 3), make([]float32, 4), 2, 2, 2)
}

// TestConcurrent runs calls from several goroutines at once, as concurrent
// Forward calls do, and checks every result.
func TestConcurrent(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	const m, n, k = 16, 200, 300
	a, b := randSlice(r, m*k), randSlice(r, n*k)
	want := make([]float32, m*n)
	blas.Go.MatMulT(want, a, b, m, n, k)
	var wg sync.WaitGroup
	errs := make(chan string, 8)
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got := make([]float32, m*n)
			for range 20 {
				Kernel{}.MatMulT(got, a, b, m, n, k)
				for i := range got {
					if math.Abs(float64(got[i]-want[i])) > 1e-3 {
						errs <- fmt.Sprintf("goroutine %d: out[%d] = %v, want %v", g, i, got[i], want[i])
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
}

// BenchmarkMatMulT reports GFLOP/s of gonum's Sgemm, the model/blas kernel
// and OpenBLAS on the same shapes in the same run, and OpenBLAS's speed over
// each of the other two (x_go, x_gonum).
func BenchmarkMatMulT(b *testing.B) {
	for _, s := range [][3]int{{512, 512, 512}, {2048, 512, 512}, {1, 4096, 4096}} {
		m, n, k := s[0], s[1], s[2]
		r := rand.New(rand.NewPCG(1, 1))
		x, w, out := randSlice(r, m*k), randSlice(r, n*k), make([]float32, m*n)
		flops := 2 * float64(m) * float64(n) * float64(k)
		var gonumNs, goNs float64
		b.Run(fmt.Sprintf("gonum/%dx%dx%d", m, n, k), func(b *testing.B) {
			for b.Loop() {
				gonum.Implementation{}.Sgemm(gblas.NoTrans, gblas.Trans, m, n, k, 1, x, k, w, k, 0, out, n)
			}
			gonumNs = report(b, flops)
		})
		b.Run(fmt.Sprintf("go/%dx%dx%d", m, n, k), func(b *testing.B) {
			for b.Loop() {
				blas.Go.MatMulT(out, x, w, m, n, k)
			}
			goNs = report(b, flops)
		})
		b.Run(fmt.Sprintf("openblas/%dx%dx%d", m, n, k), func(b *testing.B) {
			for b.Loop() {
				Kernel{}.MatMulT(out, x, w, m, n, k)
			}
			ns := report(b, flops)
			b.ReportMetric(goNs/ns, "x_go")
			b.ReportMetric(gonumNs/ns, "x_gonum")
		})
	}
}

func report(b *testing.B, flops float64) float64 {
	ns := float64(b.Elapsed().Nanoseconds()) / float64(b.N)
	b.ReportMetric(flops/ns, "GFLOP/s")
	return ns
}

// TestCheckCore: a pre-AVX2 kernel set on an AVX2 CPU is refused with a
// message naming the environment variable; AVX2 sets, and any set on a CPU
// without AVX2, are accepted.
func TestCheckCore(t *testing.T) {
	for _, c := range []struct {
		core string
		avx2 bool
		ok   bool
	}{
		{"Haswell", true, true}, {"SkylakeX", true, true}, {"Zen", true, true}, {"Cooperlake", true, true},
		{"Prescott", true, false}, {"Nehalem", true, false}, {"Sandybridge", true, false},
		{"Prescott", false, true}, {"Sandybridge", false, true},
	} {
		err := checkCore(c.core, c.avx2)
		if (err == nil) != c.ok {
			t.Errorf("checkCore(%q, avx2=%v) = %v, want ok=%v", c.core, c.avx2, err, c.ok)
		}
		if err != nil && (!errors.Is(err, ErrSlowCore) || !strings.Contains(err.Error(), CoreEnv)) {
			t.Errorf("checkCore(%q): %v does not wrap ErrSlowCore or name %s", c.core, err, CoreEnv)
		}
	}
	t.Logf("this machine: OpenBLAS core %q, threads %d", CoreName(), Threads())
}

// TestBackendSingleThreaded: the registered backend leaves OpenBLAS at one
// thread (Kernel splits products over goroutines itself).
func TestBackendSingleThreaded(t *testing.T) {
	be, err := model.NewBackend(Name)
	if err != nil {
		t.Skipf("SKIPPING: backend refused on this machine: %v", err)
	}
	if be.Name() != Name || Threads() != 1 {
		t.Fatalf("backend %q with %d OpenBLAS threads, want %q with 1", be.Name(), Threads(), Name)
	}
}
