package tokenizer

import (
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/fusionrag/fusionrag/internal/shareddata"
	"github.com/google/go-cmp/cmp"
)

func loadStories(tb testing.TB) *Llama2c {
	tb.Helper()
	t, err := LoadLlama2c(shareddata.Path(tb, "models/stories260K/tok512.bin"))
	if err != nil {
		tb.Fatal(err)
	}
	return t
}

// naiveLlama2cEncode is a line-by-line transliteration of run.c's encode
// (full rescan for the best pair at every step), the reference that the heap
// in mergeSymbols must match exactly.
func naiveLlama2cEncode(t *Llama2c, text string) []int32 {
	if text == "" {
		return []int32{}
	}
	var toks []int32
	toks = append(toks, t.space)
	for i := 0; i < len(text); {
		j := i + 1
		for j < len(text) && j-i < 4 && text[j]&0xC0 == 0x80 {
			j++
		}
		if id, ok := t.ids[text[i:j]]; ok {
			toks = append(toks, id)
		} else {
			for k := i; k < j; k++ {
				toks = append(toks, int32(text[k])+3)
			}
		}
		i = j
	}
	for {
		best, bestID, bestIdx := float32(-1e10), int32(-1), -1
		for i := 0; i+1 < len(toks); i++ {
			if id, ok := t.ids[t.vocab[toks[i]]+t.vocab[toks[i+1]]]; ok && t.scores[id] > best {
				best, bestID, bestIdx = t.scores[id], id, i
			}
		}
		if bestIdx < 0 {
			break
		}
		toks[bestIdx] = bestID
		toks = append(toks[:bestIdx+1], toks[bestIdx+2:]...)
	}
	return toks
}

func TestLlama2cGolden(t *testing.T) {
	tok := loadStories(t)
	for _, c := range shareddata.LoadStoriesGolden(t).Cases { // fails on a file without cases
		ids := append([]int32{tok.BOS()}, tok.Encode(c.Prompt)...)
		if diff := cmp.Diff(c.PromptTokens, ids); diff != "" {
			t.Errorf("Encode(%q) with BOS (-want +got):\n%s", c.Prompt, diff)
		}
		// The whole sequence decodes to prompt + continuation.
		all := append(append([]int32{}, c.PromptTokens...), c.GreedyTokens...)
		if got, want := tok.Decode(all), c.Prompt+c.GreedyText; got != want {
			t.Errorf("Decode(prompt+greedy) = %q, want %q", got, want)
		}
		// Streaming after the prompt gives exactly the continuation's text
		// (the first piece after a bare BOS loses its space, as in run.c).
		d := tok.NewDecoder()
		for _, id := range c.PromptTokens {
			d.Add(id)
		}
		var sb strings.Builder
		for _, id := range c.GreedyTokens {
			sb.WriteString(d.Add(id))
		}
		sb.WriteString(d.Flush())
		if got := sb.String(); got != c.GreedyText {
			t.Errorf("streaming decode of the continuation of %q = %q, want %q", c.Prompt, got, c.GreedyText)
		}
	}
}

func TestLlama2cEncode(t *testing.T) {
	tok := loadStories(t)
	if got := tok.VocabSize(); got != 512 {
		t.Fatalf("VocabSize = %d, want 512", got)
	}
	tests := []struct {
		text  string
		ids   []int32
		spans []Span
	}{
		{"", []int32{}, []Span{}},
		{"Once upon a time", []int32{403, 407, 261, 378}, []Span{{0, 4}, {4, 9}, {9, 11}, {11, 16}}},
		// é is a vocabulary piece (485); ß is not: its two bytes fall back
		// to <0xC3> <0x9F> (id = byte + 3), each spanning its own byte.
		{"é", []int32{410, 485}, []Span{{0, 0}, {0, 2}}},
		{"ß", []int32{410, 0xC3 + 3, 0x9F + 3}, []Span{{0, 0}, {0, 1}, {1, 2}}},
	}
	for _, tt := range tests {
		ids, spans := tok.EncodeOffsets(tt.text)
		if diff := cmp.Diff(tt.ids, ids); diff != "" {
			t.Errorf("EncodeOffsets(%q) ids (-want +got):\n%s", tt.text, diff)
		}
		if diff := cmp.Diff(tt.spans, spans); diff != "" {
			t.Errorf("EncodeOffsets(%q) spans (-want +got):\n%s", tt.text, diff)
		}
	}
}

func TestLlama2cMatchesRunC(t *testing.T) {
	tok := loadStories(t)
	texts := []string{
		"Once upon a time, there was a little girl named Lily.",
		"the the the the   the\n\n\nthe",
		"aaaaaaaaaaaaaaaaaaaaaaa",
		"日本語のテキスト 🎉 emoji",
		"\xff\xfe invalid \xc3 utf8 \xe2\x82",
		"func main() { fmt.Println(\"hi\") }",
		strings.Repeat("She said, \"Let's play!\" ", 20),
	}
	for _, s := range texts {
		if diff := cmp.Diff(naiveLlama2cEncode(tok, s), tok.Encode(s)); diff != "" {
			t.Errorf("Encode(%q) differs from run.c transliteration (-runc +got):\n%s", s, diff)
		}
	}
}

func TestParseLlama2cErrors(t *testing.T) {
	for name, b := range map[string][]byte{
		"empty":          nil,
		"header only":    {7, 0, 0, 0},
		"truncated":      {7, 0, 0, 0, 0, 0, 0, 0, 5},
		"length too big": {7, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 'a'},
		"negative":       {7, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff},
	} {
		if _, err := ParseLlama2c(b); err == nil {
			t.Errorf("%s: ParseLlama2c succeeded, want error", name)
		}
	}
}

func FuzzLlama2cRoundTrip(f *testing.F) {
	tok := loadStories(f)
	for _, s := range []string{"Once upon a time", "", "é日本🎉", "\xff\xc3", "  \n\t x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		ids, spans := tok.EncodeOffsets(s)
		if len(ids) != len(spans) {
			t.Fatalf("%d ids, %d spans", len(ids), len(spans))
		}
		if diff := cmp.Diff(naiveLlama2cEncode(tok, s), ids); diff != "" {
			t.Fatalf("Encode(%q) differs from run.c (-runc +got):\n%s", s, diff)
		}
		// Spans tile the input in order (the dummy prefix adds nothing).
		at := 0
		for i, sp := range spans {
			if sp.Begin != at || sp.End < sp.Begin {
				t.Fatalf("span %d = %v, want begin %d", i, sp, at)
			}
			at = sp.End
		}
		if at != len(s) {
			t.Fatalf("spans end at %d, want %d", at, len(s))
		}
		// Decoding after BOS strips the dummy prefix: the text comes back
		// byte for byte (byte fallback keeps even invalid UTF-8).
		if got := tok.Decode(append([]int32{tok.BOS()}, ids...)); got != s {
			t.Fatalf("Decode(Encode(%q)) = %q", s, got)
		}
		d := tok.NewDecoder()
		var sb strings.Builder
		for _, id := range append([]int32{tok.BOS()}, ids...) {
			out := d.Add(id)
			if utf8.ValidString(s) && !utf8.ValidString(out) {
				t.Fatalf("streaming emitted invalid UTF-8 %q for valid input %q", out, s)
			}
			sb.WriteString(out)
		}
		sb.WriteString(d.Flush())
		if sb.String() != s {
			t.Fatalf("streaming decode = %q, want %q", sb.String(), s)
		}
	})
}
