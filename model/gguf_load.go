package model

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
	"unsafe"

	"github.com/fusionrag/fusionrag/model/safetensors"
	"github.com/fusionrag/fusionrag/model/tokenizer"
)

// GGUF architectures the runtime loads (general.architecture) and their RoPE
// layout. llama.cpp's "llama" arch uses LLAMA_ROPE_TYPE_NORM, which rotates
// adjacent pairs (its HF converter permutes wq/wk rows into that layout);
// "qwen2" uses LLAMA_ROPE_TYPE_NEOX, rotate_half on unpermuted weights
// (src/llama-model.cpp, llama_model_rope_type). Mistral GGUFs are "llama".
var ggufArchs = map[string]struct {
	arch        string
	interleaved bool
}{
	"llama": {ArchLlama, true},
	"qwen2": {ArchQwen2, false},
}

// loadGGUF reads a GGUF model file. The file is read into memory; F32
// tensors are used in place when aligned, F16/BF16/Q8_0 are converted to
// fp32 once.
func loadGGUF(path string, opts LoadOptions) (*Model, tokenizer.Tokenizer, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("model: %w", err)
	}
	m, tok, err := parseGGUFModel(raw, opts)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	return m, tok, nil
}

// parseGGUFModel builds a model (and its tokenizer from the metadata, nil
// when the file has none) over the bytes of a GGUF file; F32 weights alias
// raw.
func parseGGUFModel(raw []byte, opts LoadOptions) (*Model, tokenizer.Tokenizer, error) {
	f, err := parseGGUF(raw)
	if err != nil {
		return nil, nil, err
	}
	cfg, err := ggufConfig(f, opts)
	if err != nil {
		return nil, nil, err
	}
	m := &Model{Config: cfg}
	if err := m.bindGGUF(f); err != nil {
		return nil, nil, err
	}
	var tok tokenizer.Tokenizer
	if f.get("tokenizer.ggml.model") != nil {
		t, err := tokenizer.FromGGUF(ggufMeta{f})
		if err != nil {
			return nil, nil, fmt.Errorf("model: gguf tokenizer: %w", err)
		}
		tok = t
	}
	return m, tok, nil
}

// ggufMeta exposes the metadata to the tokenizer package.
type ggufMeta struct{ f *ggufFile }

// Get returns the value of key (string, integer and float scalars as Go
// values, arrays as []string, []float32, []int32, []uint32 or []any), nil
// when absent.
func (g ggufMeta) Get(key string) any {
	v := g.f.get(key)
	if a, ok := v.(ggufArr); ok {
		return a.Values
	}
	return v
}

// ggufInt reads an integer-valued key of any integer type; ok false when
// absent, err when of another type or negative.
func ggufInt(f *ggufFile, key string) (int64, bool, error) {
	v := f.get(key)
	var n int64
	switch x := v.(type) {
	case nil:
		return 0, false, nil
	case uint8:
		n = int64(x)
	case int8:
		n = int64(x)
	case uint16:
		n = int64(x)
	case int16:
		n = int64(x)
	case uint32:
		n = int64(x)
	case int32:
		n = int64(x)
	case uint64:
		if x > math.MaxInt32 {
			return 0, true, fmt.Errorf("%w: gguf: %s = %d out of range", ErrFormat, key, x)
		}
		n = int64(x)
	case int64:
		n = x
	default:
		return 0, true, fmt.Errorf("%w: gguf: %s is a %T, want an integer", ErrFormat, key, v)
	}
	if n < 0 || n > math.MaxInt32 {
		return 0, true, fmt.Errorf("%w: gguf: %s = %d out of range", ErrFormat, key, n)
	}
	return n, true, nil
}

// ggufFloat reads a float-valued key (float32 or float64).
func ggufFloat(f *ggufFile, key string) (float64, bool, error) {
	switch x := f.get(key).(type) {
	case nil:
		return 0, false, nil
	case float32:
		// The shortest decimal that rounds to x: a writer's 1e-5 stored as
		// float32 reads back as 1e-5, not 9.99999974e-06, so a round trip
		// through GGUF keeps Config (and the fp64 RMSNorm) bit-identical.
		v, err := strconv.ParseFloat(strconv.FormatFloat(float64(x), 'g', -1, 32), 64)
		if err != nil {
			return float64(x), true, nil
		}
		return v, true, nil
	case float64:
		return x, true, nil
	default:
		return 0, true, fmt.Errorf("%w: gguf: %s is a %T, want a float", ErrFormat, key, x)
	}
}

// ggufConfig derives the Config from the metadata (and the embedding's
// shape for the vocabulary size).
func ggufConfig(f *ggufFile, opts LoadOptions) (Config, error) {
	archName, _ := f.get("general.architecture").(string)
	a, ok := ggufArchs[archName]
	if !ok {
		return Config{}, fmt.Errorf("%w GGUF architecture %q (supported: llama, qwen2)", ErrUnsupported, archName)
	}
	c := Config{Arch: a.arch, RopeInterleaved: a.interleaved, QKVBias: a.arch == ArchQwen2, BOS: -1}
	var errs []error
	need := func(key string) int {
		n, ok, err := ggufInt(f, archName+"."+key)
		if err != nil {
			errs = append(errs, err)
		} else if !ok {
			errs = append(errs, fmt.Errorf("%w: gguf: %s.%s missing", ErrFormat, archName, key))
		}
		return int(n)
	}
	opt := func(key string, def int) int {
		n, ok, err := ggufInt(f, archName+"."+key)
		if err != nil {
			errs = append(errs, err)
		}
		if !ok {
			return def
		}
		return int(n)
	}
	c.Dim = need("embedding_length")
	c.HiddenDim = need("feed_forward_length")
	c.Layers = need("block_count")
	c.Heads = need("attention.head_count")
	c.MaxPositions = need("context_length")
	if len(errs) > 0 {
		return Config{}, errs[0]
	}
	c.KVHeads = opt("attention.head_count_kv", c.Heads)
	if c.Heads > 0 {
		c.HeadDim = opt("attention.key_length", c.Dim/c.Heads)
	}
	if v := opt("attention.value_length", c.HeadDim); v != c.HeadDim {
		return Config{}, fmt.Errorf("%w: gguf attention.value_length %d != key_length %d", ErrUnsupported, v, c.HeadDim)
	}
	if r := opt("rope.dimension_count", c.HeadDim); r != c.HeadDim {
		return Config{}, fmt.Errorf("%w: gguf partial RoPE (rope.dimension_count %d of head size %d)", ErrUnsupported, r, c.HeadDim)
	}
	if len(errs) > 0 {
		return Config{}, errs[0]
	}
	c.RopeTheta = 10000
	if v, ok, err := ggufFloat(f, archName+".rope.freq_base"); err != nil {
		return Config{}, err
	} else if ok {
		c.RopeTheta = v
	}
	eps, ok, err := ggufFloat(f, archName+".attention.layer_norm_rms_epsilon")
	if err != nil {
		return Config{}, err
	}
	if !ok {
		return Config{}, fmt.Errorf("%w: gguf: %s.attention.layer_norm_rms_epsilon missing", ErrFormat, archName)
	}
	c.NormEps = eps
	if s, _ := f.get(archName + ".rope.scaling.type").(string); s != "" && s != "none" {
		return Config{}, fmt.Errorf("%w: gguf rope scaling %q (supported: none)", ErrUnsupported, s)
	}
	if _, ok := f.tensor("rope_freqs.weight"); ok {
		return Config{}, fmt.Errorf("%w: gguf rope_freqs.weight (Llama 3.1 rope frequency factors)", ErrUnsupported)
	}
	emb, ok := f.tensor("token_embd.weight")
	if !ok || len(emb.Dims) != 2 {
		return Config{}, fmt.Errorf("%w: gguf: token_embd.weight missing or not a matrix", ErrFormat)
	}
	if emb.Dims[1] > math.MaxInt32 {
		return Config{}, fmt.Errorf("%w: gguf: token_embd.weight shape %v", ErrFormat, emb.Dims)
	}
	c.Vocab = int(emb.Dims[1])
	if v := opt("vocab_size", c.Vocab); v != c.Vocab {
		return Config{}, fmt.Errorf("%w: gguf: %s.vocab_size %d, token_embd.weight has %d rows", ErrFormat, archName, v, c.Vocab)
	}
	_, hasOut := f.tensor("output.weight")
	c.TiedEmbeddings = !hasOut
	if bos, ok, err := ggufInt(f, "tokenizer.ggml.bos_token_id"); err == nil && ok && bos < int64(c.Vocab) {
		c.BOS = int32(bos)
	}
	for _, k := range []string{"tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"} {
		if id, ok, err := ggufInt(f, k); err == nil && ok && id < int64(c.Vocab) && !slices.Contains(c.EOS, int32(id)) {
			c.EOS = append(c.EOS, int32(id))
		}
	}
	if opts.MaxPositions > 0 {
		c.MaxPositions = opts.MaxPositions
	}
	if err := c.Validate(); err != nil {
		return Config{}, err
	}
	return c, nil
}

// bindGGUF takes every weight the config implies from the file, checking
// shapes (GGUF ne order: [in, out]) and converting to fp32.
func (m *Model) bindGGUF(f *ggufFile) error {
	c := m.Config
	used := map[string]bool{}
	var errs []error
	// get returns the tensor as fp32 in row-major [shape[0], shape[1]]
	// (HF order), i.e. GGUF ne = reversed shape.
	get := func(name string, shape ...int) []float32 {
		t, ok := f.tensor(name)
		if !ok {
			errs = append(errs, fmt.Errorf("%w: gguf tensor %s missing", ErrFormat, name))
			return nil
		}
		want := make([]int64, len(shape))
		for i, s := range shape {
			want[len(shape)-1-i] = int64(s)
		}
		if !slices.Equal(t.Dims, want) {
			errs = append(errs, fmt.Errorf("%w: gguf tensor %s has ne %v, config implies %v", ErrFormat, name, t.Dims, want))
			return nil
		}
		d, err := ggufFloat32s(t)
		if err != nil {
			errs = append(errs, err)
			return nil
		}
		used[name] = true
		m.manifest = append(m.manifest, tensorInfo{Name: name, DType: t.Type.String(), Shape: shape, raw: t.Data})
		return d
	}
	// The weights are named as in Hugging Face checkpoints; llama.cpp's
	// names are the writer's translation of them (ggufTensorName).
	if err := m.bindWeights(func(hf string, shape ...int) []float32 {
		name, ok := ggufTensorName(hf)
		if !ok {
			panic("model: no GGUF name for weight " + hf) // broken invariant: bindWeights and ggufTensorName disagree
		}
		return get(name, shape...)
	}, func() error { return errors.Join(errs...) }); err != nil {
		return errs[0]
	}
	for _, t := range f.Tensors {
		if !used[t.Name] {
			return fmt.Errorf("%w: gguf: unexpected tensor %s (not part of a %s model of this config)", ErrUnsupported, t.Name, c.Arch)
		}
	}
	return nil
}

// ggufFloat32s returns the tensor's values as fp32: F32 aliases the file
// bytes when aligned on a little-endian host, F16/BF16 convert exactly,
// Q8_0 dequantises each block of 32 as scale * int8 (ggml's
// dequantize_row_q8_0, scale an f16).
func ggufFloat32s(t *ggufTensor) ([]float32, error) {
	n := t.elements()
	size, ok := t.Type.byteSize(n)
	if !ok {
		return nil, fmt.Errorf("%w tensor type %s of %s (supported: F32, F16, BF16, Q8_0; Q8_0 needs a multiple of 32 values)",
			ErrUnsupported, t.Type, t.Name)
	}
	if int64(len(t.Data)) != size {
		return nil, fmt.Errorf("%w: gguf tensor %s holds %d bytes, %d %s values need %d", ErrFormat, t.Name, len(t.Data), n, t.Type, size)
	}
	if t.Type == ggmlQ8_0 && t.Dims[0]%q8BlockValues != 0 {
		return nil, fmt.Errorf("%w: gguf Q8_0 tensor %s has rows of %d values, not a multiple of %d", ErrFormat, t.Name, t.Dims[0], q8BlockValues)
	}
	b := t.Data
	switch t.Type {
	case ggmlF32:
		if len(b) > 0 && littleEndian && uintptr(unsafe.Pointer(&b[0]))%4 == 0 {
			return unsafe.Slice((*float32)(unsafe.Pointer(&b[0])), n), nil
		}
		out := make([]float32, n)
		for i := range out {
			out[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
		}
		return out, nil
	case ggmlF16:
		out := make([]float32, n)
		for i := range out {
			out[i] = safetensors.Float16ToFloat32(binary.LittleEndian.Uint16(b[2*i:]))
		}
		return out, nil
	case ggmlBF16:
		out := make([]float32, n)
		for i := range out {
			out[i] = math.Float32frombits(uint32(binary.LittleEndian.Uint16(b[2*i:])) << 16)
		}
		return out, nil
	case ggmlQ8_0:
		out := make([]float32, n)
		for blk := range n / q8BlockValues {
			q := b[blk*q8BlockBytes : (blk+1)*q8BlockBytes]
			d := safetensors.Float16ToFloat32(binary.LittleEndian.Uint16(q))
			o := out[blk*q8BlockValues : (blk+1)*q8BlockValues]
			for i := range o {
				o[i] = d * float32(int8(q[2+i]))
			}
		}
		return out, nil
	}
	return nil, fmt.Errorf("%w tensor type %s of %s", ErrUnsupported, t.Type, t.Name)
}

// isGGUFPath reports whether a model path names a GGUF file.
func isGGUFPath(p string) bool { return strings.HasSuffix(strings.ToLower(p), ".gguf") }
