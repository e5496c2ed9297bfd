package blas

import (
	"math"
	"math/rand/v2"
	"testing"
)

// packPanels lays b [n,k] out as PanelMulAdd reads it.
func packPanels(b []float32, n, k int) []float32 {
	np := (n + PanelCols - 1) / PanelCols
	p := make([]float32, np*PanelCols*k)
	for j := range n {
		for pp := range k {
			p[(j/PanelCols)*PanelCols*k+pp*PanelCols+j%PanelCols] = b[j*k+pp]
		}
	}
	return p
}

// TestPanelMulAdd checks PanelMulAdd against Go.MatMulT bit for bit (from
// a zero out: the same summation order), over row counts that take the
// GEMV path (< 4), full and partial 6-row groups, odd panel counts (the
// 512-bit pair kernel and the 16-wide one), with strides, and that it adds
// to out rather than overwriting it.
func TestPanelMulAdd(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 1))
	for _, wide512 := range []bool{false, true} {
		if wide512 && !haveAVX512 {
			continue
		}
		saved := use512
		use512 = wide512
		for _, m := range []int{1, 2, 3, 4, 5, 6, 7, 12, 13, 48} {
			for _, n := range []int{1, 8, 16, 17, 33, 64, 70} {
				for _, k := range []int{1, 8, 64, 129} {
					a := make([]float32, m*(k+3))
					for i := range a {
						a[i] = float32(r.NormFloat64())
					}
					b := make([]float32, n*k)
					for i := range b {
						b[i] = float32(r.NormFloat64())
					}
					ac := make([]float32, m*k)
					for i := range m {
						copy(ac[i*k:(i+1)*k], a[i*(k+3):i*(k+3)+k])
					}
					want := make([]float32, m*n)
					Go.MatMulT(want, ac, b, m, n, k)
					ldo := n + 5
					got := make([]float32, m*ldo)
					for i := range got {
						got[i] = 7 // outside [0, n) of each row: must stay
					}
					for i := range m {
						clear(got[i*ldo : i*ldo+n])
					}
					PanelMulAdd(got, ldo, a, k+3, packPanels(b, n, k), m, n, k)
					for i := range m {
						for j := range ldo {
							g := got[i*ldo+j]
							if j >= n {
								if g != 7 {
									t.Fatalf("m=%d n=%d k=%d: out[%d,%d] = %g written past n", m, n, k, i, j, g)
								}
								continue
							}
							if math.Float32bits(g) != math.Float32bits(want[i*n+j]) {
								t.Fatalf("512=%v m=%d n=%d k=%d: out[%d,%d] = %g, MatMulT %g", wide512, m, n, k, i, j, g, want[i*n+j])
							}
						}
					}
					// Adds: a second call doubles a product of exact halves.
					for i := range m {
						for j := range n {
							got[i*ldo+j] = 1
						}
					}
					PanelMulAdd(got, ldo, make([]float32, m*(k+3)), k+3, packPanels(b, n, k), m, n, k)
					if got[0] != 1 {
						t.Fatalf("m=%d n=%d k=%d: a zero product changed out to %g", m, n, k, got[0])
					}
				}
			}
		}
		use512 = saved
	}
}

func TestPanelMulAddPanics(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Fatal("no panic on a short panel slice")
		}
	}()
	PanelMulAdd(make([]float32, 16), 16, make([]float32, 4), 4, make([]float32, 10), 1, 16, 4)
}

// TestAxpyRows: AxpyRows equals Axpy applied key after key, bit for bit,
// for widths that take the 64- and 8-column kernels and the Go tail.
func TestAxpyRows(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 5))
	for _, w := range []int{1, 7, 8, 9, 64, 72, 128, 130} {
		for _, nk := range []int{1, 3, 64} {
			ldv := w + 3
			v := make([]float32, nk*ldv)
			for i := range v {
				v[i] = float32(r.NormFloat64())
			}
			p := make([]float32, nk)
			for i := range p {
				p[i] = float32(r.Float64())
			}
			y0 := make([]float32, w)
			for i := range y0 {
				y0[i] = float32(r.NormFloat64())
			}
			want := append([]float32(nil), y0...)
			for j := range nk {
				Axpy(p[j], v[j*ldv:], want)
			}
			got := append([]float32(nil), y0...)
			AxpyRows(p, v, ldv, got)
			for c := range got {
				if math.Float32bits(got[c]) != math.Float32bits(want[c]) {
					t.Fatalf("w=%d nk=%d: y[%d] = %g, Axpy loop %g", w, nk, c, got[c], want[c])
				}
			}
		}
	}
}
