package model

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/fusionrag/fusionrag/internal/skiplog"
)

// llamaServerBin finds llama-server: $FUSIONRAG_LLAMA_SERVER, else PATH.
func llamaServerBin(t *testing.T) string {
	if p := os.Getenv("FUSIONRAG_LLAMA_SERVER"); p != "" {
		return p
	}
	p, err := exec.LookPath("llama-server")
	if err != nil {
		skiplog.Record(skiplog.LlamaServer, t.Name())
		t.Skip("SKIPPING: no llama-server (set FUSIONRAG_LLAMA_SERVER to the binary or put llama-server on PATH) — GGUF files written by WriteGGUF are not checked against llama.cpp")
	}
	return p
}

// llamaServer is a running llama-server on a loopback port.
type llamaServer struct {
	url string
	cmd *exec.Cmd
	log *bytes.Buffer
}

func startLlamaServer(t *testing.T, bin, model string) *llamaServer {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	s := &llamaServer{url: fmt.Sprintf("http://127.0.0.1:%d", port), log: &bytes.Buffer{}}
	s.cmd = exec.Command(bin, "-m", model, "-c", "512", "--temp", "0", "-np", "1", "-t", "1",
		"-ctk", "f32", "-ctv", "f32", "-fa", "off",
		// b10573's CPU repacking of Q8_0 weights hangs at startup on this
		// small model (after "threadpool init"); repacking is only a layout.
		"--no-repack",
		"--host", "127.0.0.1", "--port", fmt.Sprint(port))
	s.cmd.Stdout, s.cmd.Stderr = s.log, s.log
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { s.cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		s.cmd.Process.Kill()
		<-exited
	})
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		r, err := http.Get(s.url + "/health")
		if err == nil {
			r.Body.Close()
			if r.StatusCode == 200 {
				return s
			}
		}
		select {
		case <-exited:
			t.Fatalf("llama-server exited on %s; log:\n%s", model, tail(s.log.String(), 3000))
		case <-time.After(200 * time.Millisecond):
		}
	}
	t.Fatalf("llama-server did not become healthy on %s; log:\n%s", model, tail(s.log.String(), 3000))
	return nil
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

func (s *llamaServer) post(t *testing.T, path string, req, resp any) {
	t.Helper()
	b, _ := json.Marshal(req)
	r, err := http.Post(s.url+path, "application/json", bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Body.Close()
	if r.StatusCode != 200 {
		var msg bytes.Buffer
		msg.ReadFrom(r.Body)
		t.Fatalf("POST %s: %s: %s", path, r.Status, msg.String())
	}
	if err := json.NewDecoder(r.Body).Decode(resp); err != nil {
		t.Fatal(err)
	}
}

// completion is the part of llama-server's /completion answer compared.
type completion struct {
	Tokens []int32 `json:"tokens"`
	Probs  []struct {
		ID      int32   `json:"id"`
		Logprob float64 `json:"logprob"`
		Top     []struct {
			ID      int32   `json:"id"`
			Logprob float64 `json:"logprob"`
		} `json:"top_logprobs"`
	} `json:"completion_probabilities"`
}

// TestGGUFInLlamaServer writes models with WriteGGUF, serves them with an
// unmodified llama-server and compares: the prompt's tokenization
// (/tokenize), the greedy continuation of 40 tokens and the top-5 log
// probabilities at every generated step (within 2e-3 for F32: llama.cpp's
// fp32 kernels sum in another order; the server runs with an f32 KV cache
// and flash attention off, since its default f16 cache and its CPU flash
// attention, which rounds to f16, each move log probabilities by ~1e-2). Covers the llama2.c model (F32 and F16,
// adjacent-pair RoPE) and synthetic HF llama (rotate_half permuted into
// llama.cpp's layout) and qwen2 (NEOX, biases) models.
func TestGGUFInLlamaServer(t *testing.T) {
	bin := llamaServerBin(t)
	ref := loadStories(t)
	dir := t.TempDir()
	type tcase struct {
		name   string
		m      *Model
		dtype  string
		prompt string
		tol    float64
		ban    bool // ban the byte tokens 3..258 (random models emit invalid UTF-8, which llama-server refuses)
	}
	// F16: llama.cpp multiplies F16 weights with activations rounded to
	// F16 (ggml's vec_dot_type), we in fp32, hence the wider bound.
	cases := []tcase{{"stories260K-F32", ref, "F32", "Once upon a time, there was a little girl named Lily.", 2e-3, false},
		{"stories260K-F16", ref, "F16", "Once upon a time", 0.05, false},
		// Q8_0 (written by writeGGUFQ8): llama.cpp also rounds the
		// activations to Q8_0 blocks before the dot products, a rounding
		// as large as the weights' (our Q8_0 model is ~0.2 from fp32 in
		// logits, TestGGUFQ8_0Model); measured 0.18, and the 40 greedy
		// tokens must still agree. A wrong block layout gives garbage.
		{"stories260K-Q8_0", ref, "Q8_0", "Once upon a time", 0.3, false}}
	base := Config{Arch: ArchLlama, Dim: 64, HiddenDim: 96, Layers: 2, Heads: 4, KVHeads: 2, HeadDim: 16,
		Vocab: 400, MaxPositions: 512, RopeTheta: 10000, NormEps: 1e-5, BOS: 1, EOS: []int32{2}}
	qwen := base
	qwen.Arch, qwen.QKVBias, qwen.KVHeads, qwen.RopeTheta, qwen.TiedEmbeddings = ArchQwen2, true, 1, 1e6, true
	for i, s := range []struct {
		name string
		cfg  Config
	}{{"synthetic-llama-hf", base}, {"synthetic-qwen2-hf", qwen}} {
		d := filepath.Join(dir, s.name)
		if err := WriteSynthetic(d, s.cfg, uint64(40+i), SaveOptions{}); err != nil {
			t.Fatal(err)
		}
		m, err := Load(d, LoadOptions{})
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		cases = append(cases, tcase{s.name, m, "F32", "the cat sat on the mat and then it ran", 2e-3, true})
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dir, tc.name+".gguf")
			if tc.dtype == "Q8_0" {
				writeGGUFQ8(t, tc.m, path)
			} else if err := tc.m.WriteGGUF(path, GGUFOptions{DType: tc.dtype}); err != nil {
				t.Fatal(err)
			}
			ours, err := Load(path, LoadOptions{})
			if err != nil {
				t.Fatal(err)
			}
			defer ours.Close()
			srv := startLlamaServer(t, bin, path)
			for _, text := range append([]string{tc.prompt}, tokenizerTexts...) {
				var tr struct {
					Tokens []int32 `json:"tokens"`
				}
				srv.post(t, "/tokenize", map[string]any{"content": text, "add_special": true}, &tr)
				want := ours.Tokenizer.Encode(text)
				if ours.Tokenizer.AddBOS() {
					want = append([]int32{ours.Tokenizer.BOS()}, want...)
				}
				if !slices.Equal(tr.Tokens, want) {
					t.Errorf("tokenize %q:\n llama-server %v\n ours         %v", text, tr.Tokens, want)
				}
			}
			prompt := append([]int32{ours.Tokenizer.BOS()}, ours.Tokenizer.Encode(tc.prompt)...)
			var c completion
			req := map[string]any{"prompt": prompt, "n_predict": 40, "temperature": 0,
				"cache_prompt": false, "n_probs": 5, "return_tokens": true, "samplers": []string{"top_k"}, "top_k": 1}
			var banned []int32
			if tc.ban {
				var bias [][]any
				for id := int32(3); id < 259; id++ {
					banned = append(banned, id)
					bias = append(bias, []any{id, false})
				}
				req["logit_bias"] = bias
			}
			srv.post(t, "/completion", req, &c)
			got := greedyAll(t, ours, prompt, len(c.Tokens), banned)
			n := min(len(got), len(c.Tokens))
			if n < min(40, len(c.Tokens)) || !slices.Equal(got[:n], c.Tokens[:n]) {
				t.Errorf("greedy continuation:\n llama-server %v\n ours         %v", c.Tokens, got)
			}
			// Our log-softmax at each step vs the server's top-5.
			var worst float64
			cache := NewCache(ours.Config, len(prompt)+len(c.Tokens))
			seqIDs := prompt
			var last []float32
			for step := 0; step <= len(c.Probs) && step < len(c.Tokens)+1; step++ {
				var r *ForwardResult
				var err error
				if step == 0 {
					r, err = ours.Forward(context.Background(), cache, Batch{Tokens: prompt, Pos: seq(0, len(prompt))}, ForwardOptions{Logits: []int{len(prompt) - 1}, Append: true})
				} else {
					tok := c.Tokens[step-1]
					r, err = ours.Forward(context.Background(), cache, Batch{Tokens: []int32{tok}, Pos: []int32{int32(len(seqIDs))}}, ForwardOptions{Logits: []int{0}, Append: true})
					seqIDs = append(seqIDs, tok)
				}
				if err != nil {
					t.Fatal(err)
				}
				last = r.Logits[0]
				if step >= len(c.Probs) {
					break
				}
				lse := logSumExp(last)
				for _, top := range c.Probs[step].Top {
					d := math.Abs(float64(last[top.ID]) - lse - top.Logprob)
					worst = max(worst, d)
				}
			}
			if worst > tc.tol {
				t.Errorf("max |logprob ours - llama-server| over top-5 of %d steps = %.3g > %g", len(c.Probs), worst, tc.tol)
			}
			t.Logf("%d greedy tokens equal; max |logprob diff| over top-5 of %d steps: %.2g", n, len(c.Probs), worst)
		})
	}
}

// greedyAll is greedy decoding for up to steps tokens without stopping at
// BOS/EOS (the server stops at its end-of-generation tokens; the caller
// compares the common prefix).
func greedyAll(t *testing.T, m *Model, prompt []int32, steps int, banned []int32) []int32 {
	t.Helper()
	ctx := context.Background()
	cache := NewCache(m.Config, len(prompt)+steps+1)
	r, err := m.Forward(ctx, cache, Batch{Tokens: prompt, Pos: seq(0, len(prompt))}, ForwardOptions{Logits: []int{len(prompt) - 1}, Append: true})
	if err != nil {
		t.Fatal(err)
	}
	var out []int32
	for len(out) < steps {
		for _, id := range banned {
			r.Logits[0][id] = float32(math.Inf(-1))
		}
		next := Argmax(r.Logits[0])
		out = append(out, next)
		if slices.Contains(m.Config.EOS, next) {
			break
		}
		r, err = m.Forward(ctx, cache, Batch{Tokens: []int32{next}, Pos: []int32{int32(len(prompt) + len(out) - 1)}}, ForwardOptions{Logits: []int{0}, Append: true})
		if err != nil {
			t.Fatal(err)
		}
	}
	return out
}

func logSumExp(x []float32) float64 {
	m := math.Inf(-1)
	for _, v := range x {
		m = max(m, float64(v))
	}
	var s float64
	for _, v := range x {
		s += math.Exp(float64(v) - m)
	}
	return m + math.Log(s)
}

// byteLevelTokenizerJSON renders a small byte-level BPE tokenizer.json (the
// 256 byte symbols, a few merges, three special tokens) with the GGUF
// "qwen2" split regex, for a synthetic model of vocab >= 256+merges+3.
func byteLevelTokenizerJSON(merges [][2]string) (tokenizerJSON, configJSON []byte) {
	var b2u [256]string
	n := 0
	for b := range 256 {
		if (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF) {
			b2u[b] = string(rune(b))
		} else {
			b2u[b] = string(rune(256 + n))
			n++
		}
	}
	vocab := map[string]int{}
	for b := range 256 {
		vocab[b2u[b]] = b
	}
	var ms []string
	enc := func(s string) string {
		var out string
		for _, c := range []byte(s) {
			out += b2u[c]
		}
		return out
	}
	for _, m := range merges {
		a, b := enc(m[0]), enc(m[1])
		ms = append(ms, a+" "+b)
		vocab[a+b] = len(vocab)
	}
	v := len(vocab)
	tj, _ := json.Marshal(map[string]any{
		"added_tokens": []map[string]any{{"id": v, "content": "<|endoftext|>", "special": true},
			{"id": v + 1, "content": "<|im_start|>", "special": true}, {"id": v + 2, "content": "<|im_end|>", "special": true}},
		"pre_tokenizer": map[string]any{"type": "Sequence", "pretokenizers": []any{
			map[string]any{"type": "Split", "pattern": map[string]string{"Regex": `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`}, "behavior": "Isolated", "invert": false},
			map[string]any{"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false}}},
		"decoder": map[string]any{"type": "ByteLevel"},
		"model":   map[string]any{"type": "BPE", "vocab": vocab, "merges": ms},
	})
	cj, _ := json.Marshal(map[string]any{"bos_token": nil, "eos_token": "<|im_end|>", "add_bos_token": false,
		"chat_template": "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"})
	return tj, cj
}

// TestGGUFBPEInLlamaServer: a Qwen2-shaped model with a byte-level BPE
// tokenizer written as GGUF ("gpt2", pre "qwen2") loads in llama-server,
// which tokenizes like our loader of the same file and like the source HF
// tokenizer, special tokens included.
func TestGGUFBPEInLlamaServer(t *testing.T) {
	bin := llamaServerBin(t)
	merges := [][2]string{{" ", "t"}, {"h", "e"}, {" t", "he"}, {" ", "c"}, {"a", "t"}, {" c", "at"}, {" ", "s"}, {" s", "at"}, {"o", "n"}, {" ", "on"}}
	tj, cj := byteLevelTokenizerJSON(merges)
	cfg := Config{Arch: ArchQwen2, Dim: 64, HiddenDim: 96, Layers: 2, Heads: 4, KVHeads: 2, HeadDim: 16,
		Vocab: 272, MaxPositions: 512, RopeTheta: 1e6, NormEps: 1e-6, QKVBias: true, TiedEmbeddings: true, BOS: -1, EOS: []int32{268}}
	dir := t.TempDir()
	if err := WriteSynthetic(dir, cfg, 3, SaveOptions{}); err != nil {
		t.Fatal(err)
	}
	os.Remove(filepath.Join(dir, SyntheticTokenizerFile))
	if err := os.WriteFile(filepath.Join(dir, "tokenizer.json"), tj, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "tokenizer_config.json"), cj, 0o644); err != nil {
		t.Fatal(err)
	}
	src, err := Load(dir, LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	path := filepath.Join(dir, "bpe.gguf")
	if err := src.WriteGGUF(path, GGUFOptions{}); err != nil {
		t.Fatal(err)
	}
	ours, err := Load(path, LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer ours.Close()
	srv := startLlamaServer(t, bin, path)
	texts := append([]string{"the cat sat on the mat", "<|im_start|>user\nthe cat<|im_end|>\n", "I'm 12345 cats!!\n\n  ok"}, tokenizerTexts...)
	for _, text := range texts {
		var tr struct {
			Tokens []int32 `json:"tokens"`
		}
		srv.post(t, "/tokenize", map[string]any{"content": text, "add_special": true}, &tr)
		got, want := ours.Tokenizer.Encode(text), src.Tokenizer.Encode(text)
		if !slices.Equal(got, want) || !slices.Equal(tr.Tokens, got) {
			t.Errorf("tokenize %q:\n llama-server %v\n gguf loader  %v\n HF source    %v", text, tr.Tokens, got, want)
		}
	}
}
