package blas

import (
	"runtime"
	"sync"
	"sync/atomic"
)

// Blocking parameters of the GEMM.
//
// A task owns an output tile out[i0:i1, j0:j1] (at most tileM×tileN) and
// walks k in blocks of blockK. With the SIMD kernel, each k block of the
// tile's b rows is packed into 16-column panels (16×blockK floats = 16 KiB,
// kept in L1) that every 6-row group of a (6×blockK floats, from L2) runs
// against; the scalar kernels read b rows in place, 3 at a time. Every
// output is owned by exactly one task, so tasks never share a cache line of
// out except at tile borders, and the result does not depend on how tasks
// are spread over goroutines.
const (
	blockK = 256
	tileM  = 72 // a multiple of 6 and 2, the micro-kernel heights
	tileN  = 96 // a multiple of 16 and 3, the micro-kernel widths

	// serialFlops is the size (m·n·k) under which starting goroutines costs
	// more than it saves.
	serialFlops = 1 << 17
)

type goKernel struct{}

func (goKernel) MatMulT(out, a, b []float32, m, n, k int) {
	CheckShapes("MatMulT", out, a, b, m, n, k)
	if m == 0 || n == 0 {
		return
	}
	if k == 0 {
		clear(out[:m*n])
		return
	}
	tm := tileM
	if m == 1 {
		tm = 1
	}
	tilesM := (m + tm - 1) / tm
	tilesN := (n + tileN - 1) / tileN
	parallel(tilesM*tilesN, m*n*k, func(t int) {
		i0 := (t / tilesN) * tm
		j0 := (t % tilesN) * tileN
		gemmTile(out, a, b, n, k, i0, min(i0+tm, m), j0, min(j0+tileN, n))
	})
}

func (goKernel) MatMul(out, a, b []float32, m, n, k int) {
	CheckShapes("MatMul", out, a, b, m, n, k)
	if m == 0 || n == 0 {
		return
	}
	if k == 0 {
		clear(out[:m*n])
		return
	}
	if m < 4 {
		// Few rows: out_i = Σ_p a[i,p]·b[p,:] as a sequence of axpys
		// streams b once per row without the O(k·n) transposition. Each
		// out[i,j] still accumulates in increasing p, so the bits equal the
		// transposed path's.
		parallel((n+1023)/1024, m*n*k, func(t int) {
			j0, j1 := t*1024, min(t*1024+1024, n)
			for i := range m {
				o := out[i*n+j0 : i*n+j1]
				clear(o)
				ai := a[i*k : i*k+k]
				for p, s := range ai {
					axpy(s, b[p*n+j0:p*n+j1], o)
				}
			}
		})
		return
	}
	bt := getBuf(n * k)
	transpose(*bt, b[:k*n], k, n)
	goKernel{}.MatMulT(out, a, *bt, m, n, k)
	putBuf(bt)
}

// parallel runs task(0..tasks-1) on up to GOMAXPROCS goroutines, or inline
// when the work (m·n·k) is too small to be worth it.
func parallel(tasks, work int, task func(t int)) {
	workers := min(runtime.GOMAXPROCS(0), tasks)
	if workers <= 1 || work < serialFlops {
		for t := range tasks {
			task(t)
		}
		return
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	run := func() {
		for {
			t := int(next.Add(1) - 1)
			if t >= tasks {
				return
			}
			task(t)
		}
	}
	wg.Add(workers - 1)
	for range workers - 1 {
		go func() {
			defer wg.Done()
			run()
		}()
	}
	run()
	wg.Wait()
}

// gemmTile computes out[i0:i1, j0:j1] of out = a·b^T (row stride n, inner
// dimension k).
func gemmTile(out, a, b []float32, n, k, i0, i1, j0, j1 int) {
	if useWide && i1-i0 >= minWideRows {
		gemmTileWide(out, a, b, n, k, i0, i1, j0, j1)
		return
	}
	// One row (decode) is not blocked over k: the a row is reused from L1
	// anyway, and streaming each b row in one pass keeps the prefetchers on.
	kb := blockK
	if i1-i0 == 1 {
		kb = k
	}
	for p0 := 0; p0 < k; p0 += kb {
		p1 := min(p0+kb, k)
		first := p0 == 0
		j := j0
		if i1-i0 == 1 {
			// GEMV (decode): one a row against eight (AVX) or four b rows
			// at a time.
			a0 := a[i0*k+p0 : i0*k+p1]
			o := out[i0*n:]
			if useWide {
				var c [8]float32
				for ; j+8 <= j1; j += 8 {
					if first {
						c = [8]float32{}
					} else {
						copy(c[:], o[j:j+8])
					}
					dot8(a0, b[j*k+p0:], k, &c)
					copy(o[j:j+8], c[:])
				}
			}
			for ; j+4 <= j1; j += 4 {
				bj := b[j*k+p0:]
				dot1x4(a0, bj, bj[k:], bj[2*k:], bj[3*k:], o[j:j+4], first)
			}
		} else {
			for ; j+3 <= j1; j += 3 {
				b0 := b[j*k+p0 : j*k+p1]
				b1 := b[(j+1)*k+p0 : (j+1)*k+p1]
				b2 := b[(j+2)*k+p0 : (j+2)*k+p1]
				i := i0
				for ; i+2 <= i1; i += 2 {
					ai := a[i*k+p0:]
					oi := out[i*n+j:]
					dot2x3(ai[:p1-p0], ai[k:k+p1-p0], b0, b1, b2, oi, oi[n:], first)
				}
				if i < i1 {
					dot1x3(a[i*k+p0:i*k+p1], b0, b1, b2, out[i*n+j:i*n+j+3], first)
				}
			}
		}
		for ; j < j1; j++ {
			bj := b[j*k+p0 : j*k+p1]
			for i := i0; i < i1; i++ {
				dot1x1(a[i*k+p0:i*k+p1], bj, &out[i*n+j], first)
			}
		}
	}
}

// wideRows×wideCols is the tile of the SIMD micro-kernel.
const (
	wideRows = 6
	wideCols = 16

	// minWideRows is the smallest tile height sent to the SIMD kernel (a
	// partial group of rows is zero-padded to 6). Below it, packing b costs
	// more than the SIMD kernel saves (measured with m in [1,6], n=k=2048),
	// so decode (m=1) and tiny batches stay on the scalar kernels.
	minWideRows = 4
)

// useWide selects the SIMD micro-kernel for row groups of 6. It is on where
// the assembly kernel exists; the pure-Go mulAdd6x16Go computes the same
// bits but is slower than the scalar kernels, so it is only a reference.
var useWide = haveAVX

// gemmTileWide computes out[i0:i1, j0:j1] of out = a·b^T with the 6×16
// micro-kernel. Per k block, the b rows [j0, j1) are packed into panels of
// 16 columns ([p][16], zero-padded past j1), so the kernel vectorises across
// outputs: each SIMD lane is one output
// accumulated in increasing p, exactly like the scalar kernels.
func gemmTileWide(out, a, b []float32, n, k, i0, i1, j0, j1 int) {
	panels := (j1 - j0 + wideCols - 1) / wideCols
	buf := getBuf(panels * wideCols * min(blockK, k))
	defer putBuf(buf)
	var c [wideRows * wideCols]float32
	var apad []float32 // [6, kc] copy of the partial row group
	full := i0 + (i1-i0)/wideRows*wideRows
	for p0 := 0; p0 < k; p0 += blockK {
		p1 := min(p0+blockK, k)
		kc := p1 - p0
		packed := (*buf)[:panels*wideCols*kc]
		packB(packed, b, k, j0, j1, p0, p1)
		apad = padGroup(apad, a, k, full, i1, p0, p1)
		for q := range panels {
			jq := j0 + q*wideCols
			panelGroups(out, a, apad, packed[q*wideCols*kc:(q+1)*wideCols*kc], &c, n, k, i0, i1, jq, min(wideCols, j1-jq), p0)
		}
	}
}

// padGroup copies the partial row group a[i:i1, p0:p1] (i1-i < 6 rows) into
// apad as a [6, p1-p0] block whose rows past i1 are zero: the micro-kernel
// reads 6 rows, and the results of the zero rows are dropped. It allocates
// apad ([6, blockK]) on first use and returns it; with no partial group
// (i == i1) it does nothing.
func padGroup(apad, a []float32, k, i, i1, p0, p1 int) []float32 {
	if i >= i1 {
		return apad
	}
	if apad == nil {
		apad = make([]float32, wideRows*blockK)
	}
	kc := p1 - p0
	for r := range wideRows {
		row := apad[r*kc : (r+1)*kc]
		if i+r < i1 {
			copy(row, a[(i+r)*k+p0:(i+r)*k+p1])
		} else {
			clear(row)
		}
	}
	return apad
}

// panelGroups runs the 6×16 micro-kernel over one panel ([kc][16], kc =
// len(panel)/16) for every 6-row group of a in [i0, i1):
// out[i, jq:jq+w] (+)= a[i, p0:p0+kc]·panel, starting from zero when p0 is 0
// and from out's partial sums otherwise. The partial last group is read from
// apad, filled by padGroup for this k block.
func panelGroups(out, a, apad, panel []float32, c *[wideRows * wideCols]float32, n, k, i0, i1, jq, w, p0 int) {
	kc := len(panel) / wideCols
	for i := i0; i < i1; i += wideRows {
		h := min(wideRows, i1-i) // rows of this group
		if p0 == 0 {
			clear(c[:])
		} else {
			for r := range h {
				copy(c[r*wideCols:r*wideCols+w], out[(i+r)*n+jq:(i+r)*n+jq+w])
			}
		}
		if h == wideRows {
			mulAdd6x16(a[i*k+p0:], k, panel, kc, c)
		} else {
			mulAdd6x16(apad, kc, panel, kc, c)
		}
		for r := range h {
			copy(out[(i+r)*n+jq:(i+r)*n+jq+w], c[r*wideCols:r*wideCols+w])
		}
	}
}

// packB writes the panels of b rows [j0, j1), columns [p0, p1), as
// dst[q][p-p0][jj] = b[j0+16q+jj, p], zero where j0+16q+jj >= j1.
func packB(dst, b []float32, k, j0, j1, p0, p1 int) {
	kc := p1 - p0
	panels := (j1 - j0 + wideCols - 1) / wideCols
	for q := range panels {
		panel := dst[q*wideCols*kc : (q+1)*wideCols*kc]
		jj := 0
		// Four rows at a time: four sequential read streams, and each
		// write of four adjacent floats touches one cache line, not four.
		for ; jj+4 <= wideCols && j0+q*wideCols+jj+4 <= j1; jj += 4 {
			j := j0 + q*wideCols + jj
			r0 := b[j*k+p0 : j*k+p1]
			r1 := b[(j+1)*k+p0 : (j+1)*k+p1][:kc]
			r2 := b[(j+2)*k+p0 : (j+2)*k+p1][:kc]
			r3 := b[(j+3)*k+p0 : (j+3)*k+p1][:kc]
			for p, v := range r0 {
				d := panel[p*wideCols+jj : p*wideCols+jj+4]
				d[0], d[1], d[2], d[3] = v, r1[p], r2[p], r3[p]
			}
		}
		for ; jj < wideCols; jj++ {
			j := j0 + q*wideCols + jj
			if j >= j1 {
				for p := range kc {
					panel[p*wideCols+jj] = 0
				}
				continue
			}
			for p, v := range b[j*k+p0 : j*k+p1] {
				panel[p*wideCols+jj] = v
			}
		}
	}
}

// dot8Go is the reference of the assembly GEMV block:
// c[j] += a[p]·b[j*ldb+p] for j < 8, in increasing p.
func dot8Go(a, b []float32, ldb int, c *[8]float32) {
	for j := range c {
		bj := b[j*ldb : j*ldb+len(a)]
		s := c[j]
		for p, x := range a {
			s += x * bj[p]
		}
		c[j] = s
	}
}

// mulAdd6x16Go is the reference of the assembly micro-kernel:
// c[r*16+l] += a[r*lda+p]·b[p*16+l] for r < 6, l < 16, in increasing p.
func mulAdd6x16Go(a []float32, lda int, b []float32, kc int, c *[96]float32) {
	for r := range wideRows {
		cr := c[r*wideCols : (r+1)*wideCols]
		ar := a[r*lda : r*lda+kc]
		for p, x := range ar {
			bp := b[p*wideCols : (p+1)*wideCols]
			for l := range cr {
				cr[l] += x * bp[l]
			}
		}
	}
}

// The micro-kernels below accumulate each output in one float32 register,
// in increasing p, starting from 0 (first block) or from the partial sum
// already in out (later k blocks). Storing the partial sum to memory between
// blocks does not round it (it is a float32 already), so blocking does not
// change the result. They must all keep exactly this form (c += x*y, one
// accumulator per output) to stay bit-identical to each other.

func dot2x3(a0, a1, b0, b1, b2, o0, o1 []float32, first bool) {
	n := len(a0)
	a1, b0, b1, b2 = a1[:n], b0[:n], b1[:n], b2[:n]
	o0, o1 = o0[:3], o1[:3]
	var c00, c01, c02, c10, c11, c12 float32
	if !first {
		c00, c01, c02 = o0[0], o0[1], o0[2]
		c10, c11, c12 = o1[0], o1[1], o1[2]
	}
	for p, x0 := range a0 {
		x1 := a1[p]
		y0, y1, y2 := b0[p], b1[p], b2[p]
		c00 += x0 * y0
		c01 += x0 * y1
		c02 += x0 * y2
		c10 += x1 * y0
		c11 += x1 * y1
		c12 += x1 * y2
	}
	o0[0], o0[1], o0[2] = c00, c01, c02
	o1[0], o1[1], o1[2] = c10, c11, c12
}

func dot1x4(a0, b0, b1, b2, b3, o []float32, first bool) {
	n := len(a0)
	b0, b1, b2, b3 = b0[:n], b1[:n], b2[:n], b3[:n]
	o = o[:4]
	var c0, c1, c2, c3 float32
	if !first {
		c0, c1, c2, c3 = o[0], o[1], o[2], o[3]
	}
	for p, x := range a0 {
		c0 += x * b0[p]
		c1 += x * b1[p]
		c2 += x * b2[p]
		c3 += x * b3[p]
	}
	o[0], o[1], o[2], o[3] = c0, c1, c2, c3
}

func dot1x3(a0, b0, b1, b2, o []float32, first bool) {
	n := len(a0)
	b0, b1, b2 = b0[:n], b1[:n], b2[:n]
	o = o[:3]
	var c0, c1, c2 float32
	if !first {
		c0, c1, c2 = o[0], o[1], o[2]
	}
	for p, x := range a0 {
		c0 += x * b0[p]
		c1 += x * b1[p]
		c2 += x * b2[p]
	}
	o[0], o[1], o[2] = c0, c1, c2
}

func dot1x1(a0, b0 []float32, o *float32, first bool) {
	b0 = b0[:len(a0)]
	var c float32
	if !first {
		c = *o
	}
	for p, x := range a0 {
		c += x * b0[p]
	}
	*o = c
}

// axpyGo computes y += s·x, four lanes per iteration (independent outputs, so
// unrolling does not reorder any sum).
func axpyGo(s float32, x, y []float32) {
	x = x[:len(y)]
	i := 0
	for ; i+4 <= len(y); i += 4 {
		y[i] += s * x[i]
		y[i+1] += s * x[i+1]
		y[i+2] += s * x[i+2]
		y[i+3] += s * x[i+3]
	}
	for ; i < len(y); i++ {
		y[i] += s * x[i]
	}
}

// transpose writes dst[c,r] = src[r,c] for src [rows,cols], in 32×32 blocks
// so both sides are read and written a cache line at a time.
func transpose(dst, src []float32, rows, cols int) {
	const bs = 32
	dst = dst[:rows*cols]
	for r0 := 0; r0 < rows; r0 += bs {
		r1 := min(r0+bs, rows)
		for c0 := 0; c0 < cols; c0 += bs {
			c1 := min(c0+bs, cols)
			for r := r0; r < r1; r++ {
				s := src[r*cols+c0 : r*cols+c1]
				for c, v := range s {
					dst[(c0+c)*rows+r] = v
				}
			}
		}
	}
}

var bufPool sync.Pool // *[]float32

func getBuf(n int) *[]float32 {
	if p, ok := bufPool.Get().(*[]float32); ok && cap(*p) >= n {
		*p = (*p)[:n]
		return p
	}
	s := make([]float32, n)
	return &s
}

func putBuf(p *[]float32) { bufPool.Put(p) }
