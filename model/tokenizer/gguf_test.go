package tokenizer

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
)

// ggufMap is a GGUFMeta over a map (what package model hands over).
type ggufMap map[string]any

func (m ggufMap) Get(k string) any { return m[k] }

func metaOf(kv []GGUFKV) ggufMap {
	m := ggufMap{}
	for _, e := range kv {
		m[e.Key] = e.Value
	}
	return m
}

// byteLevelBPE builds a small byte-level BPE tokenizer.json: the 256 byte
// symbols, merges learned greedily from a sample text, a few special
// tokens, and the given split regex (a GGUF pre-tokenizer's).
func byteLevelBPE(t *testing.T, pattern string, ignoreMerges bool) *HF {
	t.Helper()
	vocab := map[string]int{}
	var order []string
	add := func(s string) {
		if _, ok := vocab[s]; !ok {
			vocab[s] = len(order)
			order = append(order, s)
		}
	}
	for b := range 256 {
		add(byteLevelStrings[b])
	}
	sample := "the cat sat on the mat. the dog's bone; 12345 apples and 678 pears\n\nThe end."
	words := [][]string{}
	for _, w := range strings.Fields(sample) {
		var syms []string
		for _, c := range []byte(" " + w) {
			syms = append(syms, byteLevelStrings[c])
		}
		words = append(words, syms)
	}
	var merges []string
	for range 60 { // most frequent adjacent pair, 60 times
		counts := map[[2]string]int{}
		for _, w := range words {
			for i := 0; i+1 < len(w); i++ {
				counts[[2]string{w[i], w[i+1]}]++
			}
		}
		var best [2]string
		bc := 0
		keys := make([][2]string, 0, len(counts))
		for k := range counts {
			keys = append(keys, k)
		}
		slices.SortFunc(keys, func(a, b [2]string) int { return strings.Compare(a[0]+"\x00"+a[1], b[0]+"\x00"+b[1]) })
		for _, k := range keys {
			if counts[k] > bc {
				best, bc = k, counts[k]
			}
		}
		if bc < 2 {
			break
		}
		merges = append(merges, best[0]+" "+best[1])
		add(best[0] + best[1])
		for wi, w := range words {
			var out []string
			for i := 0; i < len(w); i++ {
				if i+1 < len(w) && w[i] == best[0] && w[i+1] == best[1] {
					out = append(out, w[i]+w[i+1])
					i++
				} else {
					out = append(out, w[i])
				}
			}
			words[wi] = out
		}
	}
	n := len(order)
	tj, _ := json.Marshal(map[string]any{
		"added_tokens": []map[string]any{
			{"id": n, "content": "<|begin_of_text|>", "special": true},
			{"id": n + 1, "content": "<|end_of_text|>", "special": true},
			{"id": n + 2, "content": "<|eot_id|>", "special": true},
		},
		"pre_tokenizer": map[string]any{"type": "Sequence", "pretokenizers": []any{
			map[string]any{"type": "Split", "pattern": map[string]string{"Regex": pattern}, "behavior": "Isolated", "invert": false},
			map[string]any{"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false},
		}},
		"decoder": map[string]any{"type": "ByteLevel"},
		"model":   map[string]any{"type": "BPE", "vocab": vocab, "merges": merges, "ignore_merges": ignoreMerges},
	})
	cfg := `{"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>", "add_bos_token": true,
		"chat_template": "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}<|eot_id|>{% endfor %}"}`
	tok, err := ParseHF(tj, []byte(cfg), []byte(fmt.Sprintf(`{"eos_token_id": [%d, %d]}`, n+1, n+2)))
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

var ggufTexts = []string{"", "the cat sat on the mat.", "The dog's bone; 12345 apples", "  two  spaces\n\n\nnewlines ",
	"<|begin_of_text|>the<|eot_id|>end", "ünïcödé 🙂 日本", "I'LL 1234567 99\t\r\n x"}

// TestGGUFBPERoundTrip: a byte-level BPE written as GGUF metadata
// ("gpt2", pre detected from the split regex) and read back encodes every
// text to the same ids, keeps BOS/EOS/AddBOS and the chat template.
func TestGGUFBPERoundTrip(t *testing.T) {
	for _, tc := range []struct {
		pre, pattern string
		ignore       bool
	}{{"llama-bpe", ggufLlama3Pattern, true}, {"qwen2", ggufQwen2Pattern, false}} {
		t.Run(tc.pre, func(t *testing.T) {
			src := byteLevelBPE(t, tc.pattern, tc.ignore)
			kv, err := GGUFMetadata(src)
			if err != nil {
				t.Fatal(err)
			}
			meta := metaOf(kv)
			if meta["tokenizer.ggml.pre"] != tc.pre || meta["tokenizer.ggml.model"] != "gpt2" {
				t.Fatalf("model %v pre %v, want gpt2 %s", meta["tokenizer.ggml.model"], meta["tokenizer.ggml.pre"], tc.pre)
			}
			got, err := FromGGUF(meta)
			if err != nil {
				t.Fatal(err)
			}
			for _, text := range ggufTexts {
				a, sa := got.EncodeOffsets(text)
				b, sb := src.EncodeOffsets(text)
				if !slices.Equal(a, b) || !slices.Equal(sa, sb) {
					t.Errorf("Encode(%q):\n gguf %v %v\n src  %v %v", text, a, sa, b, sb)
				}
				if d, w := got.Decode(a), src.Decode(b); d != w {
					t.Errorf("Decode: %q vs %q", d, w)
				}
			}
			if got.BOS() != src.BOS() || !slices.Equal(got.EOS(), src.EOS()) || got.AddBOS() != src.AddBOS() {
				t.Errorf("BOS %d EOS %v AddBOS %v, want %d %v %v", got.BOS(), got.EOS(), got.AddBOS(), src.BOS(), src.EOS(), src.AddBOS())
			}
			tmpl, err := TemplateFor(got)
			if err != nil {
				t.Fatal(err)
			}
			out, err := tmpl.Render([]Message{{Role: "user", Content: Text("hi")}}, false)
			if err != nil || out != "<|user|>hi<|eot_id|>" {
				t.Errorf("chat template from metadata: %q, %v", out, err)
			}
			// Fingerprint is stable for the same metadata and changes with it.
			again, _ := FromGGUF(meta)
			if again.Fingerprint() != got.Fingerprint() {
				t.Errorf("fingerprint not stable")
			}
			meta2 := metaOf(kv)
			meta2["tokenizer.ggml.add_bos_token"] = !src.AddBOS()
			other, err := FromGGUF(meta2)
			if err != nil {
				t.Fatal(err)
			}
			if other.Fingerprint() == got.Fingerprint() {
				t.Errorf("fingerprint ignores add_bos_token")
			}
		})
	}
}

// TestGGUFSPM: special tokens split the text (longest first) and each text
// fragment gets the dummy prefix; spans point into the input; the chat
// template comes from the metadata; absent one, the default.
func TestGGUFSPM(t *testing.T) {
	tokens := []string{"<unk>", "<s>", "</s>", "<|im_start|>", "<|im", "▁", "a", "b", "▁a", "ab", "▁ab", "<0x0A>"}
	types := []int32{2, 3, 3, 4, 4, 1, 1, 1, 1, 1, 1, 6}
	scores := []float32{0, 0, 0, 0, 0, -1, -1, -1, -2, -3, -4, 0}
	meta := ggufMap{"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.token_type": types,
		"tokenizer.ggml.scores": scores, "tokenizer.ggml.bos_token_id": uint32(1), "tokenizer.ggml.eos_token_id": uint32(2)}
	tok, err := FromGGUF(meta)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		text  string
		ids   []int32
		spans []Span
	}{
		{"ab", []int32{10}, []Span{{0, 2}}},
		{"<|im_start|>ab", []int32{3, 10}, []Span{{0, 12}, {12, 14}}},
		{"a<|im_start|>b</s>", []int32{8, 3, 5, 7, 2}, []Span{{0, 1}, {1, 13}, {13, 13}, {13, 14}, {14, 18}}},
		{"<|imab", []int32{4, 10}, []Span{{0, 4}, {4, 6}}},
		{"a\n", []int32{8, 11}, []Span{{0, 1}, {1, 2}}},
	} {
		ids, spans := tok.EncodeOffsets(c.text)
		if !slices.Equal(ids, c.ids) || !slices.Equal(spans, c.spans) {
			t.Errorf("EncodeOffsets(%q) = %v %v, want %v %v", c.text, ids, spans, c.ids, c.spans)
		}
	}
	if tmpl, err := TemplateFor(tok); err != nil || tmpl.Source() != "" {
		t.Errorf("no chat_template: want the default template, got %q %v", tmpl.Source(), err)
	}
	meta["tokenizer.chat_template"] = "{{ bos_token }}{% for m in messages %}{{ m.content }}{{ eos_token }}{% endfor %}"
	tok, _ = FromGGUF(meta)
	tmpl, err := TemplateFor(tok)
	if err != nil {
		t.Fatal(err)
	}
	if out, err := tmpl.Render([]Message{{Role: "user", Content: Text("x")}}, false); err != nil || out != "<s>x</s>" {
		t.Errorf("Render = %q, %v", out, err)
	}
	// Written back and read again: the same tokenizer.
	kv, err := GGUFMetadata(tok)
	if err != nil {
		t.Fatal(err)
	}
	back, err := FromGGUF(metaOf(kv))
	if err != nil {
		t.Fatal(err)
	}
	if back.Fingerprint() != tok.Fingerprint() {
		t.Errorf("GGUFSPM -> metadata -> GGUFSPM changed the fingerprint")
	}
}

func TestFromGGUFErrors(t *testing.T) {
	base := func() ggufMap {
		return ggufMap{"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "qwen2", "tokenizer.ggml.tokens": []string{"a", "b"},
			"tokenizer.ggml.merges": []string{}}
	}
	for name, c := range map[string]struct {
		edit func(ggufMap)
		want error
	}{
		"unknown model": {func(m ggufMap) { m["tokenizer.ggml.model"] = "bert" }, ErrUnsupported},
		"unknown pre":   {func(m ggufMap) { m["tokenizer.ggml.pre"] = "deepseek-coder" }, ErrUnsupported},
		"no tokens":     {func(m ggufMap) { delete(m, "tokenizer.ggml.tokens") }, ErrFormat},
		"tokens type":   {func(m ggufMap) { m["tokenizer.ggml.tokens"] = []float32{1} }, ErrFormat},
		"types length":  {func(m ggufMap) { m["tokenizer.ggml.token_type"] = []int32{1} }, ErrFormat},
		"bad merge":     {func(m ggufMap) { m["tokenizer.ggml.merges"] = []string{"a c"} }, ErrFormat},
		"spm scores":    {func(m ggufMap) { m["tokenizer.ggml.model"] = "llama"; m["tokenizer.ggml.scores"] = []float32{1} }, ErrFormat},
	} {
		m := base()
		c.edit(m)
		if _, err := FromGGUF(m); !errors.Is(err, c.want) {
			t.Errorf("%s: err %v, want %v", name, err, c.want)
		}
	}
}
