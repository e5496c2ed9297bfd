package prompt

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/fusionrag/fusionrag/internal/shareddata"
	"github.com/fusionrag/fusionrag/model"
	"github.com/fusionrag/fusionrag/model/tokenizer"
)

// byteTok encodes every byte as its own id (id = byte + 1); "<s>" in the
// text is the special BOS id 0, as an HF tokenizer matches special tokens
// written in the text.
type byteTok struct {
	addBOS bool
	bos    int32
}

func (b byteTok) Encode(text string) []int32 { ids, _ := b.EncodeOffsets(text); return ids }
func (b byteTok) EncodeOffsets(text string) ([]int32, []tokenizer.Span) {
	var ids []int32
	var offs []tokenizer.Span
	for i := 0; i < len(text); {
		if b.bos >= 0 && strings.HasPrefix(text[i:], "<s>") {
			ids, offs = append(ids, b.bos), append(offs, tokenizer.Span{Begin: i, End: i + 3})
			i += 3
			continue
		}
		ids, offs = append(ids, int32(text[i])+1), append(offs, tokenizer.Span{Begin: i, End: i + 1})
		i++
	}
	return ids, offs
}
func (byteTok) Decode(ids []int32) string { return "" }
func (byteTok) Token(id int32) string     { return "" }
func (byteTok) VocabSize() int            { return 257 }
func (b byteTok) BOS() int32              { return b.bos }
func (byteTok) EOS() []int32              { return nil }
func (b byteTok) AddBOS() bool            { return b.addBOS }
func (byteTok) Fingerprint() string       { return "byte" }

// TestBOSOnce: BOS is added by one rule, exactly once, whatever the text.
func TestBOSOnce(t *testing.T) {
	withBOS := byteTok{addBOS: true, bos: 0}
	tests := []struct {
		name string
		tok  byteTok
		p    Prompt
		want []int32
	}{
		{"text gets BOS", withBOS, Prompt{Text: "ab"}, []int32{0, 'a' + 1, 'b' + 1}},
		{"text that writes BOS gets it once", withBOS, Prompt{Text: "<s>ab"}, []int32{0, 'a' + 1, 'b' + 1}},
		{"tokenizer without AddBOS", byteTok{bos: 0}, Prompt{Text: "ab"}, []int32{'a' + 1, 'b' + 1}},
		{"tokenizer without a BOS id", byteTok{addBOS: true, bos: -1}, Prompt{Text: "ab"}, []int32{'a' + 1, 'b' + 1}},
		{"token prompt used as it is", withBOS, Prompt{Tokens: []int32{5, 6}, IsTokens: true}, []int32{5, 6}},
		{"chat with the plain template", withBOS, Prompt{Messages: []tokenizer.Message{{Role: "user", Content: tokenizer.Text("hi")}}},
			nil}, // want filled below from the template's text
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want := tt.want
			if want == nil {
				text, err := tokenizer.DefaultChatTemplate().Render(tt.p.Messages, true)
				if err != nil {
					t.Fatal(err)
				}
				want = append([]int32{0}, tt.tok.Encode(text)...)
			}
			got, err := Tokens(tt.tok, nil, tt.p)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("Tokens (-want +got):\n%s", diff)
			}
			enc, err := Encode(tt.tok, nil, tt.p)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(want, enc.IDs); diff != "" {
				t.Errorf("Encode ids (-want +got):\n%s", diff)
			}
			if !tt.p.IsTokens && len(enc.Offsets) != len(enc.IDs) {
				t.Errorf("got %d offsets for %d ids", len(enc.Offsets), len(enc.IDs))
			}
		})
	}
}

func TestEmptyPrompt(t *testing.T) {
	_, err := Tokens(byteTok{bos: -1}, nil, Prompt{Text: ""})
	var pe *ParamError
	if !errors.As(err, &pe) || pe.Param != "prompt" || !errors.Is(err, ErrBadRequest) {
		t.Fatalf("got %v, want a *ParamError on prompt wrapping ErrBadRequest", err)
	}
}

// TestEncodeMatchesTokens: on the real stories260K tokenizer, Encode's ids
// are Tokens' (the engine's) and every offset points into the text.
func TestEncodeMatchesTokens(t *testing.T) {
	m, err := model.Load(shareddata.Path(t, "models/stories260K/stories260K.bin"), model.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	tok := m.Tokenizer
	for _, p := range []Prompt{
		{Text: "Once upon a time, there was a little girl named Lily."},
		{Text: "\n\nDocument: Tom\nTom had a red ball.\n\nQuestion: who had a ball?"},
		{Messages: []tokenizer.Message{{Role: "system", Content: tokenizer.Text("Be brief.")},
			{Role: "user", Content: tokenizer.TextParts("Lily saw a cat.", "What did Lily see?")}}},
	} {
		ids, err := Tokens(tok, nil, p)
		if err != nil {
			t.Fatal(err)
		}
		enc, err := Encode(tok, nil, p)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(ids, enc.IDs) {
			t.Fatalf("Encode ids differ from Tokens:\n got %v\nwant %v", enc.IDs, ids)
		}
		if ids[0] != tok.BOS() || slices.Contains(ids[1:], tok.BOS()) {
			t.Errorf("BOS not exactly once at 0: %v", ids)
		}
		for i, o := range enc.Offsets {
			if o.Begin < 0 || o.End > len(enc.Text) || o.Begin > o.End {
				t.Fatalf("offset %d %+v outside the text (%d bytes)", i, o, len(enc.Text))
			}
		}
	}
}

func TestCounts(t *testing.T) {
	before := Counts()
	if _, err := ParseRequest([]byte(`{"prompt":"ab"}`), false); err != nil {
		t.Fatal(err)
	}
	if _, err := Encode(byteTok{bos: -1}, nil, Prompt{Text: "ab"}); err != nil {
		t.Fatal(err)
	}
	if _, err := Tokens(byteTok{bos: -1}, nil, Prompt{Tokens: []int32{1}, IsTokens: true}); err != nil {
		t.Fatal(err)
	}
	if got, want := Counts().Sub(before), (Count{Parses: 1, Encodes: 1}); got != want {
		t.Errorf("counts %+v, want %+v (token prompts are not tokenized)", got, want)
	}
}
