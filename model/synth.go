package model

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"

	"github.com/fusionrag/fusionrag/model/safetensors"
)

// SaveOptions tunes SaveHF.
type SaveOptions struct {
	// DType of the written weights: "F32" (default), "F16" or "BF16"
	// (rounded to nearest even).
	DType string
	// Shards > 1 splits the weights over that many files listed by
	// model.safetensors.index.json; otherwise one model.safetensors.
	Shards int
}

// SaveHF writes the model as a Hugging Face directory (config.json and
// safetensors) that Load reads back. A model with interleaved RoPE (llama2.c)
// is converted to the HF rotate_half layout: the rows of wq and wk (and their
// biases) are permuted within each head, [2i, 2i+1] -> [i, i+HeadDim/2], the
// same permutation Hugging Face's convert_llama_weights_to_hf applies, so the
// written model computes the same function.
func (m *Model) SaveHF(dir string, opts SaveOptions) error {
	dtype := opts.DType
	if dtype == "" {
		dtype = "F32"
	}
	if dtype != "F32" && dtype != "F16" && dtype != "BF16" {
		return fmt.Errorf("%w save dtype %q (supported: F32, F16, BF16)", ErrUnsupported, dtype)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("model: %w", err)
	}
	c := m.Config
	var tensors []safetensors.Tensor
	for _, w := range m.namedWeights() {
		data := w.Data
		if c.RopeInterleaved && (strings.Contains(w.Name, "q_proj") || strings.Contains(w.Name, "k_proj")) {
			heads := c.Heads
			if strings.Contains(w.Name, "k_proj") {
				heads = c.KVHeads
			}
			data = permuteRotateHalf(data, heads, c.HeadDim, len(data)/(heads*c.HeadDim))
		}
		tensors = append(tensors, safetensors.Tensor{Name: w.Name, DType: safetensors.DType(dtype), Shape: w.Shape, Data: encodeFloats(data, dtype)})
	}
	cfg, err := json.MarshalIndent(hfConfigOf(c, dtype), "", "  ")
	if err != nil {
		return fmt.Errorf("model: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "config.json"), append(cfg, '\n'), 0o644); err != nil {
		return fmt.Errorf("model: %w", err)
	}
	meta := map[string]string{"format": "pt"}
	if opts.Shards <= 1 {
		if err := safetensors.Write(filepath.Join(dir, "model.safetensors"), tensors, meta); err != nil {
			return fmt.Errorf("model: %w", err)
		}
		return nil
	}
	shards := min(opts.Shards, len(tensors))
	index := struct {
		Metadata  map[string]any    `json:"metadata"`
		WeightMap map[string]string `json:"weight_map"`
	}{Metadata: map[string]any{}, WeightMap: map[string]string{}}
	total := 0
	per := (len(tensors) + shards - 1) / shards
	for s := range shards {
		name := fmt.Sprintf("model-%05d-of-%05d.safetensors", s+1, shards)
		part := tensors[min(s*per, len(tensors)):min((s+1)*per, len(tensors))]
		for _, t := range part {
			index.WeightMap[t.Name] = name
			total += len(t.Data)
		}
		if err := safetensors.Write(filepath.Join(dir, name), part, meta); err != nil {
			return fmt.Errorf("model: %w", err)
		}
	}
	index.Metadata["total_size"] = total
	b, err := json.MarshalIndent(index, "", "  ")
	if err != nil {
		return fmt.Errorf("model: %w", err)
	}
	return os.WriteFile(filepath.Join(dir, "model.safetensors.index.json"), append(b, '\n'), 0o644)
}

// permuteRotateHalf reorders the rows of w ([heads*headDim, cols]) within
// each head from interleaved pairs to rotate_half halves: new row i (i <
// headDim/2) is old row 2i, new row headDim/2+i is old row 2i+1.
func permuteRotateHalf(w []float32, heads, headDim, cols int) []float32 {
	out := make([]float32, len(w))
	half := headDim / 2
	for h := range heads {
		for i := range half {
			for k, src := range [2]int{2 * i, 2*i + 1} {
				dst := h*headDim + k*half + i
				copy(out[dst*cols:(dst+1)*cols], w[(h*headDim+src)*cols:(h*headDim+src+1)*cols])
			}
		}
	}
	return out
}

// hfConfigOf renders a Config as config.json.
func hfConfigOf(c Config, dtype string) hfConfig {
	names := map[string][2]string{
		ArchLlama: {"LlamaForCausalLM", "llama"}, ArchMistral: {"MistralForCausalLM", "mistral"}, ArchQwen2: {"Qwen2ForCausalLM", "qwen2"},
	}
	tied := c.TiedEmbeddings
	h := hfConfig{
		Architectures: []string{names[c.Arch][0]}, ModelType: names[c.Arch][1],
		HiddenSize: c.Dim, IntermediateSize: c.HiddenDim, NumHiddenLayers: c.Layers,
		NumAttentionHeads: c.Heads, NumKeyValueHeads: c.KVHeads, HeadDim: c.HeadDim, VocabSize: c.Vocab,
		MaxPositionEmbeddings: c.MaxPositions, RopeTheta: c.RopeTheta, RMSNormEps: c.NormEps,
		TieWordEmbeddings: &tied, HiddenAct: "silu", TorchDtype: map[string]string{"F32": "float32", "F16": "float16", "BF16": "bfloat16"}[dtype],
	}
	if s := c.RopeScaling; s != nil {
		h.RopeScaling = &hfRopeScaling{RopeType: s.Type, Factor: s.Factor, LowFreqFactor: s.LowFreqFactor,
			HighFreqFactor: s.HighFreqFactor, OriginalMaxPositionEmbeddings: s.OriginalMaxPositions}
	}
	if c.BOS >= 0 {
		h.BOSTokenID, _ = json.Marshal(c.BOS)
	}
	if len(c.EOS) == 1 {
		h.EOSTokenID, _ = json.Marshal(c.EOS[0])
	} else if len(c.EOS) > 1 {
		h.EOSTokenID, _ = json.Marshal(c.EOS)
	}
	return h
}

// encodeFloats stores x little-endian in dtype.
func encodeFloats(x []float32, dtype string) []byte {
	switch dtype {
	case "F16":
		b := make([]byte, 2*len(x))
		for i, v := range x {
			binary.LittleEndian.PutUint16(b[2*i:], float32ToF16(v))
		}
		return b
	case "BF16":
		b := make([]byte, 2*len(x))
		for i, v := range x {
			binary.LittleEndian.PutUint16(b[2*i:], float32ToBF16(v))
		}
		return b
	}
	b := make([]byte, 4*len(x))
	for i, v := range x {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(v))
	}
	return b
}

// float32ToBF16 rounds to nearest even (NaN stays NaN).
func float32ToBF16(f float32) uint16 {
	u := math.Float32bits(f)
	if u&0x7fffffff > 0x7f800000 {
		return uint16(u>>16) | 0x40
	}
	u += 0x7fff + (u>>16)&1
	return uint16(u >> 16)
}

// float32ToF16 converts to IEEE half precision, round to nearest even,
// overflow to ±Inf, underflow through subnormals to ±0.
func float32ToF16(f float32) uint16 {
	u := math.Float32bits(f)
	sign := uint16(u>>16) & 0x8000
	exp := int(u>>23&0xff) - 127 + 15
	mant := u & 0x7fffff
	switch {
	case u&0x7fffffff > 0x7f800000:
		return sign | 0x7e00
	case exp >= 31: // Inf, or finite >= 65536
		return sign | 0x7c00
	case exp <= 0:
		if exp < -10 {
			return sign
		}
		mant |= 0x800000
		shift := uint(14 - exp)
		half := uint32(1) << (shift - 1)
		r := mant >> shift
		rem := mant & (1<<shift - 1)
		if rem > half || (rem == half && r&1 == 1) {
			r++
		}
		return sign | uint16(r)
	}
	r := uint32(exp)<<10 | mant>>13
	rem := mant & 0x1fff
	if rem > 0x1000 || (rem == 0x1000 && r&1 == 1) {
		r++ // may carry into the exponent, up to Inf: correct
	}
	return sign | uint16(r)
}

// Synthetic returns a model of shape cfg with deterministic weights drawn
// from seed: matrices ~ N(0, 1/in), embeddings ~ N(0, 1), norm weights
// 1 + N(0, 0.1²), biases ~ N(0, 0.1²). The same (cfg, seed) gives the same
// weights on every platform (math/rand/v2 PCG). It runs on the "cpu" backend
// and has no tokenizer; WriteSynthetic writes it to disk.
func Synthetic(cfg Config, seed uint64) (*Model, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	r := rand.New(rand.NewPCG(seed, 0x5eed))
	normal := func(n int, mean, std float64) []float32 {
		x := make([]float32, n)
		for i := range x {
			x[i] = float32(mean + std*r.NormFloat64())
		}
		return x
	}
	c := cfg
	d, h, q, kv := c.Dim, c.HiddenDim, c.QDim(), c.KVDim()
	m := &Model{Config: c}
	m.tokEmb = normal(c.Vocab*d, 0, 1)
	m.layers = make([]layerWeights, c.Layers)
	for l := range m.layers {
		w := &m.layers[l]
		w.attnNorm = normal(d, 1, 0.1)
		w.wq = normal(q*d, 0, 1/math.Sqrt(float64(d)))
		w.wk = normal(kv*d, 0, 1/math.Sqrt(float64(d)))
		w.wv = normal(kv*d, 0, 1/math.Sqrt(float64(d)))
		if c.QKVBias {
			w.bq, w.bk, w.bv = normal(q, 0, 0.1), normal(kv, 0, 0.1), normal(kv, 0, 0.1)
		}
		w.wo = normal(d*q, 0, 1/math.Sqrt(float64(q)))
		w.ffnNorm = normal(d, 1, 0.1)
		w.w1 = normal(h*d, 0, 1/math.Sqrt(float64(d)))
		w.w3 = normal(h*d, 0, 1/math.Sqrt(float64(d)))
		w.w2 = normal(d*h, 0, 1/math.Sqrt(float64(h)))
	}
	m.norm = normal(d, 1, 0.1)
	if c.TiedEmbeddings {
		m.cls = m.tokEmb
	} else {
		m.cls = normal(c.Vocab*d, 0, 1/math.Sqrt(float64(d)))
	}
	for _, w := range m.namedWeights() {
		m.manifest = append(m.manifest, tensorInfo{Name: w.Name, DType: "F32", Shape: w.Shape, raw: f32Bytes(w.Data)})
	}
	if err := m.finish(LoadOptions{}, "", false); err != nil {
		return nil, err
	}
	return m, nil
}

// SyntheticTokenizerFile is the name of the llama2.c-format tokenizer
// WriteSynthetic puts in the model directory (Load finds it there).
const SyntheticTokenizerFile = "tokenizer.bin"

// WriteSynthetic writes Synthetic(cfg, seed) as a Hugging Face directory and,
// when cfg.Vocab >= 259, a llama2.c-format tokenizer.bin beside it: ids 0
// <unk>, 1 BOS, 2 EOS, 3..258 the byte tokens <0x00>..<0xFF>, then
// deterministic letter pieces (" a", "an", ...) with decreasing scores up to
// the vocabulary size. Set cfg.BOS = 1, cfg.EOS = [2] to match it.
func WriteSynthetic(dir string, cfg Config, seed uint64, opts SaveOptions) error {
	m, err := Synthetic(cfg, seed)
	if err != nil {
		return err
	}
	defer m.Close()
	if err := m.SaveHF(dir, opts); err != nil {
		return err
	}
	if cfg.Vocab < 259 {
		return nil
	}
	return os.WriteFile(filepath.Join(dir, SyntheticTokenizerFile), syntheticTokenizer(cfg.Vocab), 0o644)
}

// syntheticTokenizer renders a llama2.c tokenizer of vocab pieces.
func syntheticTokenizer(vocab int) []byte {
	pieces := []string{"<unk>", "\n<s>\n", "\n</s>\n"}
	for b := range 256 {
		pieces = append(pieces, fmt.Sprintf("<0x%02X>", b))
	}
	seen := map[string]bool{}
	for _, p := range pieces {
		seen[p] = true
	}
	letters := "etaoinshrdlucmfwypvbgkjqxz"
	var extra []string
	extra = append(extra, " ")
	for _, a := range letters {
		extra = append(extra, " "+string(a))
	}
	for _, a := range letters {
		for _, b := range letters {
			extra = append(extra, string(a)+string(b))
		}
	}
	for _, a := range letters {
		for _, b := range letters {
			extra = append(extra, " "+string(a)+string(b))
		}
	}
	for _, a := range letters {
		for _, b := range letters {
			for _, c := range letters {
				extra = append(extra, string(a)+string(b)+string(c))
			}
		}
	}
	for _, p := range extra {
		if len(pieces) >= vocab {
			break
		}
		if !seen[p] {
			seen[p] = true
			pieces = append(pieces, p)
		}
	}
	for i := 0; len(pieces) < vocab; i++ {
		pieces = append(pieces, fmt.Sprintf("<extra_%d>", i))
	}
	maxLen := 0
	for _, p := range pieces {
		maxLen = max(maxLen, len(p))
	}
	var b []byte
	b = binary.LittleEndian.AppendUint32(b, uint32(maxLen))
	for i, p := range pieces {
		score := float32(0)
		if i >= 259 {
			score = -float32(i - 259) // earlier pieces merge first
		}
		b = binary.LittleEndian.AppendUint32(b, math.Float32bits(score))
		b = binary.LittleEndian.AppendUint32(b, uint32(len(p)))
		b = append(b, p...)
	}
	return b
}

// SyntheticLlama30M is the ~31M-parameter Llama shape used by benchmarks:
// dim 512, 9 layers, 8 heads of 64, SwiGLU 1408, vocab 4096, 4096 positions.
func SyntheticLlama30M() Config {
	return Config{Arch: ArchLlama, Dim: 512, HiddenDim: 1408, Layers: 9, Heads: 8, KVHeads: 8, HeadDim: 64,
		Vocab: 4096, MaxPositions: 4096, RopeTheta: 10000, NormEps: 1e-5, TiedEmbeddings: true, BOS: 1, EOS: []int32{2}}
}
