package prompt

import (
	"errors"
	"testing"

	"github.com/fusionrag/fusionrag/fingerprint"
)

// FuzzParseRequest: any body either parses into a request that satisfies
// the validated invariants or fails with an ErrBadRequest error; never a
// panic.
func FuzzParseRequest(f *testing.F) {
	for _, s := range []string{
		`{"prompt":"hello","max_tokens":5,"temperature":0}`,
		`{"prompt":[1,2,3],"stream":true,"stream_options":{"include_usage":true}}`,
		`{"prompt":[[1,2]],"stop":["a","b"],"top_k":-1,"seed":3}`,
		`{"messages":[{"role":"user","content":[{"type":"text","text":"x"}]}],"kv_transfer_params":{"namespace":"ab12"}}`,
		`{"messages":[{"role":"system","content":"s"},{"role":"assistant","content":null}]}`,
		`{"prompt":`, `[]`, `null`, ``,
	} {
		f.Add([]byte(s), false)
		f.Add([]byte(s), true)
	}
	f.Fuzz(func(t *testing.T, body []byte, chat bool) {
		r, err := ParseRequest(body, chat)
		if err != nil {
			if !errors.Is(err, ErrBadRequest) {
				t.Fatalf("error %v does not wrap ErrBadRequest", err)
			}
			if r != nil {
				t.Fatal("request returned with an error")
			}
			return
		}
		s := r.Sampling
		if s.Temperature < 0 || s.Temperature > 2 || !(s.TopP > 0 && s.TopP <= 1) || s.TopK < 0 || s.MaxTokens < 0 || len(s.Stop) > MaxStops {
			t.Fatalf("invalid sampling accepted: %+v", s)
		}
		if chat && len(r.Prompt.Messages) == 0 {
			t.Fatal("chat request without messages")
		}
		if !chat && r.Prompt.IsTokens && len(r.Prompt.Tokens) == 0 {
			t.Fatal("empty token prompt accepted")
		}
		if r.KVNamespace != "" && !fingerprint.ValidKVNamespace(r.KVNamespace) {
			t.Fatalf("invalid namespace %q accepted", r.KVNamespace)
		}
		if r.IncludeUsage && !r.Stream {
			t.Fatal("include_usage without stream")
		}
	})
}
