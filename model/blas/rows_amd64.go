//go:build amd64 && !purego

package blas

//go:noescape
func axpyRows64AVX(p *float32, nk int, v *float32, ldv int, y *float32)

//go:noescape
func axpyRows8AVX(p *float32, nk int, v *float32, ldv int, y *float32)

// axpyRows: the assembly takes y in blocks of 64 then 8 columns (each
// column's chain of updates is independent of the others, so the split
// changes no bits), Go the rest.
func axpyRows(p, v []float32, ldv int, y []float32) {
	if !haveAVX || len(p) == 0 {
		axpyRowsGo(p, v, ldv, y)
		return
	}
	c := 0
	for ; c+64 <= len(y); c += 64 {
		axpyRows64AVX(&p[0], len(p), &v[c], ldv, &y[c])
	}
	for ; c+8 <= len(y); c += 8 {
		axpyRows8AVX(&p[0], len(p), &v[c], ldv, &y[c])
	}
	if c < len(y) {
		axpyRowsGo(p, v[c:], ldv, y[c:])
	}
}
