package model

import (
	"errors"
	"fmt"
)

// Supported architectures (Config.Arch).
const (
	ArchLlama   = "llama"   // Llama 1/2/3 (and llama2.c checkpoints)
	ArchMistral = "mistral" // Mistral (sliding window folded into MaxPositions)
	ArchQwen2   = "qwen2"   // Qwen2 / Qwen2.5: QKV bias
)

// SupportedArchs lists the values Config.Arch may take.
var SupportedArchs = []string{ArchLlama, ArchMistral, ArchQwen2}

// ErrUnsupported is wrapped by errors about architectures, dtypes or options
// the runtime does not implement; the message names what is supported.
var ErrUnsupported = errors.New("model: unsupported")

// RopeScaling is the Llama 3 RoPE frequency scaling ("rope_type": "llama3").
// Frequencies whose wavelength is below OriginalMaxPositions/HighFreqFactor are
// kept, those above OriginalMaxPositions/LowFreqFactor are divided by Factor,
// and the band in between is interpolated smoothly.
type RopeScaling struct {
	Type                 string  // only "llama3"
	Factor               float64 // e.g. 8
	LowFreqFactor        float64 // e.g. 1
	HighFreqFactor       float64 // e.g. 4
	OriginalMaxPositions int     // e.g. 8192
}

// Config is the shape and numerics of a Llama-family decoder.
type Config struct {
	// Arch is one of SupportedArchs. llama2.c checkpoints load as "llama".
	Arch string
	// Dim is the model (residual stream) width.
	Dim int
	// HiddenDim is the SwiGLU feed-forward width.
	HiddenDim int
	// Layers is the number of decoder layers.
	Layers int
	// Heads is the number of query heads.
	Heads int
	// KVHeads is the number of key/value heads (grouped-query attention);
	// query head h uses KV head h / (Heads/KVHeads).
	KVHeads int
	// HeadDim is the width of one head (usually Dim/Heads); must be even.
	HeadDim int
	// Vocab is the number of token ids (rows of the embedding).
	Vocab int
	// MaxPositions is the exclusive upper bound of positions Forward accepts.
	MaxPositions int
	// RopeTheta is the RoPE base (10000 for Llama 2, 500000 for Llama 3).
	RopeTheta float64
	// RopeScaling is the optional llama3 frequency scaling; nil for none.
	RopeScaling *RopeScaling
	// RopeInterleaved selects the rotation layout: true rotates adjacent
	// pairs (2i, 2i+1) as llama2.c does; false rotates (i, i+HeadDim/2), the
	// Hugging Face rotate_half layout (whose wq/wk rows are permuted to match).
	RopeInterleaved bool
	// NormEps is the RMSNorm epsilon.
	NormEps float64
	// QKVBias says the q/k/v projections have biases (Qwen2).
	QKVBias bool
	// TiedEmbeddings says the classifier reuses the token embedding.
	TiedEmbeddings bool
	// BOS is the beginning-of-sequence id, -1 when none.
	BOS int32
	// EOS lists the ids that end generation.
	EOS []int32
}

// QDim is Heads*HeadDim, the width of the query projection.
func (c Config) QDim() int { return c.Heads * c.HeadDim }

// KVDim is KVHeads*HeadDim, the width of one token's K (or V) in one layer.
func (c Config) KVDim() int { return c.KVHeads * c.HeadDim }

// Params is the number of weights the config implies.
func (c Config) Params() int64 {
	d, h, q, kv := int64(c.Dim), int64(c.HiddenDim), int64(c.QDim()), int64(c.KVDim())
	per := d + q*d + 2*kv*d + d*q + d + 3*h*d
	if c.QKVBias {
		per += q + 2*kv
	}
	n := int64(c.Vocab)*d + int64(c.Layers)*per + d
	if !c.TiedEmbeddings {
		n += int64(c.Vocab) * d
	}
	return n
}

// Validate checks that the config describes a model the runtime can run.
func (c Config) Validate() error {
	switch c.Arch {
	case ArchLlama, ArchMistral, ArchQwen2:
	default:
		return fmt.Errorf("%w architecture %q (supported: %v)", ErrUnsupported, c.Arch, SupportedArchs)
	}
	pos := []struct {
		name string
		v    int
	}{{"Dim", c.Dim}, {"HiddenDim", c.HiddenDim}, {"Layers", c.Layers}, {"Heads", c.Heads},
		{"KVHeads", c.KVHeads}, {"HeadDim", c.HeadDim}, {"Vocab", c.Vocab}, {"MaxPositions", c.MaxPositions}}
	for _, p := range pos {
		if p.v <= 0 {
			return fmt.Errorf("model: config %s = %d, must be > 0", p.name, p.v)
		}
	}
	if c.Heads%c.KVHeads != 0 {
		return fmt.Errorf("model: config Heads %d not a multiple of KVHeads %d", c.Heads, c.KVHeads)
	}
	if c.HeadDim%2 != 0 {
		return fmt.Errorf("model: config HeadDim %d must be even for RoPE", c.HeadDim)
	}
	if c.MaxPositions > 1<<30 {
		return fmt.Errorf("model: config MaxPositions %d too large", c.MaxPositions)
	}
	if !(c.RopeTheta > 0) {
		return fmt.Errorf("model: config RopeTheta %v must be > 0", c.RopeTheta)
	}
	if !(c.NormEps > 0) {
		return fmt.Errorf("model: config NormEps %v must be > 0", c.NormEps)
	}
	if s := c.RopeScaling; s != nil {
		if s.Type != "llama3" {
			return fmt.Errorf("%w rope_scaling type %q (supported: llama3)", ErrUnsupported, s.Type)
		}
		if !(s.Factor > 0) || !(s.LowFreqFactor > 0) || !(s.HighFreqFactor > s.LowFreqFactor) || s.OriginalMaxPositions <= 0 {
			return fmt.Errorf("model: invalid llama3 rope_scaling %+v", *s)
		}
	}
	if c.BOS >= int32(c.Vocab) {
		return fmt.Errorf("model: config BOS %d >= vocab %d", c.BOS, c.Vocab)
	}
	for _, e := range c.EOS {
		if e < 0 || e >= int32(c.Vocab) {
			return fmt.Errorf("model: config EOS %d outside [0, %d)", e, c.Vocab)
		}
	}
	return nil
}
