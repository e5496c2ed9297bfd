package tokenizer

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

type goldenChat struct {
	BOS   *string `json:"bos_token"`
	EOS   *string `json:"eos_token"`
	Cases []struct {
		Name                string    `json:"name"`
		AddGenerationPrompt bool      `json:"add_generation_prompt"`
		Messages            []Message `json:"messages"`
		Text                *string   `json:"text"`
		Error               *string   `json:"error"`
	} `json:"cases"`
}

// chatSource returns a template and its tokens: Llama-3 and Qwen3 from the
// real tokenizer_config.json in the cache, Qwen2.5 and Mistral from
// testdata/templates (written for this package after the published ones).
func chatSource(t *testing.T, name string) string {
	t.Helper()
	switch name {
	case "llama3", "qwen3":
		return loadHFTest(t, name).ChatTemplateSource()
	}
	b, err := os.ReadFile(filepath.Join("testdata", "templates", name+".jinja"))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestChatTemplateGolden compares renderings with @huggingface/jinja's (see
// scripts/tokenizer-golden), content-part arrays flattened with "\n" on both
// sides, and checks that every part's span holds the part's text.
func TestChatTemplateGolden(t *testing.T) {
	for _, name := range []string{"llama3", "qwen3", "qwen2.5", "mistral"} {
		t.Run(name, func(t *testing.T) {
			raw, err := os.ReadFile(filepath.Join("testdata", "golden", "chat_"+name+".json"))
			if err != nil {
				t.Fatal(err)
			}
			var g goldenChat
			if err := json.Unmarshal(raw, &g); err != nil {
				t.Fatal(err)
			}
			deref := func(p *string) string {
				if p == nil {
					return ""
				}
				return *p
			}
			ct, err := NewChatTemplate(chatSource(t, name), deref(g.BOS), deref(g.EOS))
			if err != nil {
				t.Fatal(err)
			}
			for _, c := range g.Cases {
				r, err := ct.RenderSpans(c.Messages, c.AddGenerationPrompt)
				if c.Error != nil {
					var re *RaiseError
					if !errors.As(err, &re) || re.Message != *c.Error || !errors.Is(err, ErrTemplate) {
						t.Errorf("%s: err = %v, want raise_exception(%q)", c.Name, err, *c.Error)
					}
					continue
				}
				if err != nil {
					t.Errorf("%s: %v", c.Name, err)
					continue
				}
				if diff := cmp.Diff(*c.Text, r.Text); diff != "" {
					t.Errorf("%s: rendering (-want +got):\n%s", c.Name, diff)
				}
				if r.Parts == nil {
					t.Errorf("%s: part spans not established", c.Name)
					continue
				}
				for i, m := range c.Messages {
					for j, p := range m.Content.Parts {
						sp := r.Parts[i][j]
						if sp.Begin < 0 {
							t.Errorf("%s: message %d part %d not located", c.Name, i, j)
							continue
						}
						if got := r.Text[sp.Begin:sp.End]; got != p.Text && got != strings.TrimSpace(p.Text) {
							t.Errorf("%s: message %d part %d span %v holds %q, want %q", c.Name, i, j, sp, got, p.Text)
						}
					}
				}
				if s, err := ct.Render(c.Messages, c.AddGenerationPrompt); err != nil || s != r.Text {
					t.Errorf("%s: Render = %q, %v; RenderSpans gave %q", c.Name, s, err, r.Text)
				}
			}
		})
	}
}

func TestChatTemplateFromHF(t *testing.T) {
	tok := loadHFTest(t, "llama3")
	ct, err := tok.ChatTemplate()
	if err != nil {
		t.Fatal(err)
	}
	got, err := ct.Render([]Message{{Role: "user", Content: Text("Hi!")}}, true)
	want := "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
	if err != nil || got != want {
		t.Fatalf("Render = %q, %v; want %q", got, err, want)
	}
	// The rendered prompt carries BOS as text, matched back as the special
	// token: AddBOS is false for this tokenizer, so BOS appears once.
	ids := tok.Encode(got)
	if ids[0] != tok.BOS() || tok.AddBOS() {
		t.Errorf("ids start %v, AddBOS %v", ids[:3], tok.AddBOS())
	}
}

func TestDefaultChatTemplate(t *testing.T) {
	var msgs []Message
	if err := json.Unmarshal([]byte(`[
		{"role": "system", "content": "Answer from the stories."},
		{"role": "user", "content": [{"type": "text", "text": "Lily had a ball."}, {"type": "text", "text": "Who had a ball?"}]}
	]`), &msgs); err != nil {
		t.Fatal(err)
	}
	r, err := DefaultChatTemplate().RenderSpans(msgs, true)
	if err != nil {
		t.Fatal(err)
	}
	want := Rendered{
		Text:  "Answer from the stories.\n\nLily had a ball.\n\nWho had a ball?",
		Parts: [][]Span{{{0, 24}}, {{26, 42}, {44, 59}}},
	}
	if diff := cmp.Diff(want, r); diff != "" {
		t.Errorf("RenderSpans (-want +got):\n%s", diff)
	}
}

func TestMessageJSON(t *testing.T) {
	in := `{"role":"assistant","content":null,"tool_calls":[{"id":"1"}]}`
	var m Message
	if err := json.Unmarshal([]byte(in), &m); err != nil {
		t.Fatal(err)
	}
	if m.Role != "assistant" || len(m.Content.Parts) != 0 || m.Extra["tool_calls"] == nil {
		t.Errorf("parsed %+v", m)
	}
	for _, bad := range []string{`{"role":"user","content":5}`, `{"role":"user","content":[{"type":"image_url"}]}`} {
		var m Message
		err := json.Unmarshal([]byte(bad), &m)
		if err == nil {
			_, err = DefaultChatTemplate().Render([]Message{m}, true)
		}
		if !errors.Is(err, ErrContent) {
			t.Errorf("%s: err = %v, want ErrContent", bad, err)
		}
	}
}

func TestChatTemplateErrors(t *testing.T) {
	if _, err := NewChatTemplate("{% for %}", "", ""); !errors.Is(err, ErrTemplate) {
		t.Errorf("bad syntax: err = %v, want ErrTemplate", err)
	}
	ct, err := NewChatTemplate("{{ messages[0].content | nosuchfilter }}", "", "")
	if err == nil {
		_, err = ct.Render([]Message{{Role: "user", Content: Text("x")}}, false)
	}
	if !errors.Is(err, ErrTemplate) {
		t.Errorf("unknown filter: err = %v, want ErrTemplate", err)
	}
}
