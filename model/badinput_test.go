package model

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fusionrag/fusionrag/model/safetensors"
)

var tinyConfig = Config{Arch: ArchLlama, Dim: 32, HiddenDim: 48, Layers: 2, Heads: 4, KVHeads: 2, HeadDim: 8,
	Vocab: 64, MaxPositions: 32, RopeTheta: 10000, NormEps: 1e-5, BOS: 1, EOS: []int32{2}}

// writeTiny writes a tiny synthetic HF model and returns its directory.
func writeTiny(t *testing.T, opts SaveOptions) string {
	t.Helper()
	dir := t.TempDir()
	if err := WriteSynthetic(dir, tinyConfig, 9, opts); err != nil {
		t.Fatal(err)
	}
	return dir
}

func editConfig(t *testing.T, dir string, edit func(map[string]any)) {
	t.Helper()
	p := filepath.Join(dir, "config.json")
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	var c map[string]any
	if err := json.Unmarshal(b, &c); err != nil {
		t.Fatal(err)
	}
	edit(c)
	b, _ = json.Marshal(c)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestLoadBadInput: every broken model gives an error (wrapping the stated
// sentinel and mentioning the stated text), never a panic.
func TestLoadBadInput(t *testing.T) {
	for _, tc := range []struct {
		name    string
		make    func(t *testing.T) string
		wantErr error  // nil: any error
		wantMsg string // substring of the message
	}{
		{"missing path", func(t *testing.T) string { return filepath.Join(t.TempDir(), "nope.bin") }, nil, "no such file"},
		{"safetensors file instead of dir", func(t *testing.T) string {
			return filepath.Join(writeTiny(t, SaveOptions{}), "model.safetensors")
		}, ErrUnsupported, "pass the directory"},
		{"dir without config.json", func(t *testing.T) string { return t.TempDir() }, nil, "not a Hugging Face model directory"},
		{"unknown architecture", func(t *testing.T) string {
			d := writeTiny(t, SaveOptions{})
			editConfig(t, d, func(c map[string]any) { c["architectures"] = []string{"GPT2LMHeadModel"}; c["model_type"] = "gpt2" })
			return d
		}, ErrUnsupported, "supported: LlamaForCausalLM"},
		{"rope scaling yarn", func(t *testing.T) string {
			d := writeTiny(t, SaveOptions{})
			editConfig(t, d, func(c map[string]any) { c["rope_scaling"] = map[string]any{"rope_type": "yarn", "factor": 4} })
			return d
		}, ErrUnsupported, "supported: llama3"},
		{"hidden_act gelu", func(t *testing.T) string {
			d := writeTiny(t, SaveOptions{})
			editConfig(t, d, func(c map[string]any) { c["hidden_act"] = "gelu" })
			return d
		}, ErrUnsupported, "silu"},
		{"config not json", func(t *testing.T) string {
			d := writeTiny(t, SaveOptions{})
			os.WriteFile(filepath.Join(d, "config.json"), []byte("{"), 0o644)
			return d
		}, ErrFormat, "config.json"},
		{"config heads not dividing", func(t *testing.T) string {
			d := writeTiny(t, SaveOptions{})
			editConfig(t, d, func(c map[string]any) { c["num_key_value_heads"] = 3 })
			return d
		}, nil, "KVHeads"},
		{"wrong shapes", func(t *testing.T) string {
			d := writeTiny(t, SaveOptions{})
			editConfig(t, d, func(c map[string]any) { c["intermediate_size"] = 50 })
			return d
		}, ErrFormat, "config implies"},
		{"vocab mismatch", func(t *testing.T) string {
			d := writeTiny(t, SaveOptions{})
			editConfig(t, d, func(c map[string]any) { c["vocab_size"] = 65 })
			return d
		}, ErrFormat, "embed_tokens"},
		{"missing tensor", func(t *testing.T) string {
			d := writeTiny(t, SaveOptions{})
			editConfig(t, d, func(c map[string]any) { c["num_hidden_layers"] = 3 })
			return d
		}, ErrFormat, "model.layers.2.input_layernorm.weight missing"},
		{"extra tensor", func(t *testing.T) string {
			d := writeTiny(t, SaveOptions{})
			editConfig(t, d, func(c map[string]any) { c["num_hidden_layers"] = 1 })
			return d
		}, ErrFormat, "unexpected tensor model.layers.1"},
		{"truncated safetensors", func(t *testing.T) string {
			d := writeTiny(t, SaveOptions{})
			p := filepath.Join(d, "model.safetensors")
			st, _ := os.Stat(p)
			os.Truncate(p, st.Size()-100)
			return d
		}, nil, ""},
		{"corrupt safetensors header", func(t *testing.T) string {
			d := writeTiny(t, SaveOptions{})
			p := filepath.Join(d, "model.safetensors")
			b, _ := os.ReadFile(p)
			copy(b[8:], "[[[[")
			os.WriteFile(p, b, 0o644)
			return d
		}, nil, ""},
		{"huge safetensors header length", func(t *testing.T) string {
			d := writeTiny(t, SaveOptions{})
			p := filepath.Join(d, "model.safetensors")
			b, _ := os.ReadFile(p)
			binary.LittleEndian.PutUint64(b, 1<<62)
			os.WriteFile(p, b, 0o644)
			return d
		}, nil, ""},
		{"shard missing", func(t *testing.T) string {
			d := writeTiny(t, SaveOptions{Shards: 2})
			os.Remove(filepath.Join(d, "model-00002-of-00002.safetensors"))
			return d
		}, nil, ""},
		{"integer dtype", func(t *testing.T) string {
			d := writeTiny(t, SaveOptions{})
			p := filepath.Join(d, "model.safetensors")
			f, err := safetensors.Open(p)
			if err != nil {
				t.Fatal(err)
			}
			var ts []safetensors.Tensor
			for _, tt := range f.Tensors {
				if tt.Name == "model.norm.weight" {
					tt.DType = "I32"
				}
				tt.Data = append([]byte(nil), tt.Data...)
				ts = append(ts, tt)
			}
			f.Close()
			if err := safetensors.Write(p, ts, nil); err != nil {
				t.Fatal(err)
			}
			return d
		}, ErrUnsupported, "dtype I32"},
		{"llama2c truncated", func(t *testing.T) string {
			p := filepath.Join(t.TempDir(), "m.bin")
			os.WriteFile(p, []byte{1, 2, 3}, 0o644)
			return p
		}, ErrFormat, "header"},
		{"llama2c size mismatch", func(t *testing.T) string {
			p := filepath.Join(t.TempDir(), "m.bin")
			var b []byte
			for _, v := range []int32{8, 16, 1, 2, 2, 10, 16} {
				b = binary.LittleEndian.AppendUint32(b, uint32(v))
			}
			os.WriteFile(p, append(b, make([]byte, 100)...), 0o644)
			return p
		}, ErrFormat, "implies"},
		{"llama2c export v2", func(t *testing.T) string {
			p := filepath.Join(t.TempDir(), "m.bin")
			b := binary.LittleEndian.AppendUint32(nil, 0x616b3432)
			b = binary.LittleEndian.AppendUint32(b, 2)
			os.WriteFile(p, append(b, make([]byte, 256)...), 0o644)
			return p
		}, ErrUnsupported, "export version 2"},
		{"llama2c absurd header", func(t *testing.T) string {
			p := filepath.Join(t.TempDir(), "m.bin")
			var b []byte
			for _, v := range []int32{1 << 30, -5, 1, 0, 2, 10, 16} {
				b = binary.LittleEndian.AppendUint32(b, uint32(v))
			}
			os.WriteFile(p, b, 0o644)
			return p
		}, ErrFormat, "implausible"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := tc.make(t)
			m, err := Load(path, LoadOptions{})
			if err == nil {
				m.Close()
				t.Fatalf("Load succeeded on %s", tc.name)
			}
			if tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Errorf("error %q does not wrap %v", err, tc.wantErr)
			}
			if !strings.Contains(err.Error(), tc.wantMsg) {
				t.Errorf("error %q does not mention %q", err, tc.wantMsg)
			}
			t.Logf("%v", err)
		})
	}
	if _, err := Load(writeTiny(t, SaveOptions{}), LoadOptions{Backend: "tpu"}); !errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), "cpu") {
		t.Errorf("unknown backend: %v", err)
	}
}

// TestForwardBadInput: bad batches, caches and options give clear errors.
func TestForwardBadInput(t *testing.T) {
	m, err := Load(writeTiny(t, SaveOptions{}), LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	ctx := context.Background()
	good := NewCache(m.Config, 0)
	other := NewCache(Config{Layers: 1, KVHeads: 2, HeadDim: 8}, 0)
	farCache := NewCache(m.Config, 1)
	farCache.Append(&Cache{Layers: 2, KVHeads: 2, HeadDim: 8, Pos: []int32{40},
		K: [][]float32{make([]float32, 16), make([]float32, 16)}, V: [][]float32{make([]float32, 16), make([]float32, 16)}})
	torn := NewCache(m.Config, 0)
	torn.Pos = []int32{0}
	canceled, cancel := context.WithCancel(ctx)
	cancel()
	for _, tc := range []struct {
		name    string
		ctx     context.Context
		cache   *Cache
		b       Batch
		opts    ForwardOptions
		wantErr error
	}{
		{"token >= vocab", ctx, nil, Batch{Tokens: []int32{1, 64}, Pos: []int32{0, 1}}, ForwardOptions{}, ErrToken},
		{"negative token", ctx, nil, Batch{Tokens: []int32{-1}, Pos: []int32{0}}, ForwardOptions{}, ErrToken},
		{"position past limit", ctx, nil, Batch{Tokens: []int32{1}, Pos: []int32{32}}, ForwardOptions{}, ErrPosition},
		{"negative position", ctx, nil, Batch{Tokens: []int32{1}, Pos: []int32{-1}}, ForwardOptions{}, ErrPosition},
		{"positions not increasing", ctx, nil, Batch{Tokens: []int32{1, 2}, Pos: []int32{3, 3}}, ForwardOptions{}, ErrPosition},
		{"length mismatch", ctx, nil, Batch{Tokens: []int32{1, 2}, Pos: []int32{0}}, ForwardOptions{}, nil},
		{"empty batch", ctx, nil, Batch{}, ForwardOptions{}, nil},
		{"logits index", ctx, nil, Batch{Tokens: []int32{1}, Pos: []int32{0}}, ForwardOptions{Logits: []int{1}}, nil},
		{"attention layer", ctx, nil, Batch{Tokens: []int32{1}, Pos: []int32{0}}, ForwardOptions{AttentionLayers: []int{2}}, nil},
		{"append without cache", ctx, nil, Batch{Tokens: []int32{1}, Pos: []int32{0}}, ForwardOptions{Append: true}, nil},
		{"cache of another shape", ctx, other, Batch{Tokens: []int32{1}, Pos: []int32{0}}, ForwardOptions{}, nil},
		{"cache position past limit", ctx, farCache, Batch{Tokens: []int32{1}, Pos: []int32{0}}, ForwardOptions{}, ErrPosition},
		{"cache arrays torn", ctx, torn, Batch{Tokens: []int32{1}, Pos: []int32{0}}, ForwardOptions{}, nil},
		{"canceled", canceled, good, Batch{Tokens: []int32{1}, Pos: []int32{0}}, ForwardOptions{}, context.Canceled},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := m.Forward(tc.ctx, tc.cache, tc.b, tc.opts)
			if err == nil {
				t.Fatal("no error")
			}
			if tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Errorf("error %q does not wrap %v", err, tc.wantErr)
			}
			t.Logf("%v", err)
		})
	}
	if good.Len() != 0 {
		t.Errorf("failed passes modified the cache: Len %d", good.Len())
	}
	if _, err := m.Embed(Batch{Tokens: []int32{99}, Pos: []int32{0}}); !errors.Is(err, ErrToken) {
		t.Errorf("Embed bad token: %v", err)
	}
	st, _ := m.Embed(Batch{Tokens: []int32{1}, Pos: []int32{0}})
	st.Hidden = st.Hidden[:3]
	if _, err := m.Step(ctx, nil, st, StepOptions{}); err == nil {
		t.Error("Step with torn hidden state: no error")
	}
}
