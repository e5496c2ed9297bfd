package tokenizer

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/text/unicode/norm"
)

// spTokenizer is a SentencePiece-style vocabulary behind a Metaspace
// pre-tokenizer (as Mistral v0.3's tokenizer.json: no normaliser,
// prepend_scheme "first", no split) and a Metaspace decoder.
func spTokenizer(t *testing.T, scheme string) *HF {
	t.Helper()
	tj := `{
	  "added_tokens": [{"id": 9, "content": "<s>", "special": true}],
	  "pre_tokenizer": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "` + scheme + `", "split": false},
	  "decoder": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "` + scheme + `", "split": false},
	  "model": {"type": "BPE", "byte_fallback": true, "fuse_unk": true, "unk_token": "<unk>",
	    "vocab": {"<unk>": 0, "▁": 1, "h": 2, "i": 3, "▁h": 4, "▁hi": 5, "hi": 6, "<0x21>": 7},
	    "merges": ["▁ h", "▁h i", "h i"]}
	}`
	tok, err := ParseHF([]byte(tj), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func TestMetaspace(t *testing.T) {
	tests := []struct {
		scheme, text string
		ids          []int32
		spans        []Span
		decoded      string
	}{
		// "first": ▁ only before the text that starts the input, so the
		// section after <s> is "hi" without a prefix.
		{"first", "hi hi", []int32{5, 5}, []Span{{0, 2}, {2, 5}}, "hi hi"},
		{"first", "<s>hi", []int32{9, 6}, []Span{{0, 3}, {3, 5}}, "<s>hi"},
		{"always", "<s>hi", []int32{9, 5}, []Span{{0, 3}, {3, 5}}, "<s> hi"},
		// Without a ByteFallback decoder byte tokens stay as written.
		{"never", "hi!", []int32{6, 7}, []Span{{0, 2}, {2, 3}}, "hi<0x21>"},
		// Unknown characters fuse into one <unk>; '!' falls back to its
		// byte; the decoder drops the first token's prefix space.
		{"first", "hxy!", []int32{4, 0, 7}, []Span{{0, 1}, {1, 3}, {3, 4}}, "h<unk><0x21>"},
	}
	for _, tt := range tests {
		tok := spTokenizer(t, tt.scheme)
		ids, spans := tok.EncodeOffsets(tt.text)
		if diff := cmp.Diff(tt.ids, ids); diff != "" {
			t.Errorf("%s: Encode(%q) (-want +got):\n%s", tt.scheme, tt.text, diff)
		}
		if diff := cmp.Diff(tt.spans, spans); diff != "" {
			t.Errorf("%s: spans of %q (-want +got):\n%s", tt.scheme, tt.text, diff)
		}
		// Decode drops BOS (id 9 is not BOS here: no post-processor and
		// no config, so it stays).
		if got := tok.Decode(ids); got != tt.decoded {
			t.Errorf("%s: Decode(%v) = %q, want %q", tt.scheme, ids, got, tt.decoded)
		}
	}
}

func TestNormalizerAlignment(t *testing.T) {
	// NFC composes "e" + U+0301 into "é": the composed bytes map to the
	// three source bytes together.
	n := unicodeNormalizer{norm.NFC}.normalize(newNormStr("xe\u0301y", 10))
	if n.s != "xéy" {
		t.Fatalf("NFC = %q", n.s)
	}
	// Bytes of "xéy": x, é (2 bytes), y.
	want := []Span{{10, 11}, {11, 14}, {11, 14}, {14, 15}}
	got := []Span{n.at(0), n.at(1), n.at(2), n.at(3)}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("NFC alignment (-want +got):\n%s", diff)
	}
	// Replace " " by "▁" (3 bytes) and Prepend "▁" (no source).
	q := seqNormalizer{prependNormalizer{"▁"}, replaceNormalizer{stringPattern(" "), "▁"}}
	m := q.normalize(newNormStr("a b", 0))
	if m.s != "▁a▁b" {
		t.Fatalf("normalised %q", m.s)
	}
	if diff := cmp.Diff([]Span{{0, 0}, {0, 1}, {1, 2}, {2, 3}}, []Span{m.span(0, 3), m.span(3, 4), m.span(4, 7), m.span(7, 8)}); diff != "" {
		t.Errorf("Prepend/Replace alignment (-want +got):\n%s", diff)
	}
}

func TestSplitBehaviors(t *testing.T) {
	n := newNormStr("a-b--c", 0)
	ms := stringPattern("-").find(n.s)
	pieces := func(ps []normStr) []string {
		var out []string
		for _, p := range ps {
			out = append(out, p.s)
		}
		return out
	}
	tests := []struct {
		b    splitBehavior
		want []string
	}{
		{splitRemoved, []string{"a", "b", "c"}},
		{splitIsolated, []string{"a", "-", "b", "-", "-", "c"}},
		{splitMergedWithPrevious, []string{"a-", "b-", "-", "c"}},
		{splitMergedWithNext, []string{"a", "-b", "-", "-c"}},
		{splitContiguous, []string{"a", "-", "b", "--", "c"}},
	}
	for _, tt := range tests {
		if diff := cmp.Diff(tt.want, pieces(splitByMatches(n, ms, tt.b, false))); diff != "" {
			t.Errorf("behavior %d (-want +got):\n%s", tt.b, diff)
		}
	}
	// Inverted: the matches are kept, each on its own.
	if diff := cmp.Diff([]string{"-", "-", "-"}, pieces(splitByMatches(n, ms, splitRemoved, true))); diff != "" {
		t.Errorf("inverted Removed (-want +got):\n%s", diff)
	}
}

func TestDecoders(t *testing.T) {
	d := seqDecoder{replaceDecoder{"▁", " "}, byteFallbackDecoder{}, fuseDecoder{}, stripDecoder{" ", 1, 0, true}}
	var got string
	for i, tok := range []string{"▁Hello", "<0xE6>", "<0x97>", "<0xA5>", "▁▁x"} {
		got += d.decodeToken(tok, i == 0)
	}
	if want := "Hello日  x"; got != want {
		t.Errorf("SentencePiece decoders: %q, want %q", got, want)
	}
	if got := (byteLevelDecoder{}).decodeToken("ĠhiĊ", false); got != " hi\n" {
		t.Errorf("ByteLevel decoder: %q", got)
	}
	if got := (byteLevelDecoder{}).decodeToken("日本", false); got != "日本" {
		t.Errorf("ByteLevel decoder keeps tokens outside its table: %q", got)
	}
}
