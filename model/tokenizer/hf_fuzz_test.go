package tokenizer

import (
	"strings"
	"testing"
	"unicode/utf8"

	"golang.org/x/text/unicode/norm"
)

// FuzzHFRoundTrip checks, on arbitrary bytes (invalid UTF-8 included), for
// the three real tokenizers: no panic; spans monotone and inside the text;
// for text the normaliser leaves alone, spans tile the input and decoding
// gives it back byte for byte (unless special tokens were matched, which
// SentencePiece prefixes and BOS dropping make lossy, as in the reference);
// streaming decode equals Decode and emits only whole characters.
func FuzzHFRoundTrip(f *testing.F) {
	for _, s := range []string{"Hello world", "  \n\n x", "日本語🎉👨‍👩‍👧‍👦", "\xff\xfe\xc3", "<|eot_id|><s>", "e\u0301", "I'll 123456"} {
		f.Add(s)
	}
	toks := map[string]*HF{}
	for _, name := range []string{"llama3", "qwen3", "llama2"} {
		toks[name] = loadHFTest(f, name)
	}
	f.Fuzz(func(t *testing.T, s string) {
		for name, tok := range toks {
			ids, spans := tok.EncodeOffsets(s)
			if len(ids) != len(spans) {
				t.Fatalf("%s: %d ids, %d spans", name, len(ids), len(spans))
			}
			// Spans are monotone; they may overlap only where a
			// normaliser rewrote a character that tokens then split.
			var prev Span
			for i, sp := range spans {
				if sp.Begin < prev.Begin || sp.End < prev.End || sp.End < sp.Begin || sp.End > len(s) {
					t.Fatalf("%s %q: span %d = %v after %v", name, s, i, sp, prev)
				}
				prev = sp
			}
			special := false
			for _, id := range ids {
				special = special || tok.IsSpecial(id)
			}
			untouched := name != "qwen3" || (utf8.ValidString(s) && norm.NFC.IsNormalString(s))
			if untouched {
				at := 0
				for i, sp := range spans {
					if sp.Begin != at {
						t.Fatalf("%s %q: span %d = %v, want begin %d", name, s, i, sp, at)
					}
					at = sp.End
				}
				if at != len(s) {
					t.Fatalf("%s %q: spans end at %d of %d", name, s, at, len(s))
				}
			}
			dec := tok.Decode(ids)
			if untouched && !special && dec != s {
				t.Fatalf("%s: Decode(Encode(%q)) = %q", name, s, dec)
			}
			d := tok.NewDecoder()
			var sb strings.Builder
			for _, id := range ids {
				out := d.Add(id)
				if utf8.ValidString(dec) && !utf8.ValidString(out) {
					t.Fatalf("%s %q: streaming emitted %q", name, s, out)
				}
				sb.WriteString(out)
			}
			sb.WriteString(d.Flush())
			if sb.String() != dec {
				t.Fatalf("%s %q: streamed %q, Decode %q", name, s, sb.String(), dec)
			}
		}
	})
}

// FuzzWordCut proves the SentencePiece word cut (bpe.wordStart) exact: BPE
// over the whole normalised text and BPE word by word give the same tokens
// and offsets.
func FuzzWordCut(f *testing.F) {
	for _, s := range []string{"Hello world", "a  b   c", "  x", "日本 語 🎉", "\xff \xfe", "x\u2581y"} {
		f.Add(s)
	}
	tok := loadHFTest(f, "llama2")
	if tok.model.wordStart == "" {
		f.Fatal("llama2 vocabulary should allow word cutting")
	}
	f.Fuzz(func(t *testing.T, s string) {
		w := "\u2581" + strings.ReplaceAll(s, " ", "\u2581")
		want := tok.model.tokenizeUncached(w)
		var got []piece
		tok.model.tokenizeWords(w, func(p piece, off int) {
			p.begin += int32(off)
			p.end += int32(off)
			got = append(got, p)
		})
		if len(got) != len(want) {
			t.Fatalf("%q: %d pieces cut, %d whole", s, len(got), len(want))
		}
		for i := range got {
			if got[i] != want[i] {
				t.Fatalf("%q: piece %d = %v cut, %v whole", s, i, got[i], want[i])
			}
		}
	})
}
