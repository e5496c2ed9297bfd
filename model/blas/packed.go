package blas

import "fmt"

// Packed is a weight matrix b [n,k] (row-major, the [out,in] layout of a
// linear layer) laid out once for MatMulTPacked, so that products with a
// constant b do not repack it on every call as MatMulT must.
//
// With the SIMD kernel (amd64 with AVX, not purego) the layout is the one
// the micro-kernels read: panels of 16 rows of b, each stored column by
// column over the whole of k,
//
//	panels[q][p][l] = b[16q+l, p]   for q in [0, ceil(n/16)), p in [0, k), l in [0, 16)
//
// zero where 16q+l >= n. Memory: 4·16·ceil(n/16)·k bytes, the size of b
// itself up to the padding of n to a multiple of 16; the raw b is not
// needed afterwards (every row count, GEMV included, runs on the panels).
// Elsewhere the scalar kernels read b in place, so Pack keeps b itself and
// costs nothing.
//
// A Packed value is immutable and safe for concurrent use.
type Packed struct {
	n, k   int
	panels []float32 // [ceil(n/16)][k][16]; nil when raw is used
	raw    []float32 // b itself when the scalar kernels run
}

// Pack lays out b [n,k] for MatMulTPacked. It panics, like MatMulT, on
// negative dimensions or len(b) < n*k. Where Pack keeps b itself (builds
// without the SIMD kernel), b must not be modified while the result is in
// use; with the SIMD kernel b is copied and may be reused at once.
func Pack(b []float32, n, k int) *Packed {
	CheckShapes("Pack", nil, nil, b, 0, n, k)
	p := &Packed{n: n, k: k}
	if !useWide {
		p.raw = b[: n*k : n*k]
		return p
	}
	np := (n + wideCols - 1) / wideCols
	p.panels = make([]float32, np*wideCols*k)
	// Pack the whole of k at once: packB's [p-p0][16] panel of columns
	// [0, k) is exactly panels[q].
	parallel(np, n*k*8, func(q int) {
		j0 := q * wideCols
		packB(p.panels[q*wideCols*k:(q+1)*wideCols*k], b, k, j0, min(j0+wideCols, n), 0, k)
	})
	return p
}

// Dims returns the shape [n,k] of the packed matrix.
func (p *Packed) Dims() (n, k int) { return p.n, p.k }

// Bytes is the memory the packed layout holds (0 when it keeps b itself).
func (p *Packed) Bytes() int { return 4 * len(p.panels) }

// Unpack writes the packed matrix back as b [n,k] row-major into dst
// (len(dst) >= n*k), exactly the values given to Pack. It lets a holder of
// the packed copy drop b and rebuild it when needed (to save a model). It
// panics when dst is short.
func (p *Packed) Unpack(dst []float32) {
	n, k := p.n, p.k
	if len(dst) < n*k {
		panic(fmt.Sprintf("blas.Packed.Unpack: len(dst)=%d < %d*%d", len(dst), n, k))
	}
	if p.panels == nil {
		copy(dst, p.raw)
		return
	}
	for j := range n {
		q, l := j/wideCols, j%wideCols
		panel := p.panels[q*wideCols*k : (q+1)*wideCols*k]
		row := dst[j*k : (j+1)*k]
		for pp := range row {
			row[pp] = panel[pp*wideCols+l]
		}
	}
}

// MatMulTPacked computes out[m,n] = a[m,k] · b[n,k]^T for the b packed in
// p, bit-identical to Go.MatMulT(out, a, b, m, n, k) for every m: the same
// summation order (one float32 accumulator per output, increasing k), only
// without repacking b. out is overwritten.
// Shapes: len(a) >= m*k, len(out) >= m*n. It panics like MatMulT on a
// negative m, short slices or a nil p.
func MatMulTPacked(out, a []float32, p *Packed, m int) {
	if p == nil {
		panic("blas.MatMulTPacked: nil *Packed")
	}
	n, k := p.n, p.k
	if p.panels == nil {
		goKernel{}.MatMulT(out, a, p.raw, m, n, k)
		return
	}
	if m < 0 || len(a) < m*k || len(out) < m*n {
		panic(fmt.Sprintf("blas.MatMulTPacked: m=%d against [%d,%d]: len(a)=%d (need m*k), len(out)=%d (need m*n)", m, n, k, len(a), len(out)))
	}
	if m == 0 || n == 0 {
		return
	}
	if k == 0 {
		clear(out[:m*n])
		return
	}
	if m < minWideRows {
		// GEMV and a few rows: every row against 64-column tiles of
		// panels, unblocked over k (a row of a stays in L1; the tile's
		// panels are reused from cache by the next row).
		tiles := (n + gemvTileN - 1) / gemvTileN
		parallel(tiles, m*n*k, func(t int) {
			j0 := t * gemvTileN
			gemvPackedTile(out, a, p, m, j0, min(j0+gemvTileN, n))
		})
		return
	}
	tilesM := (m + tileM - 1) / tileM
	tilesN := (n + tileN - 1) / tileN
	parallel(tilesM*tilesN, m*n*k, func(t int) {
		i0 := (t / tilesN) * tileM
		j0 := (t % tilesN) * tileN
		gemmPackedTile(out, a, p, i0, min(i0+tileM, m), j0, min(j0+tileN, n))
	})
}

// gemvTileN is the column width of a task of the few-row path: four panels,
// one call of the four-panel GEMV kernel.
const gemvTileN = 4 * wideCols

// gemvPackedTile computes out[0:m, j0:j1] (j0 a multiple of 16) one row at
// a time on the packed panels.
func gemvPackedTile(out, a []float32, p *Packed, m, j0, j1 int) {
	n, k := p.n, p.k
	ldp := wideCols * k
	for i := range m {
		ai := a[i*k : i*k+k]
		o := out[i*n:]
		j := j0
		if j+4*wideCols <= j1 {
			var c [4 * wideCols]float32
			gemv4x16(ai, p.panels[(j/wideCols)*ldp:], ldp, &c)
			copy(o[j:j+4*wideCols], c[:])
			j += 4 * wideCols
		}
		for ; j < j1; j += wideCols {
			var c [wideCols]float32
			gemv1x16(ai, p.panels[(j/wideCols)*ldp:], &c)
			copy(o[j:min(j+wideCols, j1)], c[:])
		}
	}
}

// gemmPackedTile is gemmTileWide on pre-packed panels: out[i0:i1, j0:j1]
// (j0 a multiple of 16), k in blocks of blockK, each 16-column panel block
// run against every 6-row group of a. A partial last group is copied,
// zero-padded to 6 rows, once per k block.
func gemmPackedTile(out, a []float32, p *Packed, i0, i1, j0, j1 int) {
	n, k := p.n, p.k
	ldp := wideCols * k
	var c [wideRows * wideCols]float32
	var apad []float32 // [6, kc] copy of the partial row group
	full := i0 + (i1-i0)/wideRows*wideRows
	for p0 := 0; p0 < k; p0 += blockK {
		p1 := min(p0+blockK, k)
		apad = padGroup(apad, a, k, full, i1, p0, p1)
		jq := j0
		if use512 {
			// Two panels per pass of the 512-bit kernel while both hold
			// columns of the tile.
			var c2 [wideRows * 2 * wideCols]float32
			for ; jq+wideCols < j1; jq += 2 * wideCols {
				q := jq / wideCols
				pair := p.panels[q*ldp+p0*wideCols : (q+1)*ldp+p1*wideCols]
				panelPairGroups(out, a, apad, pair, ldp, p1-p0, &c2, n, k, i0, i1, jq, min(2*wideCols, j1-jq), p0)
			}
		}
		for ; jq < j1; jq += wideCols {
			q := jq / wideCols
			panel := p.panels[q*ldp+p0*wideCols : q*ldp+p1*wideCols]
			panelGroups(out, a, apad, panel, &c, n, k, i0, i1, jq, min(wideCols, j1-jq), p0)
		}
	}
}

// use512 selects the 512-bit two-panel micro-kernel for packed products
// where the CPU has it. Its results are the 6×16 kernel's bits (tests turn
// it off to compare).
var use512 = haveAVX512

// panelPairGroups is panelGroups on two adjacent panels (pair[0:] and
// pair[ldp:], kc rows each of this k block): out[i, jq:jq+w] (+)=
// a[i, p0:p0+kc]·[panel0 panel1] for every 6-row group in [i0, i1), w in
// (16, 32].
func panelPairGroups(out, a, apad, pair []float32, ldp, kc int, c *[wideRows * 2 * wideCols]float32, n, k, i0, i1, jq, w, p0 int) {
	const cw = 2 * wideCols
	for i := i0; i < i1; i += wideRows {
		h := min(wideRows, i1-i) // rows of this group
		if p0 == 0 {
			clear(c[:])
		} else {
			for r := range h {
				copy(c[r*cw:r*cw+w], out[(i+r)*n+jq:(i+r)*n+jq+w])
			}
		}
		if h == wideRows {
			mulAdd6x32(a[i*k+p0:], k, pair, ldp, kc, c)
		} else {
			mulAdd6x32(apad, kc, pair, ldp, kc, c)
		}
		for r := range h {
			copy(out[(i+r)*n+jq:(i+r)*n+jq+w], c[r*cw:r*cw+w])
		}
	}
}

// mulAdd6x32Go is the reference of the 512-bit kernel:
// c[r*32+h*16+l] += a[r*lda+p]·b[h*ldp+p*16+l], in increasing p.
func mulAdd6x32Go(a []float32, lda int, b []float32, ldp, kc int, c *[192]float32) {
	for r := range wideRows {
		ar := a[r*lda : r*lda+kc]
		for h := range 2 {
			cr := c[r*2*wideCols+h*wideCols : r*2*wideCols+(h+1)*wideCols]
			bh := b[h*ldp:]
			for pp, x := range ar {
				bp := bh[pp*wideCols : (pp+1)*wideCols]
				for l := range cr {
					cr[l] += x * bp[l]
				}
			}
		}
	}
}

// gemv4x16Go is the reference of the four-panel GEMV kernel:
// c[q*16+l] += a[p]·b[q*ldp+p*16+l] for q < 4, l < 16, in increasing p.
func gemv4x16Go(a, b []float32, ldp int, c *[64]float32) {
	for q := range 4 {
		var cq [wideCols]float32
		copy(cq[:], c[q*wideCols:])
		gemv1x16Go(a, b[q*ldp:], &cq)
		copy(c[q*wideCols:], cq[:])
	}
}

// gemv1x16Go is the reference of the one-panel GEMV kernel:
// c[l] += a[p]·b[p*16+l] for l < 16, in increasing p.
func gemv1x16Go(a, b []float32, c *[16]float32) {
	b = b[:len(a)*wideCols]
	for p, x := range a {
		bp := b[p*wideCols : (p+1)*wideCols]
		for l := range c {
			c[l] += x * bp[l]
		}
	}
}
