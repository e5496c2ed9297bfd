package tokenizer

import (
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// synthTokenizer is a small tokenizer.json exercising the added-token
// options, a normaliser and the "a b" merge format; ids:
//
//	0 <unk>  1 a  2 b  3 c  4 " "  5 ab  6 abc  7 w  8 o  9 r  10 d
//	11 wo 12 wor 13 word  | added: 20 <x> (lstrip) 21 <y> (rstrip)
//	22 WORD (single_word) 23 <N> (normalized, matched after Lowercase)
func synthTokenizer(t testing.TB, merges string) *HF {
	t.Helper()
	tj := `{
	  "added_tokens": [
	    {"id": 20, "content": "<x>", "lstrip": true, "rstrip": false, "single_word": false, "normalized": false, "special": true},
	    {"id": 21, "content": "<y>", "lstrip": false, "rstrip": true, "single_word": false, "normalized": false, "special": true},
	    {"id": 22, "content": "WORD", "lstrip": false, "rstrip": false, "single_word": true, "normalized": false, "special": false},
	    {"id": 23, "content": "<N>", "lstrip": false, "rstrip": false, "single_word": false, "normalized": true, "special": false}
	  ],
	  "normalizer": {"type": "Lowercase"},
	  "pre_tokenizer": {"type": "WhitespaceSplit"},
	  "post_processor": null,
	  "decoder": null,
	  "model": {"type": "BPE", "unk_token": "<unk>", "fuse_unk": true,
	    "vocab": {"<unk>": 0, "a": 1, "b": 2, "c": 3, " ": 4, "ab": 5, "abc": 6, "w": 7, "o": 8, "r": 9, "d": 10, "wo": 11, "wor": 12, "word": 13},
	    "merges": ` + merges + `}
	}`
	tok, err := ParseHF([]byte(tj), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func TestHFAddedTokenOptions(t *testing.T) {
	for name, merges := range map[string]string{
		"string merges": `["a b", "ab c", "w o", "wo r", "wor d"]`,
		"pair merges":   `[["a","b"], ["ab","c"], ["w","o"], ["wo","r"], ["wor","d"]]`,
	} {
		tok := synthTokenizer(t, merges)
		tests := []struct {
			text  string
			ids   []int32
			spans []Span
		}{
			{"abc ab", []int32{6, 5}, []Span{{0, 3}, {4, 6}}},
			// lstrip: <x> takes the spaces before it.
			{"ab  <x>c", []int32{5, 20, 3}, []Span{{0, 2}, {2, 7}, {7, 8}}},
			// rstrip: <y> takes the spaces after it.
			{"a<y>  c", []int32{1, 21, 3}, []Span{{0, 1}, {1, 6}, {6, 7}}},
			// single_word: WORD only as a whole word; inside a word the
			// normaliser lowercases it into ordinary tokens.
			{"WORD aWORD", []int32{22, 1, 13}, []Span{{0, 4}, {5, 6}, {6, 10}}},
			// normalized: <N> is matched on the lowercased text, so "<n>"
			// matches too; unknown '<' '>' fuse into one <unk> each side.
			{"a<n>b", []int32{1, 23, 2}, []Span{{0, 1}, {1, 4}, {4, 5}}},
			{"zz<", []int32{0}, []Span{{0, 3}}},
		}
		for _, tt := range tests {
			ids, spans := tok.EncodeOffsets(tt.text)
			if diff := cmp.Diff(tt.ids, ids); diff != "" {
				t.Errorf("%s: Encode(%q) (-want +got):\n%s", name, tt.text, diff)
			}
			if diff := cmp.Diff(tt.spans, spans); diff != "" {
				t.Errorf("%s: spans of %q (-want +got):\n%s", name, tt.text, diff)
			}
		}
		// Without a decoder tokens are joined with spaces.
		if got := tok.Decode([]int32{6, 5}); got != "abc ab" {
			t.Errorf("Decode = %q", got)
		}
	}
}

func TestParseHFErrors(t *testing.T) {
	tests := map[string]string{
		"not json":        `{`,
		"unigram":         `{"model": {"type": "Unigram", "vocab": []}}`,
		"empty vocab":     `{"model": {"type": "BPE", "vocab": {}, "merges": []}}`,
		"bad merge":       `{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a b c"]}}`,
		"merge not vocab": `{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a a"]}}`,
		"unk not vocab":   `{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": [], "unk_token": "<unk>"}}`,
		"normalizer":      `{"normalizer": {"type": "BertNormalizer"}, "model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}}`,
		"pre_tokenizer":   `{"pre_tokenizer": {"type": "BertPreTokenizer"}, "model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}}`,
		"decoder":         `{"decoder": {"type": "WordPiece"}, "model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}}`,
		"bad regex":       `{"pre_tokenizer": {"type": "Split", "pattern": {"Regex": "("}, "behavior": "Isolated"}, "model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}}`,
		"dropout":         `{"model": {"type": "BPE", "dropout": 0.1, "vocab": {"a": 0}, "merges": []}}`,
		"negative id":     `{"model": {"type": "BPE", "vocab": {"a": -1}, "merges": []}}`,
		"huge id":         `{"model": {"type": "BPE", "vocab": {"a": 2000000000}, "merges": []}}`,
	}
	for name, tj := range tests {
		if _, err := ParseHF([]byte(tj), nil, nil); err == nil {
			t.Errorf("%s: ParseHF succeeded, want an error", name)
		}
	}
	_, err := ParseHF([]byte(tests["unigram"]), nil, nil)
	if !errors.Is(err, ErrUnsupported) {
		t.Errorf("unigram: err = %v, want ErrUnsupported", err)
	}
	cfg := `{"bos_token": "<nope>"}`
	if _, err := ParseHF([]byte(`{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}}`), []byte(cfg), nil); !errors.Is(err, ErrFormat) {
		t.Errorf("unknown bos_token: err = %v, want ErrFormat", err)
	}
}

// FuzzParseHF feeds arbitrary tokenizer.json text: never a panic, and a
// tokenizer that loads encodes arbitrary text without one either.
func FuzzParseHF(f *testing.F) {
	f.Add(`{"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a b"]}}`, "abab")
	f.Add(`{"normalizer": {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"}, {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]}, "model": {"type": "BPE", "byte_fallback": true, "vocab": {"<0x61>": 0, "▁": 1}, "merges": []}}`, "a a")
	f.Add(`{"pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": true}, "decoder": {"type": "ByteLevel"}, "model": {"type": "BPE", "vocab": {"Ġ": 0, "a": 1}, "merges": [["Ġ", "a"]]}}`, " a\xff")
	f.Add(`{"pre_tokenizer": {"type": "Metaspace", "prepend_scheme": "first", "split": true}, "decoder": {"type": "Metaspace"}, "model": {"type": "BPE", "unk_token": "u", "vocab": {"u": 0, "▁": 1}, "merges": []}}`, "x y")
	f.Add(`{"added_tokens": [{"id": 1, "content": "<s>", "lstrip": true, "rstrip": true, "single_word": true}], "pre_tokenizer": {"type": "Digits", "individual_digits": true}, "model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}}`, " <s> 12a")
	f.Fuzz(func(t *testing.T, tj, text string) {
		tok, err := ParseHF([]byte(tj), nil, nil)
		if err != nil {
			return
		}
		ids, spans := tok.EncodeOffsets(text)
		if len(ids) != len(spans) {
			t.Fatalf("%d ids, %d spans", len(ids), len(spans))
		}
		for _, sp := range spans {
			if sp.Begin < 0 || sp.End < sp.Begin || sp.End > len(text) {
				t.Fatalf("span %v outside [0, %d)", sp, len(text))
			}
		}
		_ = tok.Decode(ids)
	})
}

func TestHFConfig(t *testing.T) {
	tj := `{"added_tokens": [{"id": 2, "content": "<s>", "special": true}, {"id": 3, "content": "</s>", "special": true}],
	  "post_processor": {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
	    "special_tokens": {"<s>": {"id": "<s>", "ids": [2], "tokens": ["<s>"]}}},
	  "model": {"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": []}}`
	tests := []struct {
		name, cfg, gen string
		bos            int32
		addBOS         bool
		eos            []int32
	}{
		{"template only", ``, ``, 2, true, nil},
		{"config overrides", `{"bos_token": {"content": "<s>"}, "add_bos_token": false, "eos_token": "</s>"}`, ``, 2, false, []int32{3}},
		{"generation eos list", `{"eos_token": "</s>"}`, `{"eos_token_id": [3, 1]}`, 2, true, []int32{3, 1}},
		{"generation eos int", ``, `{"eos_token_id": 1}`, 2, true, []int32{1}},
	}
	for _, tt := range tests {
		var cfg, gen []byte
		if tt.cfg != "" {
			cfg = []byte(tt.cfg)
		}
		if tt.gen != "" {
			gen = []byte(tt.gen)
		}
		tok, err := ParseHF([]byte(tj), cfg, gen)
		if err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		if tok.BOS() != tt.bos || tok.AddBOS() != tt.addBOS || !cmp.Equal(tok.EOS(), tt.eos) {
			t.Errorf("%s: BOS %d AddBOS %v EOS %v, want %d %v %v", tt.name, tok.BOS(), tok.AddBOS(), tok.EOS(), tt.bos, tt.addBOS, tt.eos)
		}
	}
	tok, err := ParseHF([]byte(tj), []byte(`{"chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]}`), nil)
	if err != nil || tok.ChatTemplateSource() != "D" {
		t.Errorf("named chat templates: %q, %v", tok.ChatTemplateSource(), err)
	}
}
