package model

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/fusionrag/fusionrag/model/safetensors"
)

// hfConfig is the part of a Hugging Face config.json the runtime reads.
type hfConfig struct {
	Architectures         []string        `json:"architectures"`
	ModelType             string          `json:"model_type"`
	HiddenSize            int             `json:"hidden_size"`
	IntermediateSize      int             `json:"intermediate_size"`
	NumHiddenLayers       int             `json:"num_hidden_layers"`
	NumAttentionHeads     int             `json:"num_attention_heads"`
	NumKeyValueHeads      int             `json:"num_key_value_heads,omitempty"`
	HeadDim               int             `json:"head_dim,omitempty"`
	VocabSize             int             `json:"vocab_size"`
	MaxPositionEmbeddings int             `json:"max_position_embeddings"`
	RopeTheta             float64         `json:"rope_theta,omitempty"`
	RopeScaling           *hfRopeScaling  `json:"rope_scaling,omitempty"`
	RMSNormEps            float64         `json:"rms_norm_eps"`
	TieWordEmbeddings     *bool           `json:"tie_word_embeddings,omitempty"`
	BOSTokenID            json.RawMessage `json:"bos_token_id,omitempty"`
	EOSTokenID            json.RawMessage `json:"eos_token_id,omitempty"`
	AttentionBias         bool            `json:"attention_bias,omitempty"`
	MLPBias               bool            `json:"mlp_bias,omitempty"`
	SlidingWindow         *int            `json:"sliding_window,omitempty"`
	UseSlidingWindow      *bool           `json:"use_sliding_window,omitempty"`
	HiddenAct             string          `json:"hidden_act,omitempty"`
	TorchDtype            string          `json:"torch_dtype,omitempty"`
}

type hfRopeScaling struct {
	RopeType                      string  `json:"rope_type,omitempty"`
	Type                          string  `json:"type,omitempty"`
	Factor                        float64 `json:"factor,omitempty"`
	LowFreqFactor                 float64 `json:"low_freq_factor,omitempty"`
	HighFreqFactor                float64 `json:"high_freq_factor,omitempty"`
	OriginalMaxPositionEmbeddings int     `json:"original_max_position_embeddings,omitempty"`
}

// hfArchs maps config.json architectures / model_type to Config.Arch.
var hfArchs = map[string]string{
	"LlamaForCausalLM": ArchLlama, "llama": ArchLlama,
	"MistralForCausalLM": ArchMistral, "mistral": ArchMistral,
	"Qwen2ForCausalLM": ArchQwen2, "qwen2": ArchQwen2,
}

// parseHFConfig turns config.json bytes into a Config.
func parseHFConfig(b []byte) (Config, error) {
	var h hfConfig
	if err := json.Unmarshal(b, &h); err != nil {
		return Config{}, fmt.Errorf("%w: config.json: %v", ErrFormat, err)
	}
	arch := hfArchs[h.ModelType]
	for _, a := range h.Architectures {
		if v, ok := hfArchs[a]; ok {
			arch = v
		} else if arch == "" {
			arch = "?"
		}
	}
	if arch == "" || arch == "?" {
		return Config{}, fmt.Errorf("%w architecture %v (model_type %q); supported: LlamaForCausalLM (Llama 1/2/3), MistralForCausalLM, Qwen2ForCausalLM (Qwen2/2.5), and llama2.c checkpoints",
			ErrUnsupported, h.Architectures, h.ModelType)
	}
	if h.HiddenAct != "" && h.HiddenAct != "silu" {
		return Config{}, fmt.Errorf("%w hidden_act %q (supported: silu)", ErrUnsupported, h.HiddenAct)
	}
	if arch != ArchQwen2 && (h.AttentionBias || h.MLPBias) {
		return Config{}, fmt.Errorf("%w attention_bias/mlp_bias on %s (supported: Qwen2 q/k/v biases only)", ErrUnsupported, arch)
	}
	c := Config{
		Arch: arch, Dim: h.HiddenSize, HiddenDim: h.IntermediateSize, Layers: h.NumHiddenLayers,
		Heads: h.NumAttentionHeads, KVHeads: h.NumKeyValueHeads, HeadDim: h.HeadDim, Vocab: h.VocabSize,
		MaxPositions: h.MaxPositionEmbeddings, RopeTheta: h.RopeTheta, NormEps: h.RMSNormEps,
		QKVBias: arch == ArchQwen2, BOS: -1,
	}
	if c.KVHeads == 0 {
		c.KVHeads = c.Heads
	}
	if c.HeadDim == 0 && c.Heads > 0 {
		c.HeadDim = c.Dim / c.Heads
	}
	if c.RopeTheta == 0 {
		c.RopeTheta = 10000
	}
	if c.NormEps == 0 {
		c.NormEps = 1e-6
	}
	if h.TieWordEmbeddings != nil {
		c.TiedEmbeddings = *h.TieWordEmbeddings
	}
	// Sliding-window attention is not implemented; positions past the window
	// are refused instead of computed differently from the reference.
	if h.SlidingWindow != nil && *h.SlidingWindow > 0 && (arch == ArchMistral || (h.UseSlidingWindow != nil && *h.UseSlidingWindow)) {
		c.MaxPositions = min(c.MaxPositions, *h.SlidingWindow)
	}
	if s := h.RopeScaling; s != nil {
		t := s.RopeType
		if t == "" {
			t = s.Type
		}
		switch t {
		case "", "default":
		case "llama3":
			c.RopeScaling = &RopeScaling{Type: t, Factor: s.Factor, LowFreqFactor: s.LowFreqFactor,
				HighFreqFactor: s.HighFreqFactor, OriginalMaxPositions: s.OriginalMaxPositionEmbeddings}
		default:
			return Config{}, fmt.Errorf("%w rope_scaling type %q (supported: llama3)", ErrUnsupported, t)
		}
	}
	if len(h.BOSTokenID) > 0 && string(h.BOSTokenID) != "null" {
		var bos int32
		if err := json.Unmarshal(h.BOSTokenID, &bos); err != nil {
			return Config{}, fmt.Errorf("%w: config.json bos_token_id %s", ErrFormat, h.BOSTokenID)
		}
		c.BOS = bos
	}
	if len(h.EOSTokenID) > 0 && string(h.EOSTokenID) != "null" {
		var one int32
		if err := json.Unmarshal(h.EOSTokenID, &one); err == nil {
			c.EOS = []int32{one}
		} else if err := json.Unmarshal(h.EOSTokenID, &c.EOS); err != nil {
			return Config{}, fmt.Errorf("%w: config.json eos_token_id %s", ErrFormat, h.EOSTokenID)
		}
	}
	if err := c.Validate(); err != nil {
		return Config{}, err
	}
	return c, nil
}

// loadHF loads a Hugging Face model directory: config.json and the
// safetensors weights (memory-mapped; fp32 tensors are used in place,
// fp16/bf16 converted to fp32 once).
func loadHF(dir string) (*Model, error) {
	b, err := os.ReadFile(filepath.Join(dir, "config.json"))
	if err != nil {
		return nil, fmt.Errorf("model: %s is not a Hugging Face model directory: %w", dir, err)
	}
	cfg, err := parseHFConfig(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", dir, err)
	}
	set, err := safetensors.OpenDir(dir)
	if err != nil {
		return nil, fmt.Errorf("model: %w", err)
	}
	m := &Model{Config: cfg, closers: []io.Closer{set}}
	if err := m.bindHF(set); err != nil {
		m.Close()
		return nil, fmt.Errorf("%s: %w", dir, err)
	}
	return m, nil
}

// bindWeights fills the model's weights, every one the config implies,
// from get, which is asked for each by its Hugging Face name and row-major
// shape and records its own failures; failed reports them. It stops at the
// end of the first layer (or of the model) with a failure and returns it.
// Loaders of other formats translate the names (bindGGUF).
func (m *Model) bindWeights(get func(name string, shape ...int) []float32, failed func() error) error {
	c := m.Config
	m.tokEmb = get("model.embed_tokens.weight", c.Vocab, c.Dim)
	m.layers = make([]layerWeights, c.Layers)
	for i := range m.layers {
		p := fmt.Sprintf("model.layers.%d.", i)
		w := &m.layers[i]
		w.attnNorm = get(p+"input_layernorm.weight", c.Dim)
		w.wq = get(p+"self_attn.q_proj.weight", c.QDim(), c.Dim)
		w.wk = get(p+"self_attn.k_proj.weight", c.KVDim(), c.Dim)
		w.wv = get(p+"self_attn.v_proj.weight", c.KVDim(), c.Dim)
		if c.QKVBias {
			w.bq = get(p+"self_attn.q_proj.bias", c.QDim())
			w.bk = get(p+"self_attn.k_proj.bias", c.KVDim())
			w.bv = get(p+"self_attn.v_proj.bias", c.KVDim())
		}
		w.wo = get(p+"self_attn.o_proj.weight", c.Dim, c.QDim())
		w.ffnNorm = get(p+"post_attention_layernorm.weight", c.Dim)
		w.w1 = get(p+"mlp.gate_proj.weight", c.HiddenDim, c.Dim)
		w.w3 = get(p+"mlp.up_proj.weight", c.HiddenDim, c.Dim)
		w.w2 = get(p+"mlp.down_proj.weight", c.Dim, c.HiddenDim)
		if err := failed(); err != nil {
			return err
		}
	}
	m.norm = get("model.norm.weight", c.Dim)
	if c.TiedEmbeddings {
		m.cls = m.tokEmb
	} else {
		m.cls = get("lm_head.weight", c.Vocab, c.Dim)
	}
	return failed()
}

// bindHF takes every weight the config implies from the set, checking names,
// shapes and dtypes.
func (m *Model) bindHF(set *safetensors.Set) error {
	c := m.Config
	used := map[string]bool{}
	get := func(name string, shape ...int) ([]float32, error) {
		t, ok := set.Tensors[name]
		if !ok {
			return nil, fmt.Errorf("%w: tensor %s missing", ErrFormat, name)
		}
		if !slices.Equal(t.Shape, shape) {
			return nil, fmt.Errorf("%w: tensor %s has shape %v, config implies %v", ErrFormat, name, t.Shape, shape)
		}
		switch t.DType {
		case "F32", "F16", "BF16":
		default:
			return nil, fmt.Errorf("%w dtype %s of %s (supported: F32, F16, BF16)", ErrUnsupported, t.DType, name)
		}
		f, err := t.Float32()
		if err != nil {
			return nil, fmt.Errorf("%w: tensor %s: %v", ErrFormat, name, err)
		}
		n := 1
		for _, s := range shape {
			n *= s
		}
		if len(f) != n {
			return nil, fmt.Errorf("%w: tensor %s holds %d values, shape %v needs %d", ErrFormat, name, len(f), shape, n)
		}
		used[name] = true
		m.manifest = append(m.manifest, tensorInfo{Name: name, DType: string(t.DType), Shape: t.Shape, raw: t.Data})
		return f, nil
	}
	var errs []error
	if err := m.bindWeights(func(name string, shape ...int) []float32 {
		f, err := get(name, shape...)
		if err != nil {
			errs = append(errs, err)
		}
		return f
	}, func() error { return errors.Join(errs...) }); err != nil {
		return errs[0]
	}
	for name := range set.Tensors {
		if !used[name] && !strings.HasSuffix(name, "rotary_emb.inv_freq") {
			if name == "lm_head.weight" && c.TiedEmbeddings {
				continue // some tied checkpoints store the copy anyway
			}
			return fmt.Errorf("%w: unexpected tensor %s (not part of a %s model of this config)", ErrFormat, name, c.Arch)
		}
	}
	return nil
}
