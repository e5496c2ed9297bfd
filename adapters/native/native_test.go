package native_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/fusionrag/fusionrag/adapters"
	_ "github.com/fusionrag/fusionrag/adapters/native"
	"github.com/fusionrag/fusionrag/adapters/passthrough"
	"github.com/fusionrag/fusionrag/engine"
	"github.com/fusionrag/fusionrag/internal/modeltest"
	"github.com/fusionrag/fusionrag/internal/redistest"
	"github.com/fusionrag/fusionrag/kvstore"
	"github.com/fusionrag/fusionrag/model"
	"github.com/fusionrag/fusionrag/prompt"
	"github.com/valyala/fasthttp"
)

type fixture struct {
	e        *engine.Engine
	m        *model.Model
	url      string
	redisURL string
	ids      []int32
	kv       *model.Cache
}

const storyPrompt = "Once upon a time, there was a little girl named Lily. She loved to play outside in the park with her friends"

// setup serves the real stories260K model with a connector reading a real
// Redis (shared store) and an in-memory push store.
func setup(t *testing.T) *fixture {
	t.Helper()
	m := modeltest.Stories(t)
	redisURL := redistest.Start(t).URL(0)
	lm := engine.NewModelLM(m)
	conn, err := engine.OpenConnector(redisURL, "mem://?max=64MiB", lm, m.Tokenizer.Fingerprint())
	if err != nil {
		t.Fatal(err)
	}
	e, err := engine.New(engine.Config{}, lm, m.Tokenizer, engine.WithConnector(conn), engine.WithStopIDs(lm.StopIDs()))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(e.Handler())
	t.Cleanup(func() { srv.Close(); e.Close() })
	ids, err := prompt.Tokens(m.Tokenizer, nil, prompt.Prompt{Text: storyPrompt})
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{e: e, m: m, url: srv.URL, redisURL: redisURL, ids: ids, kv: modeltest.Prefill(t, m, ids)}
}

type result struct {
	text   string
	cached int
}

// engineClient sends requests to the engine at url as the sidecar does
// (keep-alive, response bodies streamed through).
func engineClient(url string) (*fasthttp.HostClient, string) {
	host := strings.TrimPrefix(url, "http://")
	return &fasthttp.HostClient{Addr: host, StreamResponseBody: true}, host
}

// forward sends req to the engine at url and fills resp.
func forward(url string, req *fasthttp.Request, resp *fasthttp.Response) error {
	c, host := engineClient(url)
	req.URI().SetScheme("http")
	req.URI().SetHost(host)
	req.SetHost(host)
	return c.DoTimeout(req, resp, time.Minute)
}

// send posts body to the engine at url as the sidecar forwards it and
// returns the completion text and cached tokens, reading an SSE stream when
// the engine streams.
func send(t *testing.T, url string, body []byte) result {
	t.Helper()
	req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.Header.SetMethod("POST")
	req.SetRequestURI("http://sidecar.invalid/v1/completions")
	req.Header.SetContentType("application/json")
	req.SetBody(body)
	if err := forward(url, req, resp); err != nil {
		t.Fatal(err)
	}
	var r io.Reader
	if s := resp.BodyStream(); s != nil {
		r = s
		defer resp.CloseBodyStream()
	} else {
		r = strings.NewReader(string(resp.Body()))
	}
	if resp.StatusCode() != 200 {
		b, _ := io.ReadAll(r)
		t.Fatalf("status %d: %s", resp.StatusCode(), b)
	}
	type chunk struct {
		Choices []struct{ Text string }
		Usage   *struct {
			PromptTokensDetails struct {
				CachedTokens int `json:"cached_tokens"`
			} `json:"prompt_tokens_details"`
		}
	}
	var out result
	add := func(c chunk) {
		for _, ch := range c.Choices {
			out.text += ch.Text
		}
		if c.Usage != nil {
			out.cached = c.Usage.PromptTokensDetails.CachedTokens
		}
	}
	if strings.HasPrefix(string(resp.Header.ContentType()), "text/event-stream") {
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			data, ok := strings.CutPrefix(sc.Text(), "data: ")
			if !ok || data == "[DONE]" {
				continue
			}
			var c chunk
			if err := json.Unmarshal([]byte(data), &c); err != nil {
				t.Fatalf("event %q: %v", data, err)
			}
			add(c)
		}
		return out
	}
	var c chunk
	b, _ := io.ReadAll(r)
	if err := json.Unmarshal(b, &c); err != nil {
		t.Fatalf("body %q: %v", b, err)
	}
	add(c)
	return out
}

// TestNativePublishAndForward: over both transports, KV published through
// the adapter is found by the engine for the prepared request (cached_tokens
// = prompt - 1) and the greedy answer equals plain prefill's, streaming or
// not; the unprepared request never sees it.
func TestNativePublishAndForward(t *testing.T) {
	f := setup(t)
	plain := fmt.Sprintf(`{"prompt":%q,"max_tokens":24,"temperature":0}`, storyPrompt)
	stream := fmt.Sprintf(`{"prompt":%q,"max_tokens":24,"temperature":0,"stream":true,"stream_options":{"include_usage":true}}`, storyPrompt)
	pt, err := adapters.Open(passthrough.Name, adapters.Config{URL: f.url})
	if err != nil {
		t.Fatal(err)
	}
	defer pt.Close()
	base := send(t, f.url, []byte(plain))
	for i, tc := range []struct {
		transport string
		dtype     kvstore.DType
	}{
		{adapters.TransportPush, kvstore.Float32},
		{adapters.TransportStore, kvstore.Float32},
		{adapters.TransportPush, kvstore.Float16},
	} {
		t.Run(fmt.Sprintf("%s/%s", tc.transport, tc.dtype), func(t *testing.T) {
			cfg := adapters.Config{URL: f.url, Transport: tc.transport, DType: tc.dtype,
				ModelFingerprint: f.m.Fingerprint(), TokenizerFingerprint: f.m.Tokenizer.Fingerprint()}
			if tc.transport == adapters.TransportStore {
				cfg.StoreURL = f.redisURL
			}
			a, err := adapters.Open("native", cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer a.Close()
			ns := fmt.Sprintf("abc%d", i)
			L := len(f.ids)
			lease, err := a.Publish(context.Background(), adapters.Publication{Namespace: ns, Prompt: f.ids,
				KV: f.kv.Slice(0, L-1), Path: "/v1/completions", Body: []byte(plain)})
			if err != nil {
				t.Fatal(err)
			}
			defer lease.Release()
			for _, body := range []string{plain, stream} {
				prepared, err := lease.Rewrite([]byte(body))
				if err != nil {
					t.Fatal(err)
				}
				if want := body[:len(body)-1] + `,"kv_transfer_params":{"namespace":"` + ns + `"}}`; string(prepared) != want {
					t.Errorf("Rewrite(%s) = %s, want %s", body, prepared, want)
				}
				got := send(t, f.url, prepared)
				if got.cached != len(f.ids)-1 {
					t.Errorf("cached_tokens %d, want %d", got.cached, len(f.ids)-1)
				}
				// fp16 KV is rounded (relative error ~5e-4): the answer may
				// legitimately differ, so only exact KV must match exactly.
				if tc.dtype == kvstore.Float32 && got.text != base.text {
					t.Errorf("answer with published KV %q, plain %q", got.text, base.text)
				}
			}
			if got := send(t, f.url, []byte(plain)); got.cached != 0 || got.text != base.text {
				t.Errorf("unprepared request: %+v, want plain %q with no cached tokens", got, base.text)
			}
		})
	}
}

func TestNativeRefusals(t *testing.T) {
	f := setup(t)
	_, err := adapters.Open("native", adapters.Config{URL: f.url, ModelFingerprint: strings.Repeat("0", 32)})
	if !errors.Is(err, adapters.ErrMismatch) {
		t.Errorf("other model: err %v, want ErrMismatch", err)
	}
	if _, err := adapters.Open("vllm-nope", adapters.Config{URL: f.url}); !errors.Is(err, adapters.ErrUnknown) {
		t.Errorf("unknown adapter: %v", err)
	}
	if _, err := adapters.Open("native", adapters.Config{}); !errors.Is(err, adapters.ErrConfig) {
		t.Errorf("no URL: %v", err)
	}
	a, err := adapters.Open("native", adapters.Config{URL: f.url})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	L := len(f.ids)
	for _, tc := range []struct {
		name string
		p    adapters.Publication
	}{
		{"KV longer than the prompt", adapters.Publication{Namespace: "ab", Prompt: f.ids[:3], KV: f.kv}},
		{"KV of the whole prompt", adapters.Publication{Namespace: "ab", Prompt: f.ids, KV: f.kv}},
		{"no KV", adapters.Publication{Namespace: "ab", Prompt: f.ids}},
		{"bad namespace", adapters.Publication{Namespace: "not hex", Prompt: f.ids, KV: f.kv.Slice(0, L-1)}},
	} {
		if lease, err := a.Publish(context.Background(), tc.p); err == nil || lease != nil {
			t.Errorf("%s: Publish = %v, %v; want an error and no lease", tc.name, lease, err)
		}
	}
	if _, err := (adapters.KVParamsLease{Namespace: "ab"}).Rewrite([]byte(`[1]`)); err == nil {
		t.Error("Rewrite accepted a non-object body")
	}
}

func TestPassthrough(t *testing.T) {
	f := setup(t)
	a, err := adapters.Open(passthrough.Name, adapters.Config{URL: f.url})
	if err != nil {
		t.Fatal(err)
	}
	L := len(f.ids)
	lease, err := a.Publish(context.Background(), adapters.Publication{Namespace: "ab", Prompt: f.ids, KV: f.kv.Slice(0, L-1)})
	if !errors.Is(err, adapters.ErrNoPublish) || lease != nil {
		t.Errorf("Publish: %v, %v; want ErrNoPublish and no lease", lease, err)
	}
	a.Close()
}

// TestForwardStreamCloseCancels: closing the body stream of a forwarded
// streaming request (what the sidecar does when its client leaves) frees
// the engine's slot.
func TestForwardStreamCloseCancels(t *testing.T) {
	f := setup(t)
	req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.Header.SetMethod("POST")
	req.SetRequestURI("/v1/completions")
	req.Header.SetContentType("application/json")
	// ignore_eos and the whole context: long enough to be cut mid-stream.
	req.SetBodyString(`{"prompt":"Once upon a time","stream":true,"ignore_eos":true}`)
	if err := forward(f.url, req, resp); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(resp.BodyStream())
	line, err := br.ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "data: ") {
		t.Fatalf("first line %q, %v", line, err)
	}
	if s := f.e.Stats(); s.Running != 1 {
		t.Fatalf("stats %+v, want one running", s)
	}
	resp.CloseBodyStream()
	deadline := time.Now().Add(10 * time.Second)
	for f.e.Stats().Running != 0 {
		if time.Now().After(deadline) {
			t.Fatal("the engine kept decoding after the stream was closed")
		}
		time.Sleep(5 * time.Millisecond)
	}
	// The request was cut, not run to its end (512 - 5 prompt tokens).
	_, body, err := fasthttp.Get(nil, f.url+"/metrics")
	if err != nil {
		t.Fatal(err)
	}
	var gen int
	for _, l := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(l, "fusionrag_engine_generation_tokens_total "); ok {
			fmt.Sscan(v, &gen)
		}
	}
	if gen >= 507 {
		t.Errorf("generated %d tokens: the whole completion ran despite the close", gen)
	}
	t.Logf("generated %d of 507 tokens before the close stopped the request", gen)
}
