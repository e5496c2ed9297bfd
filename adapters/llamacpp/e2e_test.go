package llamacpp_test

// End to end: the fusion sidecar (package proxy, RAG fuser, memory store)
// in front of a real llama-server, both on stories260K.gguf, the adapter
// opened by name as the sidecar does. Skips loudly without llama-server or
// the shared data.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/fusionrag/fusionrag/adapters"
	_ "github.com/fusionrag/fusionrag/adapters/llamacpp"
	"github.com/fusionrag/fusionrag/internal/llamaserver"
	"github.com/fusionrag/fusionrag/internal/shareddata"
	"github.com/fusionrag/fusionrag/kvstore"
	"github.com/fusionrag/fusionrag/model"
	"github.com/fusionrag/fusionrag/proxy"
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
	if strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			line, ok := strings.CutPrefix(sc.Text(), "data: ")
			if !ok || line == "[DONE]" {
				continue
			}
			var c chunk
			if err := json.Unmarshal([]byte(line), &c); err != nil {
				t.Fatalf("SSE %q: %v", line, err)
			}
			add(c)
		}
		return r
	}
	var c chunk
	if err := json.NewDecoder(resp.Body).Decode(&c); err != nil {
		t.Fatal(err)
	}
	add(c)
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

	sidecar := func(t *testing.T, sm *model.Model) string {
		store, err := kvstore.Open("mem://?max=256MiB")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { store.Close() })
		pcfg := proxy.DefaultConfig()
		pcfg.Upstream = srv.URL
		pcfg.Listen = "127.0.0.1:0"
		pcfg.Fusion.Separator = sep
		pcfg.Fusion.Adapter = "llamacpp"
		pcfg.Fusion.SlotDir = slots
		pcfg.Fusion.MaxMissingFraction = 1
		if err := pcfg.Validate(); err != nil {
			t.Fatal(err)
		}
		acfg := adapters.Config{URL: srv.URL, Model: sm, SlotDir: slots}
		quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
		fuser, err := proxy.NewRAGFuser(proxy.FuserConfig{Proxy: pcfg, Model: sm, Store: store, Logger: quiet,
			OpenEngine: func(ctx context.Context) (adapters.Engine, error) { return adapters.Open(pcfg.Fusion.Adapter, acfg) }})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { fuser.Close() })
		tel, err := proxy.NewTelemetry(context.Background(), func(string) (string, bool) { return "", false })
		if err != nil {
			t.Fatal(err)
		}
		px, err := proxy.New(pcfg, proxy.WithFuser(fuser), proxy.WithTelemetry(tel), proxy.WithLogger(quiet))
		if err != nil {
			t.Fatal(err)
		}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		go px.Serve(ln)
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			px.Shutdown(ctx)
			tel.Shutdown(context.Background())
		})
		return "http://" + ln.Addr().String()
	}

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
