package fusion

import (
	"errors"
	"testing"

	"github.com/fusionrag/fusionrag/internal/modeltest"
	"github.com/fusionrag/fusionrag/model/tokenizer"
	"github.com/google/go-cmp/cmp"
)

func TestTemplateRender(t *testing.T) {
	for _, tc := range []struct {
		name        string
		tpl         Template
		title, text string
		want        string
	}{
		{"default", DefaultTemplate, "Lily", "She played.", "\n\nDocument: Lily\nShe played."},
		{"default untitled", DefaultTemplate, "", "She played.", "\n\nDocument: She played."},
		{"no untitled format", Template{Format: "[{title}] {text}"}, "", "x", "[] x"},
		{"placeholders not re-expanded", Template{Format: "{title}: {text}"}, "{text}", "{title}", "{text}: {title}"},
		{"literal braces", Template{Format: "{ {x} {text}}"}, "", "t", "{ {x} t}"},
		{"repeated", Template{Format: "{text}|{text}"}, "", "a", "a|a"},
		{"trailing brace", Template{Format: "{text}{"}, "", "a", "a{"},
	} {
		if got := tc.tpl.Render(tc.title, tc.text); got != tc.want {
			t.Errorf("%s: Render = %q, want %q", tc.name, got, tc.want)
		}
	}
	for _, bad := range []Template{{Format: "no text"}, {Format: "{text}", Untitled: "nothing"}} {
		if err := bad.Validate(); !errors.Is(err, ErrTemplate) {
			t.Errorf("Validate(%+v) = %v, want ErrTemplate", bad, err)
		}
	}
	if err := DefaultTemplate.Validate(); err != nil {
		t.Error(err)
	}
}

// The token contract: a chunk's ids are the same wherever the chunk lands
// in a prompt, no dummy-prefix space is left at its start, and a prompt
// built by concatenation decodes to the concatenated texts.
func TestSegmentContract(t *testing.T) {
	toks := map[string]func(*testing.T) tokenizer.Tokenizer{
		"synthetic":   func(t *testing.T) tokenizer.Tokenizer { return synthModel(t, tinyConfig(256)).Tokenizer },
		"stories260K": func(t *testing.T) tokenizer.Tokenizer { return modeltest.Stories(t).Tokenizer },
	}
	for name, load := range toks {
		t.Run(name, func(t *testing.T) {
			tok := load(t)
			S := EncodePrefix(tok, "Answer from the documents.")
			if S[0] != tok.BOS() {
				t.Fatalf("S does not start with BOS: %v", S)
			}
			docs := storyDocs()
			text := ""
			prompt := append([]int32(nil), S...)
			for _, d := range docs[:2] {
				ids := DefaultTemplate.Tokens(tok, d.Title, d.Text)
				if p := tok.Token(ids[0]); p == " " || p == "▁" {
					t.Errorf("chunk %s starts with the dummy-prefix space piece", d.ID)
				}
				// Deterministic and context-free: the same call gives the same ids.
				if diff := cmp.Diff(ids, DefaultTemplate.Tokens(tok, d.Title, d.Text)); diff != "" {
					t.Errorf("chunk ids not deterministic (-first +second):\n%s", diff)
				}
				prompt = append(prompt, ids...)
				text += DefaultTemplate.Render(d.Title, d.Text)
			}
			q := "\nQuestion: who had a red ball?"
			prompt = append(prompt, EncodeSegment(tok, q)...)
			text += q
			// With llama2.c tokenizers the default template's leading
			// newlines are byte tokens that merge with nothing, so the
			// concatenation is even what encoding the whole prompt text
			// gives. (Not a contract for other tokenizers.)
			whole := append([]int32{tok.BOS()}, tok.Encode("Answer from the documents."+text)...)
			if diff := cmp.Diff(whole, prompt); diff != "" {
				t.Errorf("concatenated ids differ from the whole-text encoding (-whole +concatenated):\n%s", diff)
			}
			// llama2.c's decode drops the leading space of the piece after BOS.
			want := "Answer from the documents." + text
			got := tok.Decode(prompt)
			if got != want && got != " "+want {
				t.Errorf("concatenated prompt decodes to\n%q\nwant\n%q", got, want)
			}
		})
	}
}
