package demo

import (
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestReadStream(t *testing.T) {
	tests := []struct {
		name   string
		stream string
		want   completion
		err    error // errors.Is target; nil for success
	}{
		{name: "completion with usage",
			stream: "data: {\"choices\":[{\"text\":\"Hel\"}]}\n\ndata: {\"choices\":[{\"text\":\"lo\"}]}\n\n" +
				"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"prompt_tokens_details\":{\"cached_tokens\":11}}}\n\ndata: [DONE]\n\n",
			want: completion{Text: "Hello", Tokens: 2, PromptTokens: 12, CachedTokens: 11}},
		{name: "CRLF, comments, other fields",
			stream: ": keep-alive\r\nevent: message\r\nid: 1\r\ndata:{\"choices\":[{\"text\":\"x\"}]}\r\n\r\ndata: [DONE]\r\n",
			want:   completion{Text: "x", Tokens: 1}},
		{name: "usage without details", stream: "data: {\"choices\":[{\"text\":\"a\"}],\"usage\":{\"prompt_tokens\":3}}\ndata: [DONE]",
			want: completion{Text: "a", Tokens: 1, PromptTokens: 3}},
		{name: "no [DONE]", stream: "data: {\"choices\":[{\"text\":\"a\"}]}\n\n", err: ErrStream},
		{name: "no token", stream: "data: {\"choices\":[]}\n\ndata: [DONE]\n\n", err: ErrStream},
		{name: "empty", stream: "", err: ErrStream},
		{name: "bad JSON", stream: "data: {\"choices\":[{\"text\":\n\n", err: ErrStream},
		{name: "error event", stream: "data: {\"error\":{\"message\":\"engine is shutting down\"}}\n\n", err: ErrStream},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			firsts := 0
			got, err := readStream(strings.NewReader(tt.stream), func() { firsts++ })
			if tt.err != nil {
				if !errors.Is(err, tt.err) {
					t.Fatalf("err %v, want %v", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if firsts != 1 {
				t.Errorf("first called %d times, want once", firsts)
			}
			if diff := cmp.Diff(tt.want, got, cmp.AllowUnexported(completion{})); diff != "" {
				t.Errorf("completion (-want +got):\n%s", diff)
			}
		})
	}
}

// FuzzReadStream: any byte stream gives a completion or an error, never a
// panic, and the first-token callback runs at most once.
func FuzzReadStream(f *testing.F) {
	f.Add([]byte("data: {\"choices\":[{\"text\":\"Hi\"}]}\n\ndata: [DONE]\n\n"))
	f.Add([]byte("data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"prompt_tokens_details\":{\"cached_tokens\":0}}}\ndata: [DONE]"))
	f.Add([]byte("data: {\"error\":{\"message\":\"x\"}}\n"))
	f.Add([]byte(": comment\r\n\r\ndata:[DONE]"))
	f.Add([]byte("data: {\"choices\":null}\ndata: [DONE]\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		firsts := 0
		c, err := readStream(strings.NewReader(string(b)), func() { firsts++ })
		if firsts > 1 {
			t.Fatalf("first called %d times", firsts)
		}
		if err == nil && (firsts != 1 || c.Tokens < 1) {
			t.Fatalf("success without a token: %+v, first called %d times", c, firsts)
		}
	})
}
