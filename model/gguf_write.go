package model

import (
	"bufio"
	"fmt"
	"os"
	"strings"

	"github.com/fusionrag/fusionrag/model/tokenizer"
)

// GGUFOptions tunes WriteGGUF.
type GGUFOptions struct {
	// DType of the weight matrices: "F32" (default) or "F16" (rounded to
	// nearest even). Vectors (norms, biases) stay F32, as llama.cpp's
	// converters keep them.
	DType string
	// Alignment of the tensor data (general.alignment); 0 means 32, the
	// GGUF default. Must be a power of two.
	Alignment int
	// Name is general.name; empty writes "fusionrag".
	Name string
}

// ggufFileType is general.file_type (llama_ftype): ALL_F32 or MOSTLY_F16.
var ggufFileType = map[string]uint32{"F32": 0, "F16": 1}

// WriteGGUF writes the model as a GGUF file that llama.cpp (llama-server)
// and Load read: the architecture's metadata, the tokenizer's (when the
// model has one; see tokenizer.GGUFMetadata) and the weights under
// llama.cpp's tensor names.
//
// Llama and Mistral are written as GGUF arch "llama", whose RoPE is
// llama.cpp's NORM type (adjacent pairs): a model in the HF rotate_half
// layout gets the rows of wq and wk permuted within each head, [i,
// i+HeadDim/2] -> [2i, 2i+1], which is the permutation llama.cpp's HF
// converter applies; a llama2.c model is written as it is. Qwen2 is written
// as arch "qwen2" (NEOX RoPE, rotate_half, weights unpermuted) with its q/k/v
// biases. Llama 3 rope scaling is refused (llama.cpp needs a rope_freqs
// tensor this writer does not produce).
func (m *Model) WriteGGUF(path string, opts GGUFOptions) error {
	kv, tensors, align, err := m.ggufContents(opts)
	if err != nil {
		return err
	}
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("model: %w", err)
	}
	w := bufio.NewWriterSize(f, 1<<20)
	if err := writeGGUF(w, kv, tensors, align); err != nil {
		f.Close()
		return fmt.Errorf("model: write %s: %w", path, err)
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return fmt.Errorf("model: write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("model: write %s: %w", path, err)
	}
	return nil
}

// GGUFArch is the GGUF general.architecture WriteGGUF writes for c:
// "llama" for Llama and Mistral, "qwen2" for Qwen2, "" for others. Its
// metadata keys are prefixed with it (e.g. llama.context_length, which
// llama-server's --override-kv names).
func (c Config) GGUFArch() string {
	switch c.Arch {
	case ArchLlama, ArchMistral:
		return "llama"
	case ArchQwen2:
		return "qwen2"
	}
	return ""
}

// ggufContents builds the metadata and tensors WriteGGUF writes.
func (m *Model) ggufContents(opts GGUFOptions) ([]ggufKV, []ggufTensor, int, error) {
	dtype := opts.DType
	if dtype == "" {
		dtype = "F32"
	}
	ft, ok := ggufFileType[dtype]
	if !ok {
		return nil, nil, 0, fmt.Errorf("%w GGUF write dtype %q (supported: F32, F16)", ErrUnsupported, dtype)
	}
	align := opts.Alignment
	if align == 0 {
		align = ggufDefaultAlignment
	}
	if align < 0 || align&(align-1) != 0 || align > 1<<20 {
		return nil, nil, 0, fmt.Errorf("model: GGUF alignment %d must be a power of two", align)
	}
	c := m.Config
	arch := c.GGUFArch()
	switch {
	case arch == "":
		return nil, nil, 0, fmt.Errorf("%w GGUF architecture for %q (supported: llama, mistral, qwen2)", ErrUnsupported, c.Arch)
	case arch == "llama" && c.QKVBias:
		return nil, nil, 0, fmt.Errorf("%w: GGUF llama with q/k/v biases", ErrUnsupported)
	}
	if c.RopeScaling != nil {
		return nil, nil, 0, fmt.Errorf("%w: GGUF with %s rope scaling (needs rope_freqs.weight)", ErrUnsupported, c.RopeScaling.Type)
	}
	name := opts.Name
	if name == "" {
		name = "fusionrag"
	}
	kv := []ggufKV{
		{"general.architecture", arch},
		{"general.name", name},
		{"general.file_type", ft},
	}
	if align != ggufDefaultAlignment {
		kv = append(kv, ggufKV{"general.alignment", uint32(align)})
	}
	a := func(k string, v any) { kv = append(kv, ggufKV{arch + "." + k, v}) }
	a("context_length", uint32(c.MaxPositions))
	a("embedding_length", uint32(c.Dim))
	a("feed_forward_length", uint32(c.HiddenDim))
	a("block_count", uint32(c.Layers))
	a("attention.head_count", uint32(c.Heads))
	a("attention.head_count_kv", uint32(c.KVHeads))
	if c.HeadDim != c.Dim/c.Heads {
		a("attention.key_length", uint32(c.HeadDim))
		a("attention.value_length", uint32(c.HeadDim))
	}
	a("rope.dimension_count", uint32(c.HeadDim))
	a("rope.freq_base", float32(c.RopeTheta))
	a("attention.layer_norm_rms_epsilon", float32(c.NormEps))
	a("vocab_size", uint32(c.Vocab))
	if m.Tokenizer != nil {
		tkv, err := tokenizer.GGUFMetadata(m.Tokenizer)
		if err != nil {
			return nil, nil, 0, fmt.Errorf("model: GGUF tokenizer: %w", err)
		}
		padVocab(tkv, c.Vocab)
		for _, e := range tkv {
			kv = append(kv, ggufKV{e.Key, e.Value})
		}
	}

	// The target layout: "llama" wants adjacent pairs, "qwen2" rotate_half.
	wantInterleaved := arch == "llama"
	var tensors []ggufTensor
	for _, w := range m.namedWeights() {
		gname, ok := ggufTensorName(w.Name)
		if !ok {
			return nil, nil, 0, fmt.Errorf("model: no GGUF name for tensor %s", w.Name)
		}
		data := w.Data
		if c.RopeInterleaved != wantInterleaved && (strings.Contains(w.Name, "q_proj") || strings.Contains(w.Name, "k_proj")) {
			heads := c.Heads
			if strings.Contains(w.Name, "k_proj") {
				heads = c.KVHeads
			}
			cols := len(data) / (heads * c.HeadDim)
			if wantInterleaved {
				data = permuteInterleave(data, heads, c.HeadDim, cols)
			} else {
				data = permuteRotateHalf(data, heads, c.HeadDim, cols)
			}
		}
		dims := make([]int64, len(w.Shape))
		for i, s := range w.Shape {
			dims[len(w.Shape)-1-i] = int64(s)
		}
		t := ggufTensor{Name: gname, Dims: dims, Type: ggmlF32}
		if dtype == "F16" && len(w.Shape) == 2 {
			t.Type = ggmlF16
			t.Data = encodeFloats(data, "F16")
		} else {
			t.Data = encodeFloats(data, "F32")
		}
		tensors = append(tensors, t)
	}
	return kv, tensors, align, nil
}

// ggufTensorName maps an HF tensor name (namedWeights) to llama.cpp's.
func ggufTensorName(hf string) (string, bool) {
	switch hf {
	case "model.embed_tokens.weight":
		return "token_embd.weight", true
	case "model.norm.weight":
		return "output_norm.weight", true
	case "lm_head.weight":
		return "output.weight", true
	}
	var layer int
	var rest string
	if n, _ := fmt.Sscanf(hf, "model.layers.%d.", &layer); n != 1 {
		return "", false
	}
	rest = hf[len(fmt.Sprintf("model.layers.%d.", layer)):]
	names := map[string]string{
		"input_layernorm.weight":          "attn_norm.weight",
		"self_attn.q_proj.weight":         "attn_q.weight",
		"self_attn.k_proj.weight":         "attn_k.weight",
		"self_attn.v_proj.weight":         "attn_v.weight",
		"self_attn.q_proj.bias":           "attn_q.bias",
		"self_attn.k_proj.bias":           "attn_k.bias",
		"self_attn.v_proj.bias":           "attn_v.bias",
		"self_attn.o_proj.weight":         "attn_output.weight",
		"post_attention_layernorm.weight": "ffn_norm.weight",
		"mlp.gate_proj.weight":            "ffn_gate.weight",
		"mlp.up_proj.weight":              "ffn_up.weight",
		"mlp.down_proj.weight":            "ffn_down.weight",
	}
	g, ok := names[rest]
	if !ok {
		return "", false
	}
	return fmt.Sprintf("blk.%d.%s", layer, g), true
}

// permuteInterleave is the inverse of permuteRotateHalf: within each head of
// w ([heads*headDim, cols]) new row 2i is old row i and new row 2i+1 is old
// row headDim/2+i, turning HF rotate_half weights into the adjacent-pair
// layout (llama.cpp's convert_hf_to_gguf LlamaModel.permute).
func permuteInterleave(w []float32, heads, headDim, cols int) []float32 {
	out := make([]float32, len(w))
	half := headDim / 2
	for h := range heads {
		for i := range half {
			for k, dst := range [2]int{2 * i, 2*i + 1} {
				src := h*headDim + k*half + i
				d := h*headDim + dst
				copy(out[d*cols:(d+1)*cols], w[src*cols:(src+1)*cols])
			}
		}
	}
	return out
}

// padVocab extends the per-token arrays to the model's vocabulary: llama.cpp
// refuses a file whose token list is shorter than token_embd's rows (HF
// checkpoints often pad the embedding, e.g. Qwen2.5's 151936 rows for
// 151665 tokens). The padding is what llama.cpp's converters write:
// "[PAD<id>]" pieces of type UNUSED with score -1000.
func padVocab(kv []tokenizer.GGUFKV, vocab int) {
	for i := range kv {
		switch v := kv[i].Value.(type) {
		case []string:
			if kv[i].Key == "tokenizer.ggml.tokens" {
				for id := len(v); id < vocab; id++ {
					v = append(v, fmt.Sprintf("[PAD%d]", id))
				}
				kv[i].Value = v
			}
		case []float32:
			if kv[i].Key == "tokenizer.ggml.scores" {
				for len(v) < vocab {
					v = append(v, -1000)
				}
				kv[i].Value = v
			}
		case []int32:
			if kv[i].Key == "tokenizer.ggml.token_type" {
				for len(v) < vocab {
					v = append(v, 5) // UNUSED
				}
				kv[i].Value = v
			}
		}
	}
}
