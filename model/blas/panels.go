package blas

import "fmt"

// PanelCols is the width of a panel of the Packed layout: PanelMulAdd's b
// is stored as ceil(n/PanelCols) panels of [k][PanelCols].
const PanelCols = wideCols

// PanelMulAdd continues
//
//	out[i*ldo+j] += a[i*lda+0]·b[j,0] + a[i*lda+1]·b[j,1] + ... + a[i*lda+k-1]·b[j,k-1]
//
// for i in [0, m), j in [0, n), one float32 accumulator per output starting
// from out's value, the terms added strictly in increasing p (the summation
// order of package blas). b [n,k] is given in the panel layout of Packed,
// laid out by the caller:
//
//	panels[q*PanelCols*k + p*PanelCols + l] = b[q*PanelCols+l, p]
//
// for q in [0, ceil(n/PanelCols)), p in [0, k), l in [0, PanelCols); entries
// for rows j >= n are read but their outputs are not written. It runs on the
// calling goroutine (attention tiles are parallel over tiles, not inside
// one). Every element gets the same bits whatever m, the row's place in a,
// and the micro-kernel that computed it (6-row groups or the few-row GEMV
// path), so an attention row computed alone equals the same row in a block.
// It panics on negative dimensions or short slices.
func PanelMulAdd(out []float32, ldo int, a []float32, lda int, panels []float32, m, n, k int) {
	np := (n + wideCols - 1) / wideCols
	if m < 0 || n < 0 || k < 0 || (m > 0 && (ldo < n || lda < k)) {
		panic(fmt.Sprintf("blas.PanelMulAdd: m=%d n=%d k=%d ldo=%d lda=%d", m, n, k, ldo, lda))
	}
	if m == 0 || n == 0 || k == 0 {
		return
	}
	if len(out) < (m-1)*ldo+n || len(a) < (m-1)*lda+k || len(panels) < np*wideCols*k {
		panic(fmt.Sprintf("blas.PanelMulAdd: short slices: len(out)=%d len(a)=%d len(panels)=%d for m=%d n=%d k=%d ldo=%d lda=%d",
			len(out), len(a), len(panels), m, n, k, ldo, lda))
	}
	ldp := wideCols * k
	if m < minWideRows {
		for i := range m {
			ai := a[i*lda : i*lda+k]
			o := out[i*ldo : i*ldo+n]
			j := 0
			for ; j+4*wideCols <= n; j += 4 * wideCols {
				var c [4 * wideCols]float32
				copy(c[:], o[j:j+4*wideCols])
				gemv4x16(ai, panels[(j/wideCols)*ldp:], ldp, &c)
				copy(o[j:j+4*wideCols], c[:])
			}
			for ; j < n; j += wideCols {
				var c [wideCols]float32
				w := min(wideCols, n-j)
				copy(c[:w], o[j:j+w])
				gemv1x16(ai, panels[(j/wideCols)*ldp:], &c)
				copy(o[j:j+w], c[:w])
			}
		}
		return
	}
	var padBuf [wideRows * 256]float32
	var apad []float32
	for i := 0; i < m; i += wideRows {
		h := min(wideRows, m-i)
		ag, la := a[i*lda:], lda
		if h < wideRows {
			if k <= 256 {
				apad = padBuf[:wideRows*k]
			} else {
				apad = make([]float32, wideRows*k)
			}
			for r := range wideRows {
				if r < h {
					copy(apad[r*k:(r+1)*k], a[(i+r)*lda:(i+r)*lda+k])
				} else {
					clear(apad[r*k : (r+1)*k])
				}
			}
			ag, la = apad, k
		}
		q := 0
		if use512 {
			const cw = 2 * wideCols
			var c [wideRows * cw]float32
			for ; q+1 < np; q += 2 {
				j, w := q*wideCols, min(cw, n-q*wideCols)
				for r := range h {
					copy(c[r*cw:r*cw+w], out[(i+r)*ldo+j:(i+r)*ldo+j+w])
				}
				mulAdd6x32(ag, la, panels[q*ldp:], ldp, k, &c)
				for r := range h {
					copy(out[(i+r)*ldo+j:(i+r)*ldo+j+w], c[r*cw:r*cw+w])
				}
			}
		}
		var c [wideRows * wideCols]float32
		for ; q < np; q++ {
			j, w := q*wideCols, min(wideCols, n-q*wideCols)
			for r := range h {
				copy(c[r*wideCols:r*wideCols+w], out[(i+r)*ldo+j:(i+r)*ldo+j+w])
			}
			mulAdd6x16(ag, la, panels[q*ldp:q*ldp+ldp], k, &c)
			for r := range h {
				copy(out[(i+r)*ldo+j:(i+r)*ldo+j+w], c[r*wideCols:r*wideCols+w])
			}
		}
	}
}

// Dot8 continues c[j] += a[0]·b[j*ldb+0] + ... + a[k-1]·b[j*ldb+k-1] for
// j in [0, 8), k = len(a), the terms added in increasing p with one
// float32 accumulator per output: eight dot products of a with rows of b
// ldb floats apart, read in place. From c = 0 each output has the bits
// PanelMulAdd gives it. It panics when b is short.
func Dot8(a, b []float32, ldb int, c *[8]float32) {
	if len(a) == 0 {
		return
	}
	if ldb < len(a) || len(b) < 7*ldb+len(a) {
		panic(fmt.Sprintf("blas.Dot8: len(b)=%d, ldb=%d for 8 rows of %d", len(b), ldb, len(a)))
	}
	dot8(a, b, ldb, c)
}

// Axpy computes y[i] += s·x[i] for i in [0, len(y)) (len(x) >= len(y)), a
// multiply then an add per element (no fused multiply-add): the update
// PanelMulAdd applies per term, so a sum built by Axpy calls in increasing
// p has its bits.
func Axpy(s float32, x, y []float32) {
	if len(x) < len(y) {
		panic(fmt.Sprintf("blas.Axpy: len(x)=%d < len(y)=%d", len(x), len(y)))
	}
	axpy(s, x, y)
}

// AxpyRows computes y[c] += p[0]·v[c] + p[1]·v[ldv+c] + ... for c in
// [0, len(y)), the keys j in increasing order, each term a multiply then
// an add: len(p) Axpy calls (y += p[j]·v[j*ldv:]) in one, y kept in
// registers (attention's P·V for a row with V read in place). It panics
// when v is short.
func AxpyRows(p, v []float32, ldv int, y []float32) {
	if len(p) == 0 || len(y) == 0 {
		return
	}
	if ldv < len(y) || len(v) < (len(p)-1)*ldv+len(y) {
		panic(fmt.Sprintf("blas.AxpyRows: len(v)=%d, ldv=%d for %d rows of %d", len(v), ldv, len(p), len(y)))
	}
	axpyRows(p, v, ldv, y)
}

// axpyRowsGo is the reference of axpyRows.
func axpyRowsGo(p, v []float32, ldv int, y []float32) {
	for j, s := range p {
		vj := v[j*ldv : j*ldv+len(y)]
		for c := range y {
			y[c] += s * vj[c]
		}
	}
}
