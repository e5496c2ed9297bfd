package model

import (
	"encoding/binary"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"unsafe"

	"github.com/fusionrag/fusionrag/model/tokenizer"
)

// llama2.c checkpoint format (run.c "legacy" version 0): a header of 7 int32
// {dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len}, then
// fp32 arrays token_embedding[vocab,dim], rms_att[L,dim], wq[L,dim,dim],
// wk[L,kv_dim,dim], wv[L,kv_dim,dim], wo[L,dim,dim], rms_ffn[L,dim],
// w1[L,hidden,dim], w2[L,dim,hidden], w3[L,hidden,dim], rms_final[dim],
// freq_cis_real[seq_len,head_size/2], freq_cis_imag[seq_len,head_size/2],
// and wcls[vocab,dim] only when vocab_size is negative (unshared classifier).
const llama2cHeader = 7 * 4

// llama2cMagic starts the newer llama2.c export formats (version 1 fp32,
// version 2 int8), which are refused.
const llama2cMagic = 0x616b3432

// loadLlama2c reads a llama2.c checkpoint. RoPE is interleaved (adjacent
// pairs), theta 10000, RMSNorm eps 1e-5, BOS 1, EOS 2.
func loadLlama2c(path string) (*Model, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("model: %w", err)
	}
	m, err := parseLlama2c(raw)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return m, nil
}

// parseLlama2c builds a model over the checkpoint bytes (the weights alias
// raw, which must stay alive: the model keeps it).
func parseLlama2c(raw []byte) (*Model, error) {
	if len(raw) < llama2cHeader {
		return nil, fmt.Errorf("%w: %d bytes, shorter than the llama2.c header", ErrFormat, len(raw))
	}
	if magic := binary.LittleEndian.Uint32(raw); magic == llama2cMagic {
		return nil, fmt.Errorf("%w llama2.c export version %d (header magic \"ak42\"); supported: the legacy version 0 checkpoints run.c reads",
			ErrUnsupported, int32(binary.LittleEndian.Uint32(raw[4:])))
	}
	var h [7]int32
	for i := range h {
		h[i] = int32(binary.LittleEndian.Uint32(raw[4*i:]))
	}
	dim, hidden, layers, heads, kvHeads, vocab, seqLen := int64(h[0]), int64(h[1]), int64(h[2]), int64(h[3]), int64(h[4]), int64(h[5]), int64(h[6])
	shared := vocab > 0
	if vocab < 0 {
		vocab = -vocab
	}
	for _, v := range []int64{dim, hidden, layers, heads, kvHeads, vocab, seqLen} {
		if v <= 0 || v > 1<<24 {
			return nil, fmt.Errorf("%w: implausible llama2.c header %v", ErrFormat, h)
		}
	}
	if dim%heads != 0 || heads%kvHeads != 0 || (dim/heads)%2 != 0 {
		return nil, fmt.Errorf("%w: llama2.c header %v: dim %% heads, heads %% kv_heads and head size parity must work out", ErrFormat, h)
	}
	headDim := dim / heads
	kvDim := kvHeads * headDim
	sizes := []int64{vocab * dim, layers * dim, layers * dim * dim, layers * kvDim * dim, layers * kvDim * dim,
		layers * dim * dim, layers * dim, layers * hidden * dim, layers * dim * hidden, layers * hidden * dim, dim,
		seqLen * headDim / 2, seqLen * headDim / 2}
	if !shared {
		sizes = append(sizes, vocab*dim)
	}
	var total int64
	for _, s := range sizes {
		total += s
	}
	if want := llama2cHeader + 4*total; int64(len(raw)) != want {
		return nil, fmt.Errorf("%w: llama2.c file is %d bytes, header %v implies %d", ErrFormat, len(raw), h, want)
	}
	body := raw[llama2cHeader:]
	var all []float32
	if uintptr(unsafe.Pointer(&body[0]))%4 == 0 && littleEndian {
		all = unsafe.Slice((*float32)(unsafe.Pointer(&body[0])), len(body)/4)
	} else {
		all = make([]float32, len(body)/4)
		for i := range all {
			all[i] = float32frombits(binary.LittleEndian.Uint32(body[4*i:]))
		}
	}
	off := int64(0)
	take := func(n int64) []float32 {
		s := all[off : off+n : off+n]
		off += n
		return s
	}
	cfg := Config{
		Arch: ArchLlama, Dim: int(dim), HiddenDim: int(hidden), Layers: int(layers), Heads: int(heads),
		KVHeads: int(kvHeads), HeadDim: int(headDim), Vocab: int(vocab), MaxPositions: int(seqLen),
		RopeTheta: 10000, RopeInterleaved: true, NormEps: 1e-5, TiedEmbeddings: shared,
		BOS: 1, EOS: []int32{2},
	}
	m := &Model{Config: cfg}
	m.tokEmb = take(vocab * dim)
	L := int(layers)
	m.layers = make([]layerWeights, L)
	per := func(n int64) [][]float32 {
		s := take(layers * n)
		out := make([][]float32, L)
		for l := range L {
			out[l] = s[int64(l)*n : int64(l+1)*n : int64(l+1)*n]
		}
		return out
	}
	attnNorm, wq, wk, wv, wo := per(dim), per(dim*dim), per(kvDim*dim), per(kvDim*dim), per(dim*dim)
	ffnNorm, w1, w2, w3 := per(dim), per(hidden*dim), per(dim*hidden), per(hidden*dim)
	for l := range L {
		m.layers[l] = layerWeights{attnNorm: attnNorm[l], wq: wq[l], wk: wk[l], wv: wv[l], wo: wo[l],
			ffnNorm: ffnNorm[l], w1: w1[l], w2: w2[l], w3: w3[l]}
	}
	m.norm = take(dim)
	take(seqLen * headDim) // freq_cis tables, unused: RoPE is computed
	if shared {
		m.cls = m.tokEmb
	} else {
		m.cls = take(vocab * dim)
	}
	for _, w := range m.namedWeights() {
		m.manifest = append(m.manifest, tensorInfo{Name: w.Name, DType: "F32", Shape: w.Shape, raw: f32Bytes(w.Data)})
	}
	return m, nil
}

// findTokenizer looks for a tokenizer beside a model: tokenizer.json inside
// an HF directory (or a tok*.bin there), tok*.bin in the checkpoint's
// directory for llama2.c. Several tok*.bin: the one named tokenizer.bin, else
// the first in name order.
func findTokenizer(modelPath string, hf bool) string {
	dir := filepath.Dir(modelPath)
	if hf {
		dir = modelPath
		if p := filepath.Join(dir, "tokenizer.json"); fileExists(p) {
			return p
		}
	}
	if p := filepath.Join(dir, "tokenizer.bin"); fileExists(p) {
		return p
	}
	matches, _ := filepath.Glob(filepath.Join(dir, "tok*.bin"))
	sort.Strings(matches)
	for _, p := range matches {
		if p != modelPath {
			return p
		}
	}
	return ""
}

func fileExists(p string) bool {
	st, err := os.Stat(p)
	return err == nil && !st.IsDir()
}

// openTokenizer loads a tokenizer by its kind: a directory or *.json is a
// Hugging Face tokenizer, anything else a llama2.c tok*.bin.
func openTokenizer(path string) (tokenizer.Tokenizer, error) {
	if st, err := os.Stat(path); err == nil && st.IsDir() || strings.HasSuffix(path, ".json") {
		t, err := tokenizer.LoadHF(path) // tokenizer.json (+ tokenizer_config.json beside it)
		if err != nil {
			return nil, err
		}
		return t, nil
	}
	t, err := tokenizer.LoadLlama2c(path)
	if err != nil {
		return nil, err
	}
	return t, nil
}

// littleEndian reports the host byte order (weights alias file bytes only on
// little-endian hosts).
var littleEndian = func() bool {
	x := uint16(1)
	return *(*byte)(unsafe.Pointer(&x)) == 1
}()

func float32frombits(b uint32) float32 { return math.Float32frombits(b) }
