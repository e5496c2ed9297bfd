package model

import (
	"cmp"
	"context"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"testing"

	"github.com/fusionrag/fusionrag/internal/shareddata"
	"github.com/fusionrag/fusionrag/model/safetensors"
)

// TestHFLayoutMatchesLlama2c converts stories260K to the Hugging Face layout
// (rotate_half RoPE, wq/wk rows permuted per head), writes it as a
// safetensors directory, loads it through the HF path and compares logits
// with the llama2.c path. F32 must agree within 1e-4 (same weights, the
// permutation only reorders the terms of the q·k dot products: measured
// 1.4e-5). F16/BF16 storage rounds every weight (2^-11 / 2^-8 relative), so
// their bounds only catch a broken conversion, not rounding.
func TestHFLayoutMatchesLlama2c(t *testing.T) {
	ref := loadStories(t)
	tok := shareddata.Path(t, "models/stories260K/tok512.bin")
	toks := randomTokens(ref, 48, 11)
	want := fullForward(t, ref, toks, 0).Logits
	for _, tc := range []struct {
		opts SaveOptions
		tol  float64 // absolute, on logits of magnitude <= ~15
	}{
		{SaveOptions{}, 1e-4},
		{SaveOptions{Shards: 2}, 1e-4},
		{SaveOptions{DType: "F16"}, 0.05},
		{SaveOptions{DType: "BF16"}, 0.5},
	} {
		t.Run(fmt.Sprintf("%s-shards%d", cmp.Or(tc.opts.DType, "F32"), tc.opts.Shards), func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "stories260K-hf")
			if err := ref.SaveHF(dir, tc.opts); err != nil {
				t.Fatal(err)
			}
			m, err := Load(dir, LoadOptions{Tokenizer: tok})
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			if m.Config.RopeInterleaved || m.Config.Arch != ArchLlama || !m.Config.TiedEmbeddings {
				t.Errorf("HF config: interleaved %v arch %q tied %v, want false llama true", m.Config.RopeInterleaved, m.Config.Arch, m.Config.TiedEmbeddings)
			}
			if m.Tokenizer == nil || m.Tokenizer.VocabSize() != 512 {
				t.Errorf("tokenizer not loaded from LoadOptions.Tokenizer")
			}
			r, err := m.Forward(context.Background(), nil, Batch{Tokens: toks, Pos: seq(0, len(toks))}, ForwardOptions{Logits: allRows(len(toks))})
			if err != nil {
				t.Fatal(err)
			}
			var worst float64
			for i := range want {
				for j := range want[i] {
					worst = max(worst, abs64(float64(r.Logits[i][j])-float64(want[i][j])))
				}
			}
			if worst > tc.tol {
				t.Errorf("HF-layout logits differ from llama2.c by %.3g > %g", worst, tc.tol)
			} else {
				t.Logf("max |HF - llama2.c| logits: %.3g (tolerance %g)", worst, tc.tol)
			}
		})
	}
}

func abs64(x float64) float64 {
	if x < 0 {
		return -x
	}
	return x
}

func TestFingerprint(t *testing.T) {
	p := shareddata.Path(t, "models/stories260K/stories260K.bin")
	a, b := loadStories(t), loadStories(t)
	if a.Fingerprint() != b.Fingerprint() || len(a.Fingerprint()) != 32 {
		t.Fatalf("fingerprint not stable across loads of %s: %s vs %s", p, a.Fingerprint(), b.Fingerprint())
	}
	cfg := Config{Arch: ArchLlama, Dim: 32, HiddenDim: 64, Layers: 1, Heads: 2, KVHeads: 2, HeadDim: 16,
		Vocab: 64, MaxPositions: 64, RopeTheta: 10000, NormEps: 1e-5, BOS: 1}
	s1, err := Synthetic(cfg, 1)
	if err != nil {
		t.Fatal(err)
	}
	s1b, _ := Synthetic(cfg, 1)
	s2, _ := Synthetic(cfg, 2)
	if s1.Fingerprint() != s1b.Fingerprint() {
		t.Error("same synthetic seed, different fingerprints")
	}
	if s1.Fingerprint() == s2.Fingerprint() || s1.Fingerprint() == a.Fingerprint() {
		t.Error("different weights, same fingerprint")
	}
	// Round trip through disk keeps the fingerprint of the HF load stable.
	dir := t.TempDir()
	if err := s1.SaveHF(dir, SaveOptions{}); err != nil {
		t.Fatal(err)
	}
	h1, err := Load(dir, LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer h1.Close()
	h2, err := Load(dir, LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer h2.Close()
	if h1.Fingerprint() != h2.Fingerprint() {
		t.Error("HF fingerprint not stable across loads")
	}
}

// TestHalfConversions: every finite half / bfloat16 value survives
// float32 and back bit for bit (the writer's rounding is exact on
// representable values), and rounding is to nearest even.
func TestHalfConversions(t *testing.T) {
	for h := range 1 << 16 {
		u := uint16(h)
		if u&0x7c00 == 0x7c00 && u&0x3ff != 0 {
			continue // NaN payloads are not preserved
		}
		if got := float32ToF16(safetensors.Float16ToFloat32(u)); got != u {
			t.Fatalf("f16 %#04x -> %v -> %#04x", u, safetensors.Float16ToFloat32(u), got)
		}
		f := math.Float32frombits(uint32(u) << 16)
		if u&0x7f80 == 0x7f80 && u&0x7f != 0 {
			continue
		}
		if got := float32ToBF16(f); got != u {
			t.Fatalf("bf16 %#04x -> %v -> %#04x", u, f, got)
		}
	}
	for _, tc := range []struct {
		in   float32
		f16  uint16
		bf16 uint16
	}{
		{1 + 1.0/2048, 0x3c00, 0x3f80},           // halfway, even below
		{1 + 3.0/2048, 0x3c02, 0x3f80},           // halfway, even above
		{65520, 0x7c00, 0x4780},                  // rounds to +Inf in f16
		{-5.960464477539063e-08, 0x8001, 0xb380}, // smallest subnormal
		{1e-9, 0x0000, 0x3089},
	} {
		if got := float32ToF16(tc.in); got != tc.f16 {
			t.Errorf("float32ToF16(%g) = %#04x, want %#04x", tc.in, got, tc.f16)
		}
		if got := float32ToBF16(tc.in); got != tc.bf16 {
			t.Errorf("float32ToBF16(%g) = %#04x, want %#04x", tc.in, got, tc.bf16)
		}
	}
}

// TestLoadFindsHFTokenizer: tokenizer.json (+ tokenizer_config.json) inside
// an HF directory is loaded through package tokenizer.
func TestLoadFindsHFTokenizer(t *testing.T) {
	dir := writeTiny(t, SaveOptions{})
	tj := `{"version":"1.0","added_tokens":[{"id":1,"content":"<s>","special":true},{"id":2,"content":"</s>","special":true}],
		"normalizer":null,"pre_tokenizer":{"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":true},
		"decoder":{"type":"ByteLevel"},"model":{"type":"BPE","vocab":{"<unk>":0,"<s>":1,"</s>":2,"a":3,"b":4,"ab":5},"merges":["a b"]}}`
	os.WriteFile(filepath.Join(dir, "tokenizer.json"), []byte(tj), 0o644)
	os.WriteFile(filepath.Join(dir, "tokenizer_config.json"), []byte(`{"bos_token":"<s>","eos_token":"</s>","add_bos_token":true}`), 0o644)
	m, err := Load(dir, LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if m.Tokenizer == nil {
		t.Fatal("tokenizer.json not loaded")
	}
	if got := m.Tokenizer.Encode("ab"); len(got) != 1 || got[0] != 5 {
		t.Errorf("Encode(ab) = %v, want [5]", got)
	}
	if m.Tokenizer.BOS() != 1 || !m.Tokenizer.AddBOS() {
		t.Errorf("BOS %d AddBOS %v, want 1 true", m.Tokenizer.BOS(), m.Tokenizer.AddBOS())
	}
}
