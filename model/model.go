// Package model is the Llama-family runtime of fusionrag: model configs,
// weight loaders (Hugging Face safetensors directories, llama2.c
// checkpoints and GGUF files, the format llama.cpp loads; WriteGGUF writes
// any loaded model as GGUF), and a forward pass over any set of query positions against a
// KV cache whose keys are stored before RoPE, so cached chunks can be moved to
// any offset exactly.
//
// Supported: Llama 1/2/3 (llama3 rope scaling), Mistral, Qwen2/Qwen2.5 (QKV
// bias), tied embeddings; fp32/fp16/bf16 weights (computed in fp32).
//
// The math is the reference Llama decoder: RMSNorm, RoPE (llama2.c adjacent
// pairs or HF rotate_half), grouped-query attention with scale
// 1/sqrt(HeadDim), SwiGLU feed-forward w2(silu(w1 x) * w3 x), final RMSNorm
// and classifier.
package model

import (
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"unsafe"

	"github.com/fusionrag/fusionrag/model/blas"
	"github.com/fusionrag/fusionrag/model/tokenizer"
	"github.com/zeebo/xxh3"
)

// Sentinel errors for bad input to Forward and friends.
var (
	// ErrToken: a token id outside [0, Vocab).
	ErrToken = errors.New("model: token id out of range")
	// ErrPosition: a position outside [0, MaxPositions), or not strictly increasing in a batch.
	ErrPosition = errors.New("model: bad position")
	// ErrFormat: a weight file that is truncated, corrupt or of the wrong shape.
	ErrFormat = errors.New("model: bad weight file")
)

// LoadOptions tunes Load.
type LoadOptions struct {
	// Tokenizer is a tokenizer file (llama2.c tok*.bin or HF tokenizer.json).
	// Empty: look beside the model (tokenizer.json in an HF directory,
	// tok*.bin beside or inside it for llama2.c). A model without a tokenizer
	// loads with Model.Tokenizer == nil.
	Tokenizer string
	// Backend names a registered backend; empty selects DefaultBackend ("cpu").
	Backend string
	// MaxPositions, when > 0, replaces the model's context length
	// (Config.MaxPositions) from the file, as llama.cpp's
	// --override-kv <arch>.context_length=int:N does; llama.cpp's llama2c
	// converter writes 128 for stories260K, trained on 512. RoPE is
	// computed for any position, so only the check on positions changes.
	MaxPositions int
}

// layerWeights are one decoder layer's fp32 weights, [out, in] row-major.
type layerWeights struct {
	attnNorm []float32 // [Dim]
	wq       []float32 // [QDim, Dim]
	wk, wv   []float32 // [KVDim, Dim]
	bq       []float32 // [QDim] or nil
	bk, bv   []float32 // [KVDim] or nil
	wo       []float32 // [Dim, QDim]
	ffnNorm  []float32 // [Dim]
	w1, w3   []float32 // [HiddenDim, Dim] (gate, up)
	w2       []float32 // [Dim, HiddenDim] (down)

	// packed holds the same matrices laid out once for the cpu backend's
	// kernel (blas.Pack); all nil on other backends.
	packed packedLayer
}

// tensorInfo is one entry of the weight manifest that Fingerprint hashes.
type tensorInfo struct {
	Name  string `json:"name"`
	DType string `json:"dtype"`
	Shape []int  `json:"shape"`
	raw   []byte // the bytes as stored, hashed lazily
}

// Model is a loaded model. It is safe for concurrent Forward calls.
type Model struct {
	// Config is the model's shape; do not modify after Load.
	Config Config
	// Tokenizer is the model's tokenizer, nil when none was found.
	Tokenizer tokenizer.Tokenizer

	backend  Backend
	tokEmb   []float32 // [Vocab, Dim]
	layers   []layerWeights
	norm     []float32    // [Dim]
	cls      []float32    // [Vocab, Dim], aliases tokEmb when tied
	clsPack  *blas.Packed // cls packed for the cpu backend, else nil
	rope     *rope
	manifest []tensorInfo
	closers  []io.Closer

	fpOnce sync.Once
	fp     string
}

// Load opens a model: a directory is a Hugging Face model (config.json +
// safetensors), a *.gguf file a GGUF model (its tokenizer comes from the
// file's metadata unless opts.Tokenizer names one), a *.bin file a llama2.c
// checkpoint. Anything else is refused with an error naming what is
// supported.
func Load(path string, opts LoadOptions) (*Model, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("model: %w", err)
	}
	var m *Model
	var builtin tokenizer.Tokenizer
	switch {
	case st.IsDir():
		m, err = loadHF(path)
	case isGGUFPath(path):
		m, builtin, err = loadGGUF(path, opts)
	case strings.HasSuffix(path, ".bin"):
		m, err = loadLlama2c(path)
	default:
		return nil, fmt.Errorf("%w model path %s: supported are a Hugging Face model directory (config.json + *.safetensors; pass the directory, not a file in it), a GGUF file (*.gguf) and a llama2.c checkpoint (*.bin)",
			ErrUnsupported, path)
	}
	if err != nil {
		return nil, err
	}
	if opts.MaxPositions > 0 {
		m.Config.MaxPositions = opts.MaxPositions
	}
	if opts.Tokenizer == "" {
		m.Tokenizer = builtin // the GGUF's own; finish then searches no further
	}
	if err := m.finish(opts, path, st.IsDir()); err != nil {
		m.Close()
		return nil, err
	}
	return m, nil
}

// finish validates, binds the backend and loads the tokenizer.
func (m *Model) finish(opts LoadOptions, path string, hf bool) error {
	if err := m.Config.Validate(); err != nil {
		return err
	}
	b, err := NewBackend(opts.Backend)
	if err != nil {
		return err
	}
	m.backend = b
	if c, ok := b.(io.Closer); ok {
		m.closers = append(m.closers, c)
	}
	m.rope = newRope(m.Config)
	if _, ok := b.(cpuBackend); ok {
		m.packWeights()
	}
	if wb, ok := b.(WeightBinder); ok {
		if err := wb.BindWeights(m.Config, m.namedWeights()); err != nil {
			return fmt.Errorf("model: backend %s: %w", b.Name(), err)
		}
	}
	tok := m.Tokenizer
	if tok == nil || opts.Tokenizer != "" {
		if tok, err = loadTokenizer(path, opts.Tokenizer, hf); err != nil {
			return err
		}
		m.Tokenizer = tok
	}
	if tok != nil && tok.VocabSize() > m.Config.Vocab {
		return fmt.Errorf("model: tokenizer has %d ids, model vocab %d", tok.VocabSize(), m.Config.Vocab)
	}
	return nil
}

// namedWeights lists the fp32 weights in HF naming. Matrices that packing
// replaced (packWeights) are unpacked into fresh arrays.
func (m *Model) namedWeights() []NamedWeight {
	c := m.Config
	var ws []NamedWeight
	add := func(name string, d []float32, shape ...int) {
		if d != nil {
			ws = append(ws, NamedWeight{Name: name, Shape: shape, Data: d})
		}
	}
	add("model.embed_tokens.weight", m.tokEmb, c.Vocab, c.Dim)
	for i, l := range m.layers {
		p := fmt.Sprintf("model.layers.%d.", i)
		add(p+"input_layernorm.weight", l.attnNorm, c.Dim)
		add(p+"self_attn.q_proj.weight", rawWeight(l.wq, l.packed.wq), c.QDim(), c.Dim)
		add(p+"self_attn.k_proj.weight", rawWeight(l.wk, l.packed.wk), c.KVDim(), c.Dim)
		add(p+"self_attn.v_proj.weight", rawWeight(l.wv, l.packed.wv), c.KVDim(), c.Dim)
		add(p+"self_attn.q_proj.bias", l.bq, c.QDim())
		add(p+"self_attn.k_proj.bias", l.bk, c.KVDim())
		add(p+"self_attn.v_proj.bias", l.bv, c.KVDim())
		add(p+"self_attn.o_proj.weight", rawWeight(l.wo, l.packed.wo), c.Dim, c.QDim())
		add(p+"post_attention_layernorm.weight", l.ffnNorm, c.Dim)
		add(p+"mlp.gate_proj.weight", rawWeight(l.w1, l.packed.w1), c.HiddenDim, c.Dim)
		add(p+"mlp.up_proj.weight", rawWeight(l.w3, l.packed.w3), c.HiddenDim, c.Dim)
		add(p+"mlp.down_proj.weight", rawWeight(l.w2, l.packed.w2), c.Dim, c.HiddenDim)
	}
	add("model.norm.weight", m.norm, c.Dim)
	if !c.TiedEmbeddings {
		add("lm_head.weight", rawWeight(m.cls, m.clsPack), c.Vocab, c.Dim)
	}
	return ws
}

// Backend is the backend the model runs on.
func (m *Model) Backend() Backend { return m.backend }

// Fingerprint identifies the model for cache keys: hex xxh3-128 of the config
// and the weight manifest (names, shapes, dtypes and a hash of every tensor's
// stored bytes). Stable across loads of the same files; computed once (the
// first call reads every weight).
func (m *Model) Fingerprint() string {
	m.fpOnce.Do(func() {
		h := xxh3.New()
		cfg, _ := json.Marshal(m.Config)
		h.Write(cfg)
		var buf [8]byte
		for _, t := range m.manifest {
			man, _ := json.Marshal(t)
			h.Write(man)
			binary.LittleEndian.PutUint64(buf[:], xxh3.Hash(t.raw))
			h.Write(buf[:])
		}
		s := h.Sum128().Bytes()
		m.fp = hex.EncodeToString(s[:])
	})
	return m.fp
}

// Close releases the mapped weight files and backend resources. The model
// must not be used afterwards.
func (m *Model) Close() error {
	var errs []error
	for i := len(m.closers) - 1; i >= 0; i-- {
		errs = append(errs, m.closers[i].Close())
	}
	m.closers = nil
	return errors.Join(errs...)
}

// f32Bytes views a float32 slice as bytes (for hashing; no copy).
func f32Bytes(f []float32) []byte {
	if len(f) == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(&f[0])), len(f)*4)
}

// loadTokenizer finds and loads the tokenizer. Explicit paths must load;
// discovered ones too (a broken tokenizer beside a model is an error, not
// silently nil).
func loadTokenizer(modelPath, explicit string, hf bool) (tokenizer.Tokenizer, error) {
	path := explicit
	if path == "" {
		path = findTokenizer(modelPath, hf)
	}
	if path == "" {
		return nil, nil
	}
	t, err := openTokenizer(path)
	if err != nil {
		return nil, fmt.Errorf("model: tokenizer %s: %w", path, err)
	}
	return t, nil
}
