package model

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/fusionrag/fusionrag/internal/shareddata"
	"github.com/fusionrag/fusionrag/model/tokenizer"
)

// refGGUF is stories260K converted by llama.cpp's own llama2c converter.
func refGGUF(tb testing.TB) string {
	return shareddata.Path(tb, "llamacpp/stories260K.gguf")
}

func readGolden(t *testing.T) goldenFile {
	t.Helper()
	var g goldenFile
	b, err := os.ReadFile(shareddata.Path(t, "models/stories260K/golden_stories260K.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &g); err != nil {
		t.Fatal(err)
	}
	return g
}

// tokenizerTexts is a spread of texts for id-for-id tokenizer comparisons.
var tokenizerTexts = []string{
	"Once upon a time", "Once upon a time, there was a little girl named Lily. She loved to play outside",
	"", " ", "  two  spaces  ", "\n", "a\nb\n\nc", "Hello, World! 123 4567.", "ünïcödé café naïve",
	"日本語のテキスト", "emoji 🙂🚀 mix", "\t tabs\tand  \r\n crlf", "x", "The end.", "<0x41> literal", "\u00a0nbsp",
	"He said: \"Lily, come here!\" and she ran.", "zzzzzzzzzzzzzz qqq", "a  b   c    d",
}

// TestGGUFReferenceStories260K loads the GGUF that llama.cpp's converter
// wrote and checks it against the golden logits (1e-3, as the llama2.c
// checkpoint: the same fp32 weights, eps stored as float32 and read back as
// 1e-5), the golden greedy continuation, and the tokenizer id for id against
// tok512.bin.
func TestGGUFReferenceStories260K(t *testing.T) {
	path := refGGUF(t)
	m0, err := Load(path, LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if m0.Config.MaxPositions != 128 {
		t.Errorf("MaxPositions without override = %d, want 128 (llama.context_length)", m0.Config.MaxPositions)
	}
	defer m0.Close()
	m, err := Load(path, LoadOptions{MaxPositions: 512})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	ref := loadStories(t)
	c, rc := m.Config, ref.Config
	rc.TiedEmbeddings = false // the converter writes output.weight, a copy of token_embd
	if fmt.Sprint(c) != fmt.Sprint(rc) {
		t.Errorf("config:\n got %+v\nwant %+v", c, rc)
	}
	if m.Tokenizer == nil {
		t.Fatal("no tokenizer from the GGUF metadata")
	}
	g := readGolden(t)
	for _, gc := range g.Cases {
		t.Run(gc.Prompt, func(t *testing.T) {
			if gc.Prompt != "" {
				got := append([]int32{m.Tokenizer.BOS()}, m.Tokenizer.Encode(gc.Prompt)...)
				if !slices.Equal(got, gc.PromptTokens) {
					t.Errorf("Encode(%q) = %v, golden %v", gc.Prompt, got, gc.PromptTokens)
				}
			}
			n := len(gc.PromptTokens)
			r, err := m.Forward(context.Background(), nil, Batch{Tokens: gc.PromptTokens, Pos: seq(0, n)}, ForwardOptions{Logits: allRows(n)})
			if err != nil {
				t.Fatal(err)
			}
			var worst float64
			for i := range n {
				for v, want := range gc.Logits[i] {
					worst = max(worst, math.Abs(float64(r.Logits[i][v])-want))
				}
			}
			if worst > 1e-3 {
				t.Errorf("max |logit - golden| = %.3g > 1e-3", worst)
			}
			t.Logf("max |logit - golden| = %.2g", worst)
			if got := greedy(t, m, gc.PromptTokens, len(gc.GreedyTokens)); !slices.Equal(got, gc.GreedyTokens) {
				t.Errorf("greedy:\n got %v\nwant %v", got, gc.GreedyTokens)
			}
		})
	}
	for _, text := range tokenizerTexts {
		got, want := m.Tokenizer.Encode(text), ref.Tokenizer.Encode(text)
		if !slices.Equal(got, want) {
			t.Errorf("Encode(%q):\n gguf  %v\n tok512 %v", text, got, want)
		}
		if d, w := m.Tokenizer.Decode(append([]int32{1}, got...)), ref.Tokenizer.Decode(append([]int32{1}, want...)); d != w {
			t.Errorf("Decode(%q) = %q, tok512 %q", text, d, w)
		}
	}
	if !m.Tokenizer.AddBOS() || m.Tokenizer.BOS() != 1 || !slices.Equal(m.Tokenizer.EOS(), []int32{2}) {
		t.Errorf("AddBOS %v BOS %d EOS %v, want true 1 [2]", m.Tokenizer.AddBOS(), m.Tokenizer.BOS(), m.Tokenizer.EOS())
	}
	// Special tokens in text are matched (llama-server tokenizes prompts
	// with parse_special) and the text after them gets the dummy prefix.
	if got, want := m.Tokenizer.Encode("</s>Once"), append([]int32{2}, m.Tokenizer.Encode("Once")...); !slices.Equal(got, want) {
		t.Errorf("Encode(\"</s>Once\") = %v, want %v", got, want)
	}
	// The prompt-too-long error names the override.
	_, err = m0.Generate(context.Background(), make([]int32, 200), 1, Greedy(), func(int32) bool { return true })
	if err == nil || !strings.Contains(err.Error(), "MaxPositions") {
		t.Errorf("a 200-token prompt on a 128-position model: error %v, want one naming the MaxPositions override", err)
	}
}

// TestGGUFWriteStories260K writes the llama2.c model as GGUF and loads it
// back: F32 logits bit-identical, F16 within 0.05 (every matrix rounded to
// 11 significant bits; logits of magnitude ~15). The written tokenizer
// metadata must equal what llama.cpp's llama2c converter wrote.
func TestGGUFWriteStories260K(t *testing.T) {
	ref := loadStories(t)
	toks := randomTokens(ref, 64, 3)
	want := fullForward(t, ref, toks, 0).Logits
	refFile := mustParseGGUFFile(t, refGGUF(t))
	for _, tc := range []struct {
		dtype string
		tol   float64
	}{{"F32", 0}, {"F16", 0.05}} {
		t.Run(tc.dtype, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "s.gguf")
			if err := ref.WriteGGUF(path, GGUFOptions{DType: tc.dtype}); err != nil {
				t.Fatal(err)
			}
			m, err := Load(path, LoadOptions{})
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			if fmt.Sprint(m.Config) != fmt.Sprint(ref.Config) {
				t.Errorf("config:\n got %+v\nwant %+v", m.Config, ref.Config)
			}
			got := fullForward(t, m, toks, 0).Logits
			d := maxDiff(t, "logits", got, want)
			if tc.tol == 0 && d != 0 {
				t.Errorf("F32 round trip: logits differ (max rel %.3g), want bit-identical", d)
			}
			checkTol(t, tc.dtype+" logits vs llama2.c", d, max(tc.tol, 0))
			for _, text := range tokenizerTexts {
				if a, b := m.Tokenizer.Encode(text), ref.Tokenizer.Encode(text); !slices.Equal(a, b) {
					t.Errorf("Encode(%q) = %v, tok512 %v", text, a, b)
				}
			}
			f := mustParseGGUFFile(t, path)
			for _, k := range []string{"tokenizer.ggml.model", "tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type",
				"tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.unknown_token_id",
				"llama.embedding_length", "llama.feed_forward_length", "llama.attention.head_count", "llama.attention.head_count_kv",
				"llama.block_count", "llama.rope.dimension_count", "llama.attention.layer_norm_rms_epsilon"} {
				if a, b := fmt.Sprint(f.get(k)), fmt.Sprint(refFile.get(k)); a != b {
					t.Errorf("%s differs from llama.cpp's converter:\n ours %.200s\n theirs %.200s", k, a, b)
				}
			}
			// Same weights as llama.cpp's file (F32), tensor for tensor.
			if tc.dtype == "F32" {
				for _, rt := range refFile.Tensors {
					ot, ok := f.tensor(rt.Name)
					if !ok {
						if rt.Name == "output.weight" {
							continue // tied: we omit the copy
						}
						t.Errorf("tensor %s missing", rt.Name)
						continue
					}
					if !slices.Equal(ot.Dims, rt.Dims) || ot.Type != rt.Type || !bytes.Equal(ot.Data, rt.Data) {
						t.Errorf("tensor %s: ne %v %s vs llama.cpp's %v %s, bytes equal %v", rt.Name, ot.Dims, ot.Type, rt.Dims, rt.Type, bytes.Equal(ot.Data, rt.Data))
					}
				}
			}
		})
	}
}

func mustParseGGUFFile(t *testing.T, path string) *ggufFile {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	f, err := parseGGUF(b)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// TestGGUFRoundTripHF writes synthetic HF models (rotate_half layout) as
// GGUF and loads them back: llama gets wq/wk permuted into adjacent pairs
// (loads with RopeInterleaved), qwen2 stays rotate_half with biases. The
// permutation reorders the terms of q·k, so logits agree to 1e-4 relative,
// not bitwise (measured in the log); the tokenizer ids must be equal.
func TestGGUFRoundTripHF(t *testing.T) {
	base := Config{Arch: ArchLlama, Dim: 64, HiddenDim: 96, Layers: 2, Heads: 4, KVHeads: 2, HeadDim: 16,
		Vocab: 400, MaxPositions: 256, RopeTheta: 10000, NormEps: 1e-6, TiedEmbeddings: false, BOS: 1, EOS: []int32{2}}
	qwen := base
	qwen.Arch, qwen.QKVBias, qwen.KVHeads, qwen.RopeTheta = ArchQwen2, true, 1, 1e6
	mistral := base
	mistral.Arch, mistral.TiedEmbeddings = ArchMistral, true
	for i, tc := range []struct {
		name        string
		cfg         Config
		interleaved bool
	}{{"llama", base, true}, {"qwen2", qwen, false}, {"mistral", mistral, true}} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := WriteSynthetic(dir, tc.cfg, uint64(i+7), SaveOptions{}); err != nil {
				t.Fatal(err)
			}
			src, err := Load(dir, LoadOptions{})
			if err != nil {
				t.Fatal(err)
			}
			defer src.Close()
			path := filepath.Join(dir, "m.gguf")
			if err := src.WriteGGUF(path, GGUFOptions{}); err != nil {
				t.Fatal(err)
			}
			m, err := Load(path, LoadOptions{})
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			if m.Config.RopeInterleaved != tc.interleaved || m.Config.QKVBias != tc.cfg.QKVBias {
				t.Errorf("RopeInterleaved %v QKVBias %v, want %v %v", m.Config.RopeInterleaved, m.Config.QKVBias, tc.interleaved, tc.cfg.QKVBias)
			}
			wantCfg := src.Config
			wantCfg.RopeInterleaved = tc.interleaved
			if tc.cfg.Arch == ArchMistral {
				wantCfg.Arch = ArchLlama // GGUF has no separate mistral arch
			}
			if fmt.Sprint(m.Config) != fmt.Sprint(wantCfg) {
				t.Errorf("config:\n got %+v\nwant %+v", m.Config, wantCfg)
			}
			toks := randomTokens(src, 40, 5)
			d := maxDiff(t, "logits", fullForward(t, m, toks, 0).Logits, fullForward(t, src, toks, 0).Logits)
			checkTol(t, tc.name+" HF -> GGUF logits", d, 1e-4)
			// The synthetic llama2.c vocabulary has no single-letter pieces,
			// where llama.cpp's SPM rules (which GGUFSPM follows) and run.c
			// differ (docs/traps.md), so the ids are compared GGUF to GGUF:
			// the loaded tokenizer written again and reloaded.
			path2 := filepath.Join(dir, "m2.gguf")
			if err := m.WriteGGUF(path2, GGUFOptions{DType: "F16", Alignment: 64}); err != nil {
				t.Fatal(err)
			}
			m2, err := Load(path2, LoadOptions{})
			if err != nil {
				t.Fatal(err)
			}
			defer m2.Close()
			if m2.Tokenizer.Fingerprint() != m.Tokenizer.Fingerprint() {
				t.Errorf("tokenizer fingerprint changed over GGUF -> GGUF")
			}
			for _, text := range tokenizerTexts {
				if a, b := m2.Tokenizer.Encode(text), m.Tokenizer.Encode(text); !slices.Equal(a, b) {
					t.Errorf("Encode(%q) = %v, first GGUF %v", text, a, b)
				}
			}
		})
	}
}

// TestGGUFTensorTypes checks the dequantisation of each type against values
// computed by hand, and that unsupported types are refused by name.
func TestGGUFTensorTypes(t *testing.T) {
	le := binary.LittleEndian
	f16 := func(v float32) []byte { return le.AppendUint16(nil, float32ToF16(v)) }
	var q8 []byte
	var wantQ8 []float32
	for blk, scale := range []float32{0.5, -0.25} {
		q8 = append(q8, f16(scale)...)
		for i := range 32 {
			v := int8(i*8 - 128 + blk)
			q8 = append(q8, byte(v))
			wantQ8 = append(wantQ8, scale*float32(v))
		}
	}
	bf := []byte{}
	for _, v := range []float32{1, -2.5, 3.140625} {
		bf = le.AppendUint16(bf, uint16(math.Float32bits(v)>>16))
	}
	var f16s []byte
	for _, v := range []float32{1, -2.5, 0.099975586} {
		f16s = append(f16s, f16(v)...)
	}
	cases := []struct {
		t    ggufTensor
		want []float32
		err  error
	}{
		{ggufTensor{Name: "q8", Dims: []int64{64}, Type: ggmlQ8_0, Data: q8}, wantQ8, nil},
		{ggufTensor{Name: "bf16", Dims: []int64{3}, Type: ggmlBF16, Data: bf}, []float32{1, -2.5, 3.140625}, nil},
		{ggufTensor{Name: "f16", Dims: []int64{3}, Type: ggmlF16, Data: f16s}, []float32{1, -2.5, 0.099975586}, nil},
		{ggufTensor{Name: "f32", Dims: []int64{2}, Type: ggmlF32, Data: encodeFloats([]float32{7, -1e-30}, "F32")}, []float32{7, -1e-30}, nil},
		{ggufTensor{Name: "q4", Dims: []int64{32}, Type: 2, Data: make([]byte, 18)}, nil, ErrUnsupported},
		{ggufTensor{Name: "q8-short", Dims: []int64{64}, Type: ggmlQ8_0, Data: q8[:40]}, nil, ErrFormat},
		{ggufTensor{Name: "q8-odd", Dims: []int64{16, 2}, Type: ggmlQ8_0, Data: q8[:34]}, nil, ErrFormat},
	}
	for _, c := range cases {
		got, err := ggufFloat32s(&c.t)
		if c.err != nil {
			if !errors.Is(err, c.err) {
				t.Errorf("%s: err %v, want %v", c.t.Name, err, c.err)
			} else if c.t.Type == 2 && !strings.Contains(err.Error(), "Q4_0") {
				t.Errorf("%s: error %q does not name the type", c.t.Name, err)
			}
			continue
		}
		if err != nil || !slices.Equal(got, c.want) {
			t.Errorf("%s: got %v, %v; want %v", c.t.Name, got, err, c.want)
		}
	}
}

// tinyGGUF is a small valid GGUF model (with a tokenizer) for corruption
// tests and the fuzz corpus.
func tinyGGUF(tb testing.TB) []byte {
	tb.Helper()
	cfg := Config{Arch: ArchQwen2, Dim: 8, HiddenDim: 16, Layers: 1, Heads: 2, KVHeads: 1, HeadDim: 4,
		Vocab: 260, MaxPositions: 64, RopeTheta: 10000, NormEps: 1e-6, QKVBias: true, BOS: 1, EOS: []int32{2}}
	m, err := Synthetic(cfg, 1)
	if err != nil {
		tb.Fatal(err)
	}
	tok, err := tokenizer.ParseLlama2c(syntheticTokenizer(cfg.Vocab))
	if err != nil {
		tb.Fatal(err)
	}
	m.Tokenizer = tok
	kv, tensors, align, err := m.ggufContents(GGUFOptions{DType: "F16"})
	if err != nil {
		tb.Fatal(err)
	}
	var buf bytes.Buffer
	if err := writeGGUF(&buf, kv, tensors, align); err != nil {
		tb.Fatal(err)
	}
	return buf.Bytes()
}

// TestGGUFCorrupt: every truncation and a set of targeted corruptions of a
// valid file give an error, never a panic.
func TestGGUFCorrupt(t *testing.T) {
	good := tinyGGUF(t)
	if _, _, err := parseGGUFModel(good, LoadOptions{}); err != nil {
		t.Fatalf("tiny GGUF does not load: %v", err)
	}
	for n := 0; n < len(good); n += max(1, n/50) {
		if _, _, err := parseGGUFModel(good[:n], LoadOptions{}); err == nil {
			t.Fatalf("truncated to %d of %d bytes: no error", n, len(good))
		}
	}
	le := binary.LittleEndian
	mut := func(f func(b []byte)) []byte {
		b := slices.Clone(good)
		f(b)
		return b
	}
	for name, b := range map[string][]byte{
		"magic":         mut(func(b []byte) { b[0] = 'X' }),
		"version":       mut(func(b []byte) { le.PutUint32(b[4:], 99) }),
		"huge tensors":  mut(func(b []byte) { le.PutUint64(b[8:], 1<<62) }),
		"huge kv":       mut(func(b []byte) { le.PutUint64(b[16:], 1<<62) }),
		"huge key len":  mut(func(b []byte) { le.PutUint64(b[24:], 1<<62) }),
		"bad type":      mut(func(b []byte) { le.PutUint32(b[24+8+len("general.architecture"):], 77) }),
		"arch":          bytes.Replace(good, []byte("qwen2"), []byte("gpt99"), 1),
		"tensor offset": mut(func(b []byte) { corruptFirstTensorOffset(t, b, 1<<50) }),
		"misaligned":    mut(func(b []byte) { corruptFirstTensorOffset(t, b, 3) }),
	} {
		_, _, err := parseGGUFModel(b, LoadOptions{})
		if err == nil {
			t.Errorf("%s: no error", name)
		} else if !errors.Is(err, ErrFormat) && !errors.Is(err, ErrUnsupported) {
			t.Errorf("%s: error %v is neither ErrFormat nor ErrUnsupported", name, err)
		}
	}
}

// corruptFirstTensorOffset rewrites the offset of the last tensor info
// (located by re-parsing) to off.
func corruptFirstTensorOffset(t *testing.T, b []byte, off uint64) {
	f, err := parseGGUF(b)
	if err != nil {
		t.Fatal(err)
	}
	last := f.Tensors[len(f.Tensors)-1]
	name := []byte(last.Name)
	i := bytes.LastIndex(b, name)
	p := i + len(name) + 4 + 8*len(last.Dims) + 4
	binary.LittleEndian.PutUint64(b[p:], off)
}

// FuzzGGUF: parsing and binding arbitrary bytes never panics, and whatever
// loads has a valid config.
func FuzzGGUF(f *testing.F) {
	good := tinyGGUF(f)
	f.Add(good)
	f.Add(good[:len(good)/2])
	f.Add([]byte("GGUF\x03\x00\x00\x00"))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, tok, err := parseGGUFModel(b, LoadOptions{})
		if err != nil {
			return
		}
		if err := m.Config.Validate(); err != nil {
			t.Fatalf("loaded with invalid config: %v", err)
		}
		if tok != nil {
			tok.Encode("hello world")
		}
	})
}

// quantizeQ8_0 is ggml's quantize_row_q8_0_ref: per block of 32, d =
// max|x|/127 stored as f16, q = round(x/d).
func quantizeQ8_0(x []float32) []byte {
	var out []byte
	for b := 0; b < len(x); b += q8BlockValues {
		blk := x[b : b+q8BlockValues]
		var amax float32
		for _, v := range blk {
			amax = max(amax, float32(math.Abs(float64(v))))
		}
		d := amax / 127
		id := float32(0)
		if d != 0 {
			id = 1 / d
		}
		out = binary.LittleEndian.AppendUint16(out, float32ToF16(d))
		for _, v := range blk {
			out = append(out, byte(int8(math.Round(float64(v*id)))))
		}
	}
	return out
}

// writeGGUFQ8 writes m as GGUF with every matrix whose rows are a multiple
// of 32 values quantised to Q8_0 (the others F32), as llama-quantize's
// fallback does for rows that do not fit.
func writeGGUFQ8(t *testing.T, m *Model, path string) {
	t.Helper()
	kv, tensors, align, err := m.ggufContents(GGUFOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range tensors {
		tt := &tensors[i]
		if len(tt.Dims) == 2 && tt.Dims[0]%q8BlockValues == 0 {
			f, err := ggufFloat32s(tt)
			if err != nil {
				t.Fatal(err)
			}
			tt.Data, tt.Type = quantizeQ8_0(f), ggmlQ8_0
		}
	}
	for i := range kv {
		if kv[i].Key == "general.file_type" {
			kv[i].Value = uint32(7) // LLAMA_FTYPE_MOSTLY_Q8_0
		}
	}
	var buf bytes.Buffer
	if err := writeGGUF(&buf, kv, tensors, align); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestGGUFQ8_0Model loads stories260K with its matrices in Q8_0 (all but
// ffn_down, whose 172-value rows do not divide into blocks): logits within
// 0.05 (relative to the largest logit) of the fp32 model's: each weight is
// rounded to 1/254 of its block's largest magnitude (measured 0.015).
func TestGGUFQ8_0Model(t *testing.T) {
	ref := loadStories(t)
	path := filepath.Join(t.TempDir(), "q8.gguf")
	writeGGUFQ8(t, ref, path)
	m, err := Load(path, LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	toks := randomTokens(ref, 48, 9)
	checkTol(t, "Q8_0 logits vs fp32", maxDiff(t, "logits", fullForward(t, m, toks, 0).Logits, fullForward(t, ref, toks, 0).Logits), 0.05)
	f := mustParseGGUFFile(t, path)
	if tt, _ := f.tensor("blk.0.attn_q.weight"); tt.Type != ggmlQ8_0 {
		t.Errorf("attn_q written as %s, want Q8_0", tt.Type)
	}
}
