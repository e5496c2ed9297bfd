package llamacpp

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
)

// The sequence state file that llama-server writes for
// POST /slots/{id}?action=save and reads for action=restore
// (llama_state_seq_save_file / llama_state_seq_load_file, llama.cpp b10573).
// Little-endian throughout:
//
//	u32 magic 'ggsq' (0x67677371), u32 version 2
//	u32 n_tokens, i32 tokens[n_tokens]   the server's token list (see below)
//	u32 n_stream
//	per stream s in [0, n_stream):
//	  u32 cell_count; nothing more when 0
//	  cells[cell_count]: i32 pos, u32 n_seq_id, i32 seq_id[n_seq_id]
//	  u32 v_trans, u32 n_layer
//	  per layer: i32 k_type, u64 k_row_size, K rows [cell_count][k_row_size]
//	  v_trans == 0, per layer: i32 v_type, u64 v_row_size, V rows [cell_count][v_row_size]
//	  v_trans == 1, per layer: i32 v_type, u32 v_el_size, u32 n_embd_v,
//	                V [n_embd_v][cell_count][v_el_size] (one row per channel)
//
// A K row is one cell's [KVHeads, HeadDim] keys *after RoPE*, in the cache
// type (f16 unless -ctk says otherwise); a V row its values. There is no model
// hash and no n_ctx: restore checks only n_stream, n_layer, v_trans, the
// types and the row sizes, and answers one generic 400 on any mismatch.
//
// The token list is the server's packed form when its first value is -1
// (LLAMA_TOKEN_NULL): -1, u32 version 1, u32 n, i32 ids[n], u32 n_media (0
// without a multimodal projector), media chunks. Any other list is read as
// plain ids (the format of older servers).
//
// Restoring into slot N puts the cells into the stream of N whatever stream
// index they sit at in the file, discards the stored seq ids (each cell
// must name exactly one) and keeps the positions.

// File format constants.
const (
	Magic   uint32 = 0x67677371 // 'ggsq'
	Version uint32 = 2

	tokenNull          = -1
	tokensStateVersion = 1
)

// GGMLType is a ggml tensor type id as stored in slot files.
type GGMLType int32

// The cache types the adapter reads and writes. Quantised caches (q8_0,
// q4_0, ...) are refused: their blocks would need ggml's exact quantiser.
const (
	TypeF32  GGMLType = 0
	TypeF16  GGMLType = 1
	TypeBF16 GGMLType = 30
)

// Size is the bytes of one element; 0 for types the adapter does not handle.
func (t GGMLType) Size() int {
	switch t {
	case TypeF32:
		return 4
	case TypeF16, TypeBF16:
		return 2
	}
	return 0
}

func (t GGMLType) String() string {
	switch t {
	case TypeF32:
		return "f32"
	case TypeF16:
		return "f16"
	case TypeBF16:
		return "bf16"
	case 8:
		return "q8_0"
	case 2:
		return "q4_0"
	case 3:
		return "q4_1"
	case 6:
		return "q5_0"
	case 7:
		return "q5_1"
	}
	return fmt.Sprintf("ggml type %d", int32(t))
}

// SlotFile is a decoded sequence state file.
type SlotFile struct {
	// Tokens is the server's token list for the slot (the prompt it
	// evaluated, unpacked).
	Tokens []int32
	// Packed: Tokens are stored in the server's packed form (what b10573
	// writes); false: as a plain id list.
	Packed bool
	// Streams has n_stream entries; a stream without cells has none of the
	// other fields set.
	Streams []Stream
}

// Stream is one KV stream of a slot file.
type Stream struct {
	Cells  []Cell
	VTrans bool
	Layers []Layer
}

// Cell is one KV cell: its position and the sequences it belongs to.
type Cell struct {
	Pos    int32
	SeqIDs []int32
}

// Layer is one layer's K and V of a stream's cells, raw bytes in the file's
// layout.
type Layer struct {
	KType    GGMLType
	KRowSize uint64
	K        []byte // [cells][KRowSize]

	VType GGMLType
	// VRowSize: rows layout (VTrans false), V is [cells][VRowSize].
	VRowSize uint64
	// VElSize and VEmbd: transposed layout (VTrans true), V is
	// [VEmbd][cells][VElSize].
	VElSize uint32
	VEmbd   uint32
	V       []byte
}

// ErrSlotFile wraps every decoding error.
var ErrSlotFile = errors.New("llamacpp: bad slot file")

// maxCount bounds counts read from a file before their bytes are checked
// (cells, layers, streams, seq ids): far above any real server.
const maxCount = 1 << 24

type reader struct {
	b   []byte
	off int
	err error
}

func (r *reader) fail(format string, args ...any) {
	if r.err == nil {
		r.err = fmt.Errorf("%w at byte %d: %s", ErrSlotFile, r.off, fmt.Sprintf(format, args...))
	}
}

func (r *reader) take(n uint64, what string) []byte {
	if r.err != nil {
		return nil
	}
	if n > uint64(len(r.b)-r.off) {
		r.fail("%s needs %d bytes, %d left (truncated?)", what, n, len(r.b)-r.off)
		return nil
	}
	p := r.b[r.off : r.off+int(n)]
	r.off += int(n)
	return p
}

func (r *reader) u32(what string) uint32 {
	p := r.take(4, what)
	if p == nil {
		return 0
	}
	return binary.LittleEndian.Uint32(p)
}

func (r *reader) u64(what string) uint64 {
	p := r.take(8, what)
	if p == nil {
		return 0
	}
	return binary.LittleEndian.Uint64(p)
}

func (r *reader) count(what string) int {
	n := r.u32(what)
	if n > maxCount {
		r.fail("%s %d is implausible", what, n)
		return 0
	}
	return int(n)
}

// DecodeSlotFile parses a slot file. Every count and size is checked
// against the bytes present, so a corrupt or truncated file is an error
// wrapping ErrSlotFile, never a panic or a huge allocation. The result
// aliases b.
func DecodeSlotFile(b []byte) (*SlotFile, error) {
	r := &reader{b: b}
	if m := r.u32("magic"); r.err == nil && m != Magic {
		return nil, fmt.Errorf("%w: magic %#08x, want %#08x ('ggsq')", ErrSlotFile, m, Magic)
	}
	if v := r.u32("version"); r.err == nil && v != Version {
		return nil, fmt.Errorf("%w: version %d, want %d", ErrSlotFile, v, Version)
	}
	nTok := r.count("token count")
	raw := r.take(uint64(nTok)*4, "tokens")
	if r.err != nil {
		return nil, r.err
	}
	f := &SlotFile{}
	var err error
	if f.Tokens, f.Packed, err = unpackTokens(raw); err != nil {
		return nil, err
	}
	nStream := r.count("n_stream")
	if r.err == nil && nStream == 0 {
		r.fail("n_stream 0")
	}
	for s := 0; s < nStream && r.err == nil; s++ {
		f.Streams = append(f.Streams, r.stream(s))
	}
	if r.err != nil {
		return nil, r.err
	}
	if r.off != len(b) {
		return nil, fmt.Errorf("%w: %d trailing bytes after the last stream", ErrSlotFile, len(b)-r.off)
	}
	return f, nil
}

func unpackTokens(raw []byte) ([]int32, bool, error) {
	ids := make([]int32, len(raw)/4)
	for i := range ids {
		ids[i] = int32(binary.LittleEndian.Uint32(raw[4*i:]))
	}
	if len(ids) == 0 || ids[0] != tokenNull {
		return ids, false, nil
	}
	bad := func(why string) ([]int32, bool, error) {
		return nil, true, fmt.Errorf("%w: packed token list: %s", ErrSlotFile, why)
	}
	if len(ids) < 4 {
		return bad("shorter than its header")
	}
	if uint32(ids[1]) != tokensStateVersion {
		return bad(fmt.Sprintf("version %d, want %d", uint32(ids[1]), tokensStateVersion))
	}
	n := uint32(ids[2])
	if uint64(n)+4 > uint64(len(ids)) {
		return bad(fmt.Sprintf("%d ids in a list of %d", n, len(ids)))
	}
	toks := ids[3 : 3+n : 3+n]
	if media := uint32(ids[3+n]); media != 0 {
		return bad(fmt.Sprintf("%d media chunks (multimodal slots are not supported)", media))
	}
	if int(n)+4 != len(ids) {
		return bad("trailing data")
	}
	for i, t := range toks {
		if t < 0 {
			return bad(fmt.Sprintf("token %d is %d", i, t))
		}
	}
	return toks, true, nil
}

func (r *reader) stream(s int) Stream {
	var st Stream
	n := r.count(fmt.Sprintf("stream %d cell count", s))
	if n == 0 || r.err != nil {
		return st
	}
	// A cell is at least 12 bytes: bound the allocation by the bytes left.
	if uint64(n)*12 > uint64(len(r.b)-r.off) {
		r.fail("stream %d: %d cells do not fit in %d bytes", s, n, len(r.b)-r.off)
		return st
	}
	st.Cells = make([]Cell, n)
	for i := range st.Cells {
		c := &st.Cells[i]
		c.Pos = int32(r.u32("cell pos"))
		k := r.count("cell n_seq_id")
		if r.err != nil {
			return st
		}
		if uint64(k)*4 > uint64(len(r.b)-r.off) {
			r.fail("cell %d: %d seq ids", i, k)
			return st
		}
		c.SeqIDs = make([]int32, k)
		for j := range c.SeqIDs {
			c.SeqIDs[j] = int32(r.u32("cell seq id"))
		}
	}
	switch vt := r.u32("v_trans"); vt {
	case 0, 1:
		st.VTrans = vt == 1
	default:
		r.fail("v_trans %d", vt)
	}
	nl := r.count("n_layer")
	if r.err != nil {
		return st
	}
	if uint64(nl)*12 > uint64(len(r.b)-r.off) {
		r.fail("%d layers do not fit", nl)
		return st
	}
	st.Layers = make([]Layer, nl)
	for l := range st.Layers {
		L := &st.Layers[l]
		L.KType = GGMLType(r.u32("k_type"))
		L.KRowSize = r.u64("k_row_size")
		L.K = r.take(mulCheck(r, L.KRowSize, uint64(n)), fmt.Sprintf("layer %d K", l))
	}
	for l := range st.Layers {
		L := &st.Layers[l]
		L.VType = GGMLType(r.u32("v_type"))
		if !st.VTrans {
			L.VRowSize = r.u64("v_row_size")
			L.V = r.take(mulCheck(r, L.VRowSize, uint64(n)), fmt.Sprintf("layer %d V", l))
			continue
		}
		L.VElSize = r.u32("v_el_size")
		L.VEmbd = r.u32("n_embd_v_gqa")
		L.V = r.take(mulCheck(r, mulCheck(r, uint64(L.VElSize), uint64(L.VEmbd)), uint64(n)), fmt.Sprintf("layer %d V (transposed)", l))
	}
	return st
}

// mulCheck multiplies sizes read from a file, failing on overflow.
func mulCheck(r *reader, a, b uint64) uint64 {
	if a != 0 && b > math.MaxUint64/a {
		r.fail("size %d x %d overflows", a, b)
		return math.MaxUint64
	}
	return a * b
}

// Encode writes f in the file format. It validates what the server would
// otherwise refuse or misread: per-stream layer and cell counts consistent
// with the byte slices.
func (f *SlotFile) Encode(w io.Writer) error {
	if len(f.Streams) == 0 {
		return errors.New("llamacpp: slot file without streams")
	}
	var b []byte
	u32 := func(v uint32) { b = binary.LittleEndian.AppendUint32(b, v) }
	u64 := func(v uint64) { b = binary.LittleEndian.AppendUint64(b, v) }
	u32(Magic)
	u32(Version)
	if f.Packed {
		u32(uint32(4 + len(f.Tokens)))
		u32(uint32(0xffffffff))
		u32(tokensStateVersion)
		u32(uint32(len(f.Tokens)))
		for _, t := range f.Tokens {
			u32(uint32(t))
		}
		u32(0)
	} else {
		u32(uint32(len(f.Tokens)))
		for _, t := range f.Tokens {
			u32(uint32(t))
		}
	}
	u32(uint32(len(f.Streams)))
	for s, st := range f.Streams {
		n := len(st.Cells)
		u32(uint32(n))
		if n == 0 {
			continue
		}
		for _, c := range st.Cells {
			u32(uint32(c.Pos))
			u32(uint32(len(c.SeqIDs)))
			for _, id := range c.SeqIDs {
				u32(uint32(id))
			}
		}
		vt := uint32(0)
		if st.VTrans {
			vt = 1
		}
		u32(vt)
		u32(uint32(len(st.Layers)))
		for l, L := range st.Layers {
			if uint64(len(L.K)) != L.KRowSize*uint64(n) {
				return fmt.Errorf("llamacpp: stream %d layer %d: K has %d bytes, want %d cells x %d", s, l, len(L.K), n, L.KRowSize)
			}
			u32(uint32(L.KType))
			u64(L.KRowSize)
			b = append(b, L.K...)
		}
		for l, L := range st.Layers {
			u32(uint32(L.VType))
			if !st.VTrans {
				if uint64(len(L.V)) != L.VRowSize*uint64(n) {
					return fmt.Errorf("llamacpp: stream %d layer %d: V has %d bytes, want %d cells x %d", s, l, len(L.V), n, L.VRowSize)
				}
				u64(L.VRowSize)
			} else {
				if uint64(len(L.V)) != uint64(L.VElSize)*uint64(L.VEmbd)*uint64(n) {
					return fmt.Errorf("llamacpp: stream %d layer %d: transposed V has %d bytes, want %d x %d x %d", s, l, len(L.V), L.VEmbd, n, L.VElSize)
				}
				u32(L.VElSize)
				u32(L.VEmbd)
			}
			b = append(b, L.V...)
		}
	}
	_, err := w.Write(b)
	return err
}
