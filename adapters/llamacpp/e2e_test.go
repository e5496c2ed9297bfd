package llamacpp_test

// End to end: the fusion sidecar (package proxy, RAG fuser, memory store)
// in front of a real llama-server, both on stories260K.gguf, the adapter
// opened by name as the sidecar does. Skips loudly without llama-server or
// the shared data.

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fusionrag/fusionrag/adapters"
	"github.com/fusionrag/fusionrag/adapters/llamacpp"
	_ "github.com/fusionrag/fusionrag/adapters/llamacpp"
	"github.com/fusionrag/fusionrag/internal/llamaserver"
	"github.com/fusionrag/fusionrag/internal/proxytest"
	"github.com/fusionrag/fusionrag/internal/shareddata"
	"github.com/fusionrag/fusionrag/kvstore"
	"github.com/fusionrag/fusionrag/model"
	"github.com/fusionrag/fusionrag/proxy"
	"github.com/fusionrag/fusionrag/rag"
)

const sep = " # # "

type reply struct {
	Text            string
	PromptN, CacheN int
}

// post sends an OpenAI completions body to base and returns the text and
// llama-server's timings (streamed or not).
func post(t *testing.T, base string, headers map[string]string, body []byte) reply {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, base+"/v1/completions", bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	resp, err := (&http.Client{Transport: &http.Transport{DisableKeepAlives: true}}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("%s: %d %s", base, resp.StatusCode, b)
	}
	type chunk struct {
		Choices []struct {
			Text string `json:"text"`
		} `json:"choices"`
		Timings *struct {
			PromptN int `json:"prompt_n"`
			CacheN  int `json:"cache_n"`
		} `json:"timings"`
	}
	var r reply
	add := func(c chunk) {
		for _, ch := range c.Choices {
			r.Text += ch.Text
		}
		if c.Timings != nil {
			r.PromptN, r.CacheN = c.Timings.PromptN, c.Timings.CacheN
		}
	}
	if err := llamacpp.EachAnswer(resp, add); err != nil {
		t.Fatal(err)
	}
	return r
}

// TestSidecarE2E: a RAG completion through the sidecar at ratio 1.0
// (fusionrag strategy, every context token recomputed) is fused into a
// llama-server slot: the server prefills only the last token
// (timings.prompt_n 1) and answers what it answers alone, streamed and
// not; a sidecar whose model differs from the server's is refused by the
// handshake and forwards untouched.
func TestSidecarE2E(t *testing.T) {
	bin := llamaserver.Bin(t)
	gguf := shareddata.Path(t, "llamacpp/stories260K.gguf")
	m, err := model.Load(gguf, model.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	slots := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	srv, err := llamaserver.Start(ctx, llamaserver.Config{Bin: bin, Model: gguf, Context: 1024, Slots: 2, Threads: 1,
		Args: []string{"--slot-save-path", slots, "--cache-ram", "0", "--override-kv", "llama.context_length=int:512"}})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()

	sidecarOn := func(t *testing.T, sm *model.Model, srvURL, slots string) string {
		store, err := kvstore.Open("mem://?max=256MiB")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { store.Close() })
		pcfg := proxy.DefaultConfig()
		pcfg.Upstream = srvURL
		pcfg.Listen = "127.0.0.1:0"
		pcfg.Fusion.Separator = sep
		pcfg.Fusion.Adapter = "llamacpp"
		pcfg.Fusion.SlotDir = slots
		pcfg.Fusion.MaxMissingFraction = 1
		if err := pcfg.Validate(); err != nil {
			t.Fatal(err)
		}
		acfg := adapters.Config{URL: srvURL, Model: sm, SlotDir: slots}
		quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
		fuser, err := rag.New(rag.Config{Proxy: pcfg, Model: sm, Store: store, Logger: quiet,
			OpenEngine: func(ctx context.Context) (adapters.Engine, error) { return adapters.Open(pcfg.Fusion.Adapter, acfg) }})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { fuser.Close() })
		_, base := proxytest.Start(t, pcfg, proxy.WithFuser(fuser))
		return base
	}
	sidecar := func(t *testing.T, sm *model.Model) string { return sidecarOn(t, sm, srv.URL, slots) }

	prompt := "Once upon a time, there was a little girl named Lily." + sep +
		"\nPassage: Lily had a big red ball. She liked to play with it in the park." + sep +
		"\nPassage: Her friend Tom had a small dog. The dog liked to run after the ball." + sep +
		"\nQuestion: what did the dog like? Answer:"
	direct := func(stream bool) reply {
		b, _ := json.Marshal(map[string]any{"prompt": strings.ReplaceAll(prompt, sep, ""), "max_tokens": 16,
			"temperature": 0, "stream": stream, "cache_prompt": false})
		return post(t, srv.URL, nil, b)
	}
	fused := map[string]string{proxy.HeaderStrategy: "fusionrag", proxy.HeaderRatio: "1"}

	t.Run("fused", func(t *testing.T) {
		base := sidecar(t, m)
		for _, stream := range []bool{false, true} {
			want := direct(stream)
			b, _ := json.Marshal(map[string]any{"prompt": prompt, "max_tokens": 16, "temperature": 0, "stream": stream})
			post(t, base, fused, b) // warm: the chunks are computed and stored
			got := post(t, base, fused, b)
			if got.Text != want.Text {
				t.Errorf("stream %v: through the sidecar %q, llama-server alone %q", stream, got.Text, want.Text)
			}
			if got.PromptN != 1 {
				t.Errorf("stream %v: the server prefilled %d tokens (cache_n %d), want 1: not fused", stream, got.PromptN, got.CacheN)
			}
			t.Logf("stream %v: %q, server prefilled %d, reused %d", stream, got.Text, got.PromptN, got.CacheN)
		}
	})
	t.Run("200 concurrent on -np 4", func(t *testing.T) {
		// 200 requests over 8 prompts from 16 clients through the sidecar
		// in front of a 4-slot server: every answer is one of its own
		// prompt's (the fused answer, or the original's when it fell back
		// as busy): no slot cross-talk.
		slots4 := t.TempDir()
		srv4, err := llamaserver.Start(ctx, llamaserver.Config{Bin: bin, Model: gguf, Context: 4 * 512, Slots: 4, Threads: 1,
			Args: []string{"--slot-save-path", slots4, "--cache-ram", "0", "--threads-http", "32", "--override-kv", "llama.context_length=int:512"}})
		if err != nil {
			t.Fatal(err)
		}
		defer srv4.Close()
		base := sidecarOn(t, m, srv4.URL, slots4)
		names := []string{"Lily", "Tom", "Sue", "Max", "Ben", "Mia", "Sam", "Zoe"}
		things := []string{"a red ball", "a big dog", "a little cat", "a blue kite", "a toy car", "a yellow bird", "a green frog", "a soft bear"}
		type ref struct {
			body           []byte
			fused, orig    string
			fusedTokens    int
			fusedReplies   int
			fallbackReplie int
		}
		refs := make([]*ref, len(names))
		seen := map[string]int{}
		for i := range refs {
			p := "Once upon a time." + sep + "\nPassage: " + names[i] + " had " + things[i] + "." + sep +
				"\nPassage: " + names[(i+3)%8] + " liked to play in the park." + sep + "\nQuestion: what did " + names[i] + " have? Answer:"
			b, _ := json.Marshal(map[string]any{"prompt": p, "max_tokens": 24, "temperature": 0})
			fb, _ := json.Marshal(map[string]any{"prompt": strings.ReplaceAll(p, sep, ""), "max_tokens": 24, "temperature": 0, "cache_prompt": false})
			ob, _ := json.Marshal(map[string]any{"prompt": p, "max_tokens": 24, "temperature": 0, "cache_prompt": false})
			f := post(t, srv4.URL, nil, fb)
			refs[i] = &ref{body: b, fused: f.Text, orig: post(t, srv4.URL, nil, ob).Text, fusedTokens: f.PromptN}
			post(t, base, fused, b) // warm: chunks computed and stored
			seen[refs[i].fused]++
		}
		// Cross-talk between two prompts with the same answer would not
		// show: most answers must differ.
		if len(seen) < len(refs)-2 {
			t.Fatalf("only %d distinct answers for %d prompts: cross-talk would not show", len(seen), len(refs))
		}
		var mu sync.Mutex
		var wg sync.WaitGroup
		var next atomic.Int64
		for range 16 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					n := int(next.Add(1)) - 1
					if n >= 200 {
						return
					}
					r := refs[n%len(refs)]
					got := post(t, base, fused, r.body)
					mu.Lock()
					switch {
					case got.Text == r.fused && got.PromptN == 1:
						r.fusedReplies++
					case got.Text == r.orig || got.Text == r.fused:
						r.fallbackReplie++
					default:
						t.Errorf("request %d (prompt %d): %q (prefilled %d, reused %d), want its own %q or %q",
							n, n%len(refs), got.Text, got.PromptN, got.CacheN, r.fused, r.orig)
					}
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		fusedN := 0
		for _, r := range refs {
			fusedN += r.fusedReplies
		}
		t.Logf("200 requests, 16 clients, 4 slots: %d fused (server prefilled 1 token), %d forwarded as sent (busy), every answer its own prompt's", fusedN, 200-fusedN)
		if fusedN == 0 {
			t.Error("no request was fused")
		}
	})
	t.Run("wrong model", func(t *testing.T) {
		other, err := model.Synthetic(m.Config, 5)
		if err != nil {
			t.Fatal(err)
		}
		other.Tokenizer = m.Tokenizer
		base := sidecar(t, other)
		// A request that is not fused is forwarded as the client sent it,
		// separators included (the proxy's fallback), so the reference is
		// the server's answer to that body.
		b, _ := json.Marshal(map[string]any{"prompt": prompt, "max_tokens": 16, "temperature": 0})
		ref, _ := json.Marshal(map[string]any{"prompt": prompt, "max_tokens": 16, "temperature": 0, "cache_prompt": false})
		want := post(t, srv.URL, nil, ref)
		for range 2 {
			got := post(t, base, fused, b)
			if got.Text != want.Text { // KV of the other model would change the answer
				t.Errorf("through a sidecar of another model %q (prefilled %d), llama-server alone %q", got.Text, got.PromptN, want.Text)
			}
		}
	})
}
