package llamacpp

import (
	"encoding/binary"
	"fmt"
	"math"

	"github.com/fusionrag/fusionrag/model"
)

// Layout is how a llama-server holds KV, learned from a slot file it saved
// (the handshake's probe) and the sidecar's model.
type Layout struct {
	// Streams is n_stream: the slot count without --kv-unified, 1 with it.
	Streams int
	// VTrans: V stored transposed (flash attention off).
	VTrans bool
	// KType, VType: the cache types (-ctk, -ctv); f16, bf16 or f32.
	KType, VType GGMLType
	// Layers, KVHeads, HeadDim: the model's KV shape (from cfg.Model,
	// checked against the file's layer count and row sizes).
	Layers, KVHeads, HeadDim int
	// PermuteK: the server's K head dims are ours interleaved,
	// server[2i+c] = ours[c*HeadDim/2+i]. A Hugging Face Llama converted to
	// GGUF has its wq/wk rows permuted so that llama.cpp rotates adjacent
	// pairs (rope type NORM); our runtime keeps the HF order and rotates
	// halves. Models whose GGUF keeps the order (llama2.c checkpoints,
	// Qwen2's NEOX rope) have PermuteK false. The handshake finds it by
	// comparing both candidates with the server's probe KV.
	PermuteK bool
}

func (l Layout) kvDim() int { return l.KVHeads * l.HeadDim }

func (l Layout) String() string {
	return fmt.Sprintf("n_stream %d, v_trans %v, K %v, V %v, %d layers x %d KV heads x %d, permuted K %v",
		l.Streams, l.VTrans, l.KType, l.VType, l.Layers, l.KVHeads, l.HeadDim, l.PermuteK)
}

// layoutOf reads a layout from a slot file the server saved and checks it
// against the model's shape. ErrUnsupported for quantised caches and
// models the codec cannot address (other per-layer shapes).
func layoutOf(f *SlotFile, cfg model.Config) (Layout, error) {
	lay := Layout{Streams: len(f.Streams), Layers: cfg.Layers, KVHeads: cfg.KVHeads, HeadDim: cfg.HeadDim}
	var st *Stream
	for i := range f.Streams {
		if len(f.Streams[i].Cells) > 0 {
			if st != nil {
				return lay, fmt.Errorf("%w: probe slot file has cells in two streams", ErrSlotFile)
			}
			st = &f.Streams[i]
		}
	}
	if st == nil {
		return lay, fmt.Errorf("%w: probe slot file holds no cells", ErrSlotFile)
	}
	if len(st.Layers) != cfg.Layers {
		return lay, fmt.Errorf("%w: server holds %d KV layers, model has %d", errShape, len(st.Layers), cfg.Layers)
	}
	lay.VTrans = st.VTrans
	lay.KType, lay.VType = st.Layers[0].KType, st.Layers[0].VType
	for _, t := range []GGMLType{lay.KType, lay.VType} {
		if t.Size() == 0 {
			return lay, fmt.Errorf("%w: cache type %v (quantised KV caches are not supported; run llama-server with -ctk/-ctv f16, bf16 or f32)", ErrUnsupported, t)
		}
	}
	kv := uint64(lay.kvDim())
	for l, L := range st.Layers {
		if L.KType != lay.KType || L.VType != lay.VType {
			return lay, fmt.Errorf("%w: layer %d cache types %v/%v differ from layer 0's", ErrUnsupported, l, L.KType, L.VType)
		}
		if L.KRowSize != kv*uint64(lay.KType.Size()) {
			return lay, fmt.Errorf("%w: layer %d K row is %d bytes, model's %d KV values of %v are %d", errShape, l, L.KRowSize, kv, lay.KType, kv*uint64(lay.KType.Size()))
		}
		if st.VTrans {
			if uint64(L.VEmbd) != kv || int(L.VElSize) != lay.VType.Size() {
				return lay, fmt.Errorf("%w: layer %d V has %d channels of %d bytes, model %d of %v", errShape, l, L.VEmbd, L.VElSize, kv, lay.VType)
			}
		} else if L.VRowSize != kv*uint64(lay.VType.Size()) {
			return lay, fmt.Errorf("%w: layer %d V row is %d bytes, want %d", errShape, l, L.VRowSize, kv*uint64(lay.VType.Size()))
		}
	}
	return lay, nil
}

// rope rotates K as the model does (the model's frequencies,
// model.Config.RopeFreqs, with llama3 scaling; cos/sin rounded once to
// float32, as model/rope.go does). The rotation itself is repeated here
// because the model package keeps its own private (it rotates forward only,
// through a cos/sin table); the golden test against a real server's file
// proves the two agree.
type rope struct {
	half        int
	interleaved bool
	freq        []float64
}

func newRope(c model.Config) *rope {
	return &rope{half: c.HeadDim / 2, interleaved: c.RopeInterleaved, freq: c.RopeFreqs()}
}

// rotate rotates x, one token's [heads, 2*half] keys, in place to position
// p (inverse: by -p, undoing a rotation to p).
func (r *rope) rotate(x []float32, heads int, p int32, inverse bool) {
	hd := 2 * r.half
	for i, f := range r.freq {
		v := float64(p) * f
		c, s := float32(math.Cos(v)), float32(math.Sin(v))
		if inverse {
			s = -s
		}
		for h := range heads {
			y := x[h*hd : (h+1)*hd]
			a, b := 2*i, 2*i+1
			if !r.interleaved {
				a, b = i, i+r.half
			}
			ya, yb := y[a], y[b]
			y[a] = ya*c - yb*s
			y[b] = ya*s + yb*c
		}
	}
}

// permute maps one token's keys from our head-dim order to the server's
// (inverse: back), see Layout.PermuteK.
func permute(dst, src []float32, heads, headDim int, inverse bool) {
	half := headDim / 2
	for h := range heads {
		s, d := src[h*headDim:(h+1)*headDim], dst[h*headDim:(h+1)*headDim]
		for i := range half {
			for c := range 2 {
				if inverse {
					d[c*half+i] = s[2*i+c]
				} else {
					d[2*i+c] = s[c*half+i]
				}
			}
		}
	}
}

// serverKV returns kv's K and V as the server holds them, in float32:
// per layer [n, KVHeads*HeadDim], K rotated to each entry's position (and
// permuted when lay.PermuteK). kv's K is before RoPE.
func serverKV(lay Layout, rot *rope, kv *model.Cache) (K, V [][]float32) {
	n, d := kv.Len(), lay.kvDim()
	K, V = make([][]float32, lay.Layers), make([][]float32, lay.Layers)
	tmp := make([]float32, d)
	for l := range lay.Layers {
		k := append([]float32(nil), kv.K[l][:n*d]...)
		for t := range n {
			row := k[t*d : (t+1)*d]
			rot.rotate(row, lay.KVHeads, kv.Pos[t], false)
			if lay.PermuteK {
				copy(tmp, row)
				permute(row, tmp, lay.KVHeads, lay.HeadDim, false)
			}
		}
		K[l], V[l] = k, kv.V[l][:n*d]
	}
	return K, V
}

// fromServer undoes serverKV for K rows read from a file: rotates back by
// each position and un-permutes, giving K before RoPE in our layout.
func fromServer(lay Layout, rot *rope, pos []int32, K [][]float32) {
	d := lay.kvDim()
	tmp := make([]float32, d)
	for l := range K {
		for t, p := range pos {
			row := K[l][t*d : (t+1)*d]
			if lay.PermuteK {
				copy(tmp, row)
				permute(row, tmp, lay.KVHeads, lay.HeadDim, true)
			}
			rot.rotate(row, lay.KVHeads, p, true)
		}
	}
}

// encodeSlot builds the slot file that restores kv (the KV of tokens at
// positions kv.Pos, K before RoPE) into a slot of a server of layout lay.
// The cells go into stream 0 (restore puts them into the slot's own stream
// whatever their index in the file); seq is written as each cell's sequence
// (restore discards it).
func encodeSlot(lay Layout, rot *rope, tokens []int32, kv *model.Cache, seq int32) *SlotFile {
	n, d := kv.Len(), lay.kvDim()
	f := &SlotFile{Tokens: tokens, Packed: true, Streams: make([]Stream, lay.Streams)}
	st := &f.Streams[0]
	st.VTrans = lay.VTrans
	st.Cells = make([]Cell, n)
	seqs := []int32{seq}
	for i := range st.Cells {
		st.Cells[i] = Cell{Pos: kv.Pos[i], SeqIDs: seqs}
	}
	K, V := serverKV(lay, rot, kv)
	st.Layers = make([]Layer, lay.Layers)
	for l := range st.Layers {
		L := &st.Layers[l]
		L.KType, L.KRowSize = lay.KType, uint64(d*lay.KType.Size())
		L.K = encodeFloats(lay.KType, K[l])
		L.VType = lay.VType
		if lay.VTrans {
			L.VElSize, L.VEmbd = uint32(lay.VType.Size()), uint32(d)
			L.V = encodeFloats(lay.VType, transpose(V[l], n, d))
		} else {
			L.VRowSize = uint64(d * lay.VType.Size())
			L.V = encodeFloats(lay.VType, V[l])
		}
	}
	return f
}

// decodeStream returns a stream's positions and its K, V as float32 per
// layer [cells, kvDim] (V untransposed), K as stored (after RoPE).
func decodeStream(lay Layout, st *Stream) (pos []int32, K, V [][]float32) {
	n, d := len(st.Cells), lay.kvDim()
	pos = make([]int32, n)
	for i, c := range st.Cells {
		pos[i] = c.Pos
	}
	K, V = make([][]float32, len(st.Layers)), make([][]float32, len(st.Layers))
	for l, L := range st.Layers {
		K[l] = decodeFloats(L.KType, L.K)
		V[l] = decodeFloats(L.VType, L.V)
		if st.VTrans {
			V[l] = transpose(V[l], d, n)
		}
	}
	return pos, K, V
}

// transpose returns the [cols, rows] transpose of x, a [rows, cols] matrix.
func transpose(x []float32, rows, cols int) []float32 {
	t := make([]float32, len(x))
	for r := range rows {
		for c := range cols {
			t[c*rows+r] = x[r*cols+c]
		}
	}
	return t
}

func encodeFloats(t GGMLType, x []float32) []byte {
	b := make([]byte, len(x)*t.Size())
	switch t {
	case TypeF32:
		for i, v := range x {
			binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(v))
		}
	case TypeF16:
		for i, v := range x {
			binary.LittleEndian.PutUint16(b[2*i:], f32ToF16(v))
		}
	case TypeBF16:
		for i, v := range x {
			binary.LittleEndian.PutUint16(b[2*i:], f32ToBF16(v))
		}
	default:
		panic(fmt.Sprintf("llamacpp: encodeFloats of %v (the layout check refuses it)", t))
	}
	return b
}

func decodeFloats(t GGMLType, b []byte) []float32 {
	sz := t.Size()
	if sz == 0 {
		panic(fmt.Sprintf("llamacpp: decodeFloats of %v (the layout check refuses it)", t))
	}
	x := make([]float32, len(b)/sz)
	for i := range x {
		switch t {
		case TypeF32:
			x[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
		case TypeF16:
			x[i] = f16ToF32(binary.LittleEndian.Uint16(b[2*i:]))
		case TypeBF16:
			x[i] = math.Float32frombits(uint32(binary.LittleEndian.Uint16(b[2*i:])) << 16)
		}
	}
	return x
}

// f32ToF16 rounds to nearest even, as ggml's ggml_fp32_to_fp16 does
// (overflow to inf, NaN kept quiet).
func f32ToF16(f float32) uint16 {
	b := math.Float32bits(f)
	sign := uint16(b>>16) & 0x8000
	exp := int32(b>>23) & 0xff
	mant := b & 0x7fffff
	switch {
	case exp == 0xff:
		if mant != 0 {
			return sign | 0x7e00
		}
		return sign | 0x7c00
	case exp-127 > 15:
		return sign | 0x7c00
	case exp-127 >= -14:
		// normal: 10 mantissa bits, round to nearest even on the 13 dropped
		h := uint32(exp-127+15)<<10 | mant>>13
		rem := mant & 0x1fff
		if rem > 0x1000 || rem == 0x1000 && h&1 == 1 {
			h++ // may carry into the exponent, up to inf: correct
		}
		return sign | uint16(h)
	case exp-127 >= -25:
		// subnormal: value = m * 2^-24
		m := mant | 0x800000
		shift := uint32(-14-(exp-127)) + 13
		h := m >> shift
		rem := m & (1<<shift - 1)
		half := uint32(1) << (shift - 1)
		if rem > half || rem == half && h&1 == 1 {
			h++
		}
		return sign | uint16(h)
	}
	return sign
}

func f16ToF32(h uint16) float32 {
	sign := uint32(h&0x8000) << 16
	exp := uint32(h>>10) & 0x1f
	mant := uint32(h & 0x3ff)
	switch exp {
	case 0:
		v := float32(mant) * (1.0 / (1 << 24)) // subnormal: mant * 2^-24, exact
		if sign != 0 {
			v = -v
		}
		return v
	case 0x1f:
		return math.Float32frombits(sign | 0x7f800000 | mant<<13)
	}
	return math.Float32frombits(sign | (exp+127-15)<<23 | mant<<13)
}

// f32ToBF16 rounds to nearest even (ggml_fp32_to_bf16), NaN kept quiet.
func f32ToBF16(f float32) uint16 {
	b := math.Float32bits(f)
	if b&0x7fffffff > 0x7f800000 {
		return uint16(b>>16) | 0x40
	}
	return uint16((b + 0x7fff + (b>>16)&1) >> 16)
}

// MismatchError says the server's KV for the handshake's probe differs from
// the sidecar model's: another model, other weights, another RoPE. It wraps
// adapters.ErrMismatch.
type MismatchError struct {
	What        string // "K" or "V", or what else differs
	Layer, Head int
	MaxDiff     float64 // largest |server - sidecar| in that head
	Tol         float64 // what was allowed there
}

func (e *MismatchError) Error() string {
	return fmt.Sprintf("llamacpp: the server's %s of layer %d head %d differs from the sidecar model's by up to %.3g (allowed %.3g): it runs another model (or other weights or RoPE)",
		e.What, e.Layer, e.Head, e.MaxDiff, e.Tol)
}

func (e *MismatchError) Unwrap() error { return errMismatch }

// Reason implements the proxy's fallback-reason interface.
func (e *MismatchError) Reason() string { return ReasonMismatch }

// kvTolerance is the allowed |server - sidecar| for one value whose
// sidecar value is want, in a cache of type t, when scale is the largest
// |value| of its layer and head. The server rounds every K and V to t and
// then attends over the rounded values, so each layer's inputs already
// carry the rounding of the layers before: the differences are a few units
// of t's rounding at the head's scale, growing with depth, not at |want|.
// Measured on stories260K against b10573 (f16, TestKVDiffRecord): up to
// 1.0e-3 of the head scale at layer 4 of 5. Allowed: half a unit at |want|
// plus 2^-8 (3.9e-3) of the scale for f16, 2^-5 for bf16 (3 fewer mantissa
// bits), 2^-16 for f32 caches (only f32 summation orders differ).
// Another model differs by O(scale); a perturbation of the weights that
// moves no KV value by 0.4% of its head's scale passes unnoticed.
func kvTolerance(t GGMLType, want, scale float64) float64 {
	switch t {
	case TypeF16:
		return 0x1p-11*math.Abs(want) + 0x1p-8*scale
	case TypeBF16:
		return 0x1p-8*math.Abs(want) + 0x1p-5*scale
	}
	return 0x1p-16 * scale
}

// compareKV checks got against want (per layer [n, KVHeads*HeadDim]) head
// by head; the first head out of tolerance is returned as a *MismatchError.
func compareKV(lay Layout, gotK, gotV, wantK, wantV [][]float32) error {
	for _, part := range []struct {
		what      string
		t         GGMLType
		got, want [][]float32
	}{{"K", lay.KType, gotK, wantK}, {"V", lay.VType, gotV, wantV}} {
		if len(part.got) != len(part.want) {
			return &MismatchError{What: part.what + " layer count", MaxDiff: math.Abs(float64(len(part.got) - len(part.want)))}
		}
		for l := range part.want {
			g, w := part.got[l], part.want[l]
			if len(g) != len(w) {
				return &MismatchError{What: part.what + " size", Layer: l, MaxDiff: math.Abs(float64(len(g) - len(w)))}
			}
			d := lay.kvDim()
			for h := range lay.KVHeads {
				var scale float64
				for i := h * lay.HeadDim; i < len(w); i += d {
					for _, v := range w[i : i+lay.HeadDim] {
						scale = max(scale, math.Abs(float64(v)))
					}
				}
				var worst, worstTol, worstExcess float64
				bad := false
				for i := h * lay.HeadDim; i < len(w); i += d {
					for j := i; j < i+lay.HeadDim; j++ {
						diff := math.Abs(float64(g[j]) - float64(w[j]))
						tol := kvTolerance(part.t, float64(w[j]), scale)
						if diff > tol || math.IsNaN(diff) {
							bad = true
						}
						if diff-tol > worstExcess || math.IsNaN(diff) || !bad && diff > worst {
							worst, worstTol, worstExcess = diff, tol, diff-tol
						}
					}
				}
				if bad {
					return &MismatchError{What: part.what, Layer: l, Head: h, MaxDiff: worst, Tol: worstTol}
				}
			}
		}
	}
	return nil
}
