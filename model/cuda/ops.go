package cuda

import "fmt"

// elem is the element type of a device buffer.
type elem uint8

const (
	elemF32  elem = iota // float32: activations, norms, biases, scores
	elemHalf             // the runtime's storage DType: weights, K, V
	elemI32              // int32: token ids, positions
	elemF64              // float64: RoPE inverse frequencies
)

func (e elem) String() string {
	return [...]string{"f32", "half", "i32", "f64"}[e]
}

// allocation is one device allocation. ptr is the device address (CUDA);
// host holds the backing slice of the pure-Go implementation.
type allocation struct {
	ptr  uintptr
	host any
	n    int // elements
}

// buf is n elements of one kind starting at element off of an allocation:
// the only handle kernels take, so views of a cache layer or of a row range
// cost nothing.
type buf struct {
	a    *allocation
	kind elem
	off  int
	n    int
}

// view returns elements [begin, begin+n) of b. Out of range is a broken
// invariant of the caller (panic).
func (b buf) view(begin, n int) buf {
	if begin < 0 || n < 0 || begin+n > b.n {
		panic(fmt.Sprintf("cuda: view [%d, %d) of a buffer of %d", begin, begin+n, b.n))
	}
	return buf{a: b.a, kind: b.kind, off: b.off + begin, n: n}
}

// valid reports whether b refers to memory.
func (b buf) valid() bool { return b.a != nil }

// attnShape describes one attention call. The batch's queries are rows
// [0, N); keys are the C cache entries followed by the N batch tokens, so key
// index j in [0, C) is cache entry j and j in [C, C+N) is batch row j-C.
// Batch positions strictly increase, so query i never sees keys past C+i:
// a block of queries [q0, q1) scans keys [0, C+q1) only.
type attnShape struct {
	N, C    int // queries (batch rows) and cache entries
	Heads   int // query heads
	KVHeads int // key/value heads; query head h reads KV head h/(Heads/KVHeads)
	HeadDim int
	Scale   float32 // 1/sqrt(HeadDim)
}

// Keys is C+N.
func (s attnShape) Keys() int { return s.C + s.N }

// ops are the device primitives the forward pass is written against. The
// CUDA implementation (build tag cuda) launches one kernel or one cuBLAS call
// per method on a single stream, so calls are ordered; hostOps runs them in
// Go. Shapes are row-major; "half" means the runtime's storage DType.
// Methods return an error only for device failures; shape mismatches are
// caught by the caller (runtime.go) before any call.
type ops interface {
	dtype() DType
	// enter binds the calling goroutine to the device (CUDA contexts are
	// per OS thread) until the returned function is called.
	enter() (exit func())
	alloc(kind elem, n int) (buf, error)
	free(b buf)
	// upload copies src ([]float32 for f32, []uint16 or []float32 (F32
	// dtype) for half, []int32, []float64) into dst; len(src) == dst.n.
	upload(dst buf, src any) error
	// download copies src into dst (same element types as upload).
	download(dst any, src buf) error
	// copy copies src into dst (same kind and length).
	copy(dst, src buf) error
	// sync waits for all queued work.
	sync() error

	// embed: out f32 [n, dim] = table half [vocab, dim] rows ids i32 [n].
	embed(out, table, ids buf, n, dim int) error
	// rmsNorm: out half [n, dim] = w f32 [dim] * x f32 [n, dim] / rms(x row).
	rmsNorm(out, x, w buf, n, dim int, eps float32) error
	// gemm: out f32 [m, n] = a half [m, k] · w half [n, k]^T, plus out's
	// previous value when accumulate (the residual add).
	gemm(out, a, w buf, m, n, k int, accumulate bool) error
	// addBias: x f32 [n, width] += b f32 [width] on every row.
	addBias(x, b buf, n, width int) error
	// toHalf: out half [rows, width] = in f32 rows of stride inStride.
	toHalf(out, in buf, rows, width, inStride int) error
	// ropeTable: cs f32 [rows, half, 2] = cos, sin of pos[r]*freq[i] for
	// pos i32 [rows] and freq f64 [half], computed in float64 and rounded to
	// float32 (package model's rope does the same). One table per pass serves
	// every layer.
	ropeTable(cs, pos, freq buf, rows, half int) error
	// rope rotates rows of heads*HeadDim values: out[r] = RoPE(in[r]) with
	// the cos/sin of table row r (cs from ropeTable). in and out are both f32
	// or both half; row strides are inStride and outStride elements;
	// interleaved selects pairs (2i, 2i+1) rather than (i, i+HeadDim/2).
	// The rotation is fp32.
	rope(out, in, cs buf, rows, heads, headDim, inStride, outStride int, interleaved bool) error
	// siluMul: out half [n, h] = silu(in[:, :h]) * in[:, h:] for in f32 [n, 2h].
	siluMul(out, in buf, n, h int) error
	// attention: out half [N, Heads*HeadDim] = softmax(q·K^T·Scale)·V over
	// the visible keys: key j is visible to query i when kpos[j] <= qpos[i]
	// (shadowed cache entries carry kpos = MaxInt32). q f32 [N, Heads,
	// HeadDim] (rotated), k half [C+N, KVHeads, HeadDim] (rotated), vc half
	// [C, KVHeads, HeadDim], vb half [N, KVHeads, HeadDim]. When lse is
	// valid it receives f32 [Heads, N] log-sum-exp of the scaled scores.
	attention(out, q, k, vc, vb, kpos, qpos, lse buf, s attnShape) error
	// attnWeights recomputes the normalised weights exp(score - lse) from
	// attention's lse. With weights valid it writes f32 [Heads, N, C+N];
	// with partial valid, f32 [Heads, C+N] sums over the queries (one of
	// the two). Masked keys weigh 0.
	attnWeights(weights, partial, q, k, kpos, qpos, lse buf, s attnShape) error
	// sumRows: out f32 [width] = sum over rows of in f32 [rows, width], in
	// row order.
	sumRows(out, in buf, rows, width int) error
	// fillRandom fills a half or f32 buffer with deterministic uniform
	// values in [-scale, scale) from seed (synthetic benchmark weights).
	fillRandom(b buf, seed uint64, scale float32) error
	close() error
}

// Tile sizes shared by the kernels and hostOps (kernels/attention.cu uses
// the same constants): a block of attnQTile queries of one head scans keys
// in tiles of attnKTile, one key per lane of a warp.
const (
	attnKTile   = 32
	attnQTile   = 16
	attnWarps   = 4 // attnQTile/attnWarps queries per warp
	maxHeadDim  = 128
	ropeThreads = 128
)

// randomValue is the generator behind fillRandom, shared by the kernel
// (kernels/common.cuh) and hostOps: a splitmix64 hash of (seed, index)
// mapped to [-1, 1).
func randomValue(seed uint64, i uint64) float32 {
	z := seed + (i+1)*0x9e3779b97f4a7c15
	z = (z ^ z>>30) * 0xbf58476d1ce4e5b9
	z = (z ^ z>>27) * 0x94d049bb133111eb
	z ^= z >> 31
	return float32(z>>40)*(1.0/(1<<23)) - 1
}
