package tokenizer

import (
	"testing"
)

// TestPartTokenRanges walks the path the proxy's segmenter takes: render a
// RAG prompt (system, then one user message whose parts are the chunks and
// the question), encode it with offsets, and map each part to its tokens.
// It pins down the trap the segmenter must handle: a part is not always an
// exact token range. Byte-level BPE (Llama-3, Qwen) glues the "\n" that
// joins parts to a part ending in punctuation (".\n" is one pre-token of
// ` ?[^\s\p{L}\p{N}]+[\r\n]*`), and SentencePiece glues the space before
// a part to its first word ("▁Answer"). Tokens strictly inside a part are
// always the part's own.
func TestPartTokenRanges(t *testing.T) {
	msgs := []Message{
		{Role: "system", Content: Text("Answer from the documents.")},
		{Role: "user", Content: TextParts(
			"Document 1: The Eiffel Tower is in Paris.",
			"Document 2: Mount Fuji is in Japan.",
			"Question: where is Mount Fuji?")},
	}
	cases := []struct {
		tok, template string
		exact         [][]bool // per message, per part
	}{
		{"llama3", "llama3", [][]bool{{true}, {false, false, true}}},
		{"qwen3", "qwen3", [][]bool{{true}, {false, false, true}}},
		{"qwen3", "qwen2.5", [][]bool{{true}, {false, false, true}}},
		{"llama2", "mistral", [][]bool{{false}, {true, true, true}}},
	}
	for _, c := range cases {
		tok := loadHFTest(t, c.tok)
		ct, err := NewChatTemplate(chatSource(t, c.template), tok.BOSToken(), tok.EOSToken())
		if err != nil {
			t.Fatal(err)
		}
		r, err := ct.RenderSpans(msgs, true)
		if err != nil || r.Parts == nil {
			t.Fatalf("%s: RenderSpans: %v, parts %v", c.template, err, r.Parts)
		}
		ids, spans := tok.EncodeOffsets(r.Text)
		for i, m := range msgs {
			for j, p := range m.Content.Parts {
				part := r.Parts[i][j]
				b, e, exact := TokenRange(spans, part)
				if exact != c.exact[i][j] {
					t.Errorf("%s/%s: message %d part %d %q: tokens [%d, %d) exact %v, want %v", c.tok, c.template, i, j, p.Text, b, e, exact, c.exact[i][j])
				}
				for k := b + 1; k < e-1; k++ {
					if spans[k].Begin < part.Begin || spans[k].End > part.End {
						t.Errorf("%s/%s: inner token %d %v outside part %v", c.tok, c.template, k, spans[k], part)
					}
				}
				if !exact {
					continue
				}
				// The part's tokens are the part's own encoding in context;
				// decoding them gives its text back.
				if got := tok.Decode(ids[b:e]); got != p.Text && got != " "+p.Text {
					t.Errorf("%s/%s: part %q decodes to %q", c.tok, c.template, p.Text, got)
				}
			}
		}
	}
}
