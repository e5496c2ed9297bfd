package prompt

import (
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/fusionrag/fusionrag/model/tokenizer"
)

func TestParseRequest(t *testing.T) {
	seed := int64(7)
	def := Sampling{Temperature: 1, TopP: 1}
	tests := []struct {
		name string
		body string
		chat bool
		want *Request
	}{
		{"text prompt, defaults", `{"prompt":"hi"}`, false,
			&Request{Prompt: Prompt{Text: "hi"}, Sampling: def}},
		{"one-element text array", `{"prompt":["hi"],"model":"m"}`, false,
			&Request{Model: "m", Prompt: Prompt{Text: "hi"}, Sampling: def}},
		{"token ids", `{"prompt":[1,2,3]}`, false,
			&Request{Prompt: Prompt{Tokens: []int32{1, 2, 3}, IsTokens: true}, Sampling: def}},
		{"one-element id array", `{"prompt":[[4,5]]}`, false,
			&Request{Prompt: Prompt{Tokens: []int32{4, 5}, IsTokens: true}, Sampling: def}},
		{"sampling and namespace", `{"prompt":"x","temperature":0,"top_p":0.5,"top_k":-1,"seed":7,"max_completion_tokens":9,
			"stop":["a",""],"ignore_eos":true,"stream":true,"stream_options":{"include_usage":true},"kv_transfer_params":{"namespace":"BEEF"}}`, false,
			&Request{Prompt: Prompt{Text: "x"}, Stream: true, IncludeUsage: true, KVNamespace: "beef",
				Sampling: Sampling{Temperature: 0, TopP: 0.5, Seed: &seed, MaxTokens: 9, Stop: []string{"a"}, IgnoreEOS: true}}},
		{"chat with parts and a null content", `{"messages":[{"role":"system","content":"s"},{"role":"assistant","content":null},
			{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}]}`, true,
			&Request{Chat: true, Sampling: def, Prompt: Prompt{Messages: []tokenizer.Message{
				{Role: "system", Content: tokenizer.Text("s")}, {Role: "assistant", Content: tokenizer.Content{IsString: true}},
				{Role: "user", Content: tokenizer.TextParts("a", "b")}}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseRequest([]byte(tt.body), tt.chat)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("ParseRequest (-want +got):\n%s", diff)
			}
		})
	}
}

func TestParseRequestErrors(t *testing.T) {
	tests := []struct {
		name, body string
		chat       bool
		param      string // "" for an error without a parameter
	}{
		{"not JSON", `{"prompt":`, false, ""},
		{"trailing data", `{"prompt":"a"} {}`, false, ""},
		{"no prompt", `{}`, false, "prompt"},
		{"no messages", `{"prompt":"a"}`, true, "messages"},
		{"empty ids", `{"prompt":[]}`, false, "prompt"},
		{"two prompts", `{"prompt":["a","b"]}`, false, "prompt"},
		{"bad role", `{"messages":[{"role":"wizard","content":"a"}]}`, true, "messages[0].role"},
		{"image part", `{"messages":[{"role":"user","content":[{"type":"image_url"}]}]}`, true, "messages[0].content[0]"},
		{"temperature", `{"prompt":"a","temperature":3}`, false, "temperature"},
		{"top_p", `{"prompt":"a","top_p":0}`, false, "top_p"},
		{"top_k", `{"prompt":"a","top_k":-2}`, false, "top_k"},
		{"max_tokens", `{"prompt":"a","max_tokens":0}`, false, "max_tokens"},
		{"n", `{"prompt":"a","n":2}`, false, "n"},
		{"echo", `{"prompt":"a","echo":true}`, false, "echo"},
		{"too many stops", `{"prompt":"a","stop":["1","2","3","4","5"]}`, false, "stop"},
		{"stream_options without stream", `{"prompt":"a","stream_options":{}}`, false, "stream_options"},
		{"namespace", `{"prompt":"a","kv_transfer_params":{"namespace":"xyz"}}`, false, "kv_transfer_params"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := ParseRequest([]byte(tt.body), tt.chat)
			if err == nil || r != nil {
				t.Fatalf("got %+v, %v; want an error", r, err)
			}
			if !errors.Is(err, ErrBadRequest) {
				t.Errorf("error %v does not wrap ErrBadRequest", err)
			}
			var pe *ParamError
			gotParam := ""
			if errors.As(err, &pe) {
				gotParam = pe.Param
			}
			if gotParam != tt.param {
				t.Errorf("param %q, want %q (%v)", gotParam, tt.param, err)
			}
		})
	}
}
