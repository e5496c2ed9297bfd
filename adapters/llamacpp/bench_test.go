package llamacpp

import (
	"context"
	"encoding/json"
	"testing"

	"github.com/fusionrag/fusionrag/adapters"
	"github.com/fusionrag/fusionrag/internal/shareddata"
)

// BenchmarkPublish measures what the adapter adds before a fused request
// is forwarded, against a real llama-server on stories260K: the token
// proof's round trips (none for a token-id prompt, /tokenize for a string
// prompt, /apply-template + /tokenize for a chat body), GET /slots, the
// slot file write and the restore; plus the background erase (Release +
// wait), per operation. "plain-completion" is a full 1-token completion of
// the same prompt by the server alone, the unit to compare with.
func BenchmarkPublish(b *testing.B) {
	m := loadStories(b)
	srv, dir := startServer(b, shareddata.Path(b, "llamacpp/stories260K.gguf"), 1)
	a := openAdapter(b, srv.URL, dir, m)
	prompt := ids(m, p2Text)
	kv := prefillKV(b, m, prompt[:len(prompt)-1])
	chat := []byte(`{"messages":[{"role":"user","content":"` + p2Text + `"}]}`)
	var tmpl struct{ Prompt string }
	postJSON(b, srv.URL+"/apply-template", chat, &tmpl)
	chatPrompt := ids(m, tmpl.Prompt)
	chatKV := prefillKV(b, m, chatPrompt[:len(chatPrompt)-1])
	idsBody, _ := json.Marshal(map[string]any{"prompt": prompt, "n_predict": 1})
	strBody, _ := json.Marshal(map[string]any{"prompt": p2Text, "n_predict": 1})
	for _, c := range []struct {
		name string
		p    adapters.Publication
	}{
		{"token-ids", adapters.Publication{Prompt: prompt, KV: kv, Path: "/completion", Body: idsBody}},
		{"string-prompt", adapters.Publication{Prompt: prompt, KV: kv, Path: "/completion", Body: strBody}},
		{"chat", adapters.Publication{Prompt: chatPrompt, KV: chatKV, Path: "/v1/chat/completions", Body: chat}},
	} {
		b.Run(c.name, func(b *testing.B) {
			for b.Loop() {
				l, err := a.Publish(context.Background(), c.p)
				if err != nil {
					b.Fatal(err)
				}
				l.Release()
				a.bg.Wait()
			}
		})
	}
	b.Run("tokenize-only/string-prompt", func(b *testing.B) {
		for b.Loop() {
			if _, err := a.serverTokens(context.Background(), "/completion", strBody); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("tokenize-only/chat", func(b *testing.B) {
		for b.Loop() {
			if _, err := a.serverTokens(context.Background(), "/v1/chat/completions", chat); err != nil {
				b.Fatal(err)
			}
		}
	})
	plain, _ := json.Marshal(map[string]any{"prompt": p2Text, "n_predict": 1, "cache_prompt": false})
	b.Run("plain-completion", func(b *testing.B) {
		for b.Loop() {
			complete(b, srv.URL, plain)
		}
	})
}
