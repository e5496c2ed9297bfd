package engine

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fusionrag/fusionrag/internal/streamtest"
	"github.com/fusionrag/fusionrag/kvstore"
	"github.com/fusionrag/fusionrag/model"
	"github.com/google/go-cmp/cmp"
)

// startFake serves an engine over a fakeLM on a loopback httptest server.
func startFake(t *testing.T, lm *fakeLM, cfg Config) (*Engine, string) {
	t.Helper()
	if lm.vocab == 0 {
		lm.vocab = 259
	}
	if lm.maxPos == 0 {
		lm.maxPos = 256
	}
	return startFakeLM(t, lm, cfg)
}

func post(t *testing.T, url, body string) (int, []byte) {
	t.Helper()
	resp, err := http.Post(url, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, b
}

// soloText runs the fake greedily on prompt (BOS + bytes) for n tokens, the
// reference any served completion must equal.
func soloText(lm *fakeLM, prompt string, n int) string {
	ids := append([]int32{1}, byteTok{}.Encode(prompt)...)
	var out []byte
	for range n {
		id := model.Argmax(fakeLogits(ids, 259, lm.eosEvery))
		if id == 2 {
			break
		}
		ids = append(ids, id)
		out = append(out, byte(id-3))
	}
	return string(out)
}

func TestCompletionMatchesReference(t *testing.T) {
	lm := &fakeLM{}
	_, url := startFake(t, lm, Config{})
	code, body := post(t, url+"/v1/completions", `{"model":"fusionrag","prompt":"hello","max_tokens":12,"temperature":0}`)
	if code != 200 {
		t.Fatalf("status %d: %s", code, body)
	}
	var r completionResponse
	if err := json.Unmarshal(body, &r); err != nil {
		t.Fatal(err)
	}
	want := soloText(lm, "hello", 12)
	if diff := cmp.Diff(want, r.Choices[0].Text); diff != "" {
		t.Errorf("text (-want +got):\n%s", diff)
	}
	if got := *r.Choices[0].FinishReason; got != "length" {
		t.Errorf("finish_reason %q, want length", got)
	}
	wantU := &Usage{PromptTokens: 6, CompletionTokens: 12, TotalTokens: 18, PromptTokensDetails: &TokenDetails{}}
	if diff := cmp.Diff(wantU, r.Usage); diff != "" {
		t.Errorf("usage (-want +got):\n%s", diff)
	}
	if r.Object != "text_completion" || !strings.HasPrefix(r.ID, "cmpl-") {
		t.Errorf("object %q id %q", r.Object, r.ID)
	}
}

func TestTokenPromptAndStop(t *testing.T) {
	lm := &fakeLM{}
	_, url := startFake(t, lm, Config{})
	ref := soloText(lm, "abc", 30)
	// Stop on a string that appears in the reference, straddling tokens.
	stop := ref[5:8]
	i := strings.Index(ref, stop)
	ids, _ := json.Marshal(append([]int32{1}, byteTok{}.Encode("abc")...))
	code, body := post(t, url+"/v1/completions",
		fmt.Sprintf(`{"prompt":%s,"max_tokens":30,"temperature":0,"stop":[%q]}`, ids, stop))
	if code != 200 {
		t.Fatalf("status %d: %s", code, body)
	}
	var r completionResponse
	json.Unmarshal(body, &r)
	if diff := cmp.Diff(ref[:i], r.Choices[0].Text); diff != "" {
		t.Errorf("text with stop %q (-want +got):\n%s", stop, diff)
	}
	if *r.Choices[0].FinishReason != "stop" {
		t.Errorf("finish_reason %q, want stop", *r.Choices[0].FinishReason)
	}
}

func TestChatNonStreaming(t *testing.T) {
	lm := &fakeLM{}
	_, url := startFake(t, lm, Config{})
	code, body := post(t, url+"/v1/chat/completions", `{"messages":[{"role":"system","content":"sys"},`+
		`{"role":"user","content":[{"type":"text","text":"doc"},{"type":"text","text":"q?"}]}],"max_tokens":8,"temperature":0}`)
	if code != 200 {
		t.Fatalf("status %d: %s", code, body)
	}
	var r chatResponse
	json.Unmarshal(body, &r)
	want := soloText(lm, "sys\n\ndoc\n\nq?", 8)
	if r.Choices[0].Message.Content != want || r.Choices[0].Message.Role != "assistant" || r.Object != "chat.completion" {
		t.Errorf("got %+v, want content %q", r, want)
	}
}

// sse reads a server-sent event stream: the data payloads, in order.
func sse(t *testing.T, r io.Reader) []string {
	t.Helper()
	var out []string
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := sc.Text()
		if line == "" {
			continue
		}
		data, ok := strings.CutPrefix(line, "data: ")
		if !ok {
			t.Fatalf("not an SSE data line: %q", line)
		}
		out = append(out, data)
	}
	return out
}

func TestStreamingFormat(t *testing.T) {
	lm := &fakeLM{}
	_, url := startFake(t, lm, Config{})
	for _, chat := range []bool{false, true} {
		t.Run(fmt.Sprint("chat=", chat), func(t *testing.T) {
			path, body := "/v1/completions", `{"prompt":"hi","max_tokens":5,"temperature":0,"stream":true,"stream_options":{"include_usage":true}}`
			if chat {
				path, body = "/v1/chat/completions", `{"messages":[{"role":"user","content":"hi"}],"max_tokens":5,"temperature":0,"stream":true,"stream_options":{"include_usage":true}}`
			}
			resp, err := http.Post(url+path, "application/json", strings.NewReader(body))
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
				t.Fatalf("content type %q", ct)
			}
			events := sse(t, resp.Body)
			if events[len(events)-1] != "[DONE]" {
				t.Fatalf("last event %q, want [DONE]", events[len(events)-1])
			}
			var text strings.Builder
			var finish string
			var usage *Usage
			ids := map[string]bool{}
			for i, ev := range events[:len(events)-1] {
				var c struct {
					ID      string `json:"id"`
					Object  string `json:"object"`
					Choices []struct {
						Text         string    `json:"text"`
						Delta        chatDelta `json:"delta"`
						FinishReason *string   `json:"finish_reason"`
					} `json:"choices"`
					Usage *Usage `json:"usage"`
				}
				if err := json.Unmarshal([]byte(ev), &c); err != nil {
					t.Fatalf("event %d %q: %v", i, ev, err)
				}
				ids[c.ID] = true
				wantObj := "text_completion"
				if chat {
					wantObj = "chat.completion.chunk"
				}
				if c.Object != wantObj {
					t.Errorf("event %d object %q", i, c.Object)
				}
				if chat && i == 0 && c.Choices[0].Delta.Role != "assistant" {
					t.Errorf("first chat chunk has no assistant role: %s", ev)
				}
				var raw map[string]json.RawMessage
				json.Unmarshal([]byte(ev), &raw)
				if u, ok := raw["usage"]; !ok || (c.Usage == nil && string(u) != "null") {
					t.Errorf("event %d: usage must be present (null until the last chunk): %s", i, ev)
				}
				if c.Usage != nil {
					if len(c.Choices) != 0 || usage != nil {
						t.Errorf("usage chunk must be last and have no choices: %s", ev)
					}
					usage = c.Usage
					continue
				}
				for _, ch := range c.Choices {
					text.WriteString(ch.Text)
					if ch.Delta.Content != nil {
						text.WriteString(*ch.Delta.Content)
					}
					if ch.FinishReason != nil {
						finish = *ch.FinishReason
					}
				}
			}
			if len(ids) != 1 {
				t.Errorf("chunk ids %v: want one id", ids)
			}
			prompt := "hi"
			if want := soloText(lm, prompt, 5); text.String() != want {
				t.Errorf("streamed text %q, want %q", text.String(), want)
			}
			if finish != "length" {
				t.Errorf("finish %q", finish)
			}
			if usage == nil || usage.CompletionTokens != 5 || usage.PromptTokens != 3 {
				t.Errorf("usage %+v", usage)
			}
		})
	}
}

func TestBadRequests(t *testing.T) {
	_, url := startFake(t, &fakeLM{maxPos: 64}, Config{})
	long := strings.Repeat("x", 100)
	tests := []struct {
		name, path, body string
		status           int
		param, code      string
		msg              string // substring
	}{
		{"malformed JSON", "/v1/completions", `{"prompt": "x",`, 400, "", "", "invalid JSON"},
		{"not an object", "/v1/chat/completions", `[1,2]`, 400, "", "", "invalid JSON"},
		{"missing prompt", "/v1/completions", `{"max_tokens":3}`, 400, "prompt", "", "required"},
		{"missing messages", "/v1/chat/completions", `{"prompt":"x"}`, 400, "messages", "", "required"},
		{"bad role", "/v1/chat/completions", `{"messages":[{"role":"wizard","content":"x"}]}`, 400, "messages[0].role", "", "role"},
		{"image part", "/v1/chat/completions", `{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"x"}}]}]}`, 400, "messages[0].content[0]", "", "text"},
		{"prompt too long", "/v1/completions", `{"prompt":"` + long + `"}`, 400, "prompt", "context_length_exceeded", "maximum context length is 64 tokens"},
		{"prompt+max too long", "/v1/completions", `{"prompt":"abc","max_tokens":100}`, 400, "prompt", "context_length_exceeded", "(4 in the prompt, 100 in the completion)"},
		{"temperature", "/v1/completions", `{"prompt":"a","temperature":3}`, 400, "temperature", "", "temperature"},
		{"top_p", "/v1/completions", `{"prompt":"a","top_p":0}`, 400, "top_p", "", "top_p"},
		{"n", "/v1/completions", `{"prompt":"a","n":2}`, 400, "n", "", "n = 2"},
		{"max_tokens 0", "/v1/completions", `{"prompt":"a","max_tokens":0}`, 400, "max_tokens", "", "at least 1"},
		{"token out of vocab", "/v1/completions", `{"prompt":[1,5000]}`, 400, "prompt", "", "outside the vocabulary"},
		{"negative token", "/v1/completions", `{"prompt":[-1]}`, 400, "prompt", "", "outside the vocabulary"},
		{"two prompts", "/v1/completions", `{"prompt":["a","b"]}`, 400, "prompt", "", "one prompt"},
		{"bad prompt type", "/v1/completions", `{"prompt":{"a":1}}`, 400, "prompt", "", "prompt must be"},
		{"too many stops", "/v1/completions", `{"prompt":"a","stop":["a","b","c","d","e"]}`, 400, "stop", "", "at most 4"},
		{"stream_options without stream", "/v1/completions", `{"prompt":"a","stream_options":{"include_usage":true}}`, 400, "stream_options", "", "stream"},
		{"bad namespace", "/v1/completions", `{"prompt":"a","kv_transfer_params":{"namespace":"zz"}}`, 400, "kv_transfer_params", "", "hex"},
		{"chat too long", "/v1/chat/completions", `{"messages":[{"role":"user","content":"` + long + `"}]}`, 400, "messages", "context_length_exceeded", "maximum context length"},
		{"echo", "/v1/completions", `{"prompt":"a","echo":true}`, 400, "echo", "", "not supported"},
		{"logprobs", "/v1/completions", `{"prompt":"a","logprobs":2}`, 400, "logprobs", "", "not supported"},
		{"chat logprobs", "/v1/chat/completions", `{"messages":[{"role":"user","content":"a"}],"logprobs":true}`, 400, "logprobs", "", "not supported"},
		{"unknown model", "/v1/completions", `{"model":"gpt-9","prompt":"a"}`, 404, "model", "model_not_found", "gpt-9"},
		{"unknown route", "/v1/nope", `{}`, 404, "", "", "not found"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, body := post(t, url+tt.path, tt.body)
			var eb struct {
				Error struct {
					Message string  `json:"message"`
					Type    string  `json:"type"`
					Param   *string `json:"param"`
					Code    *string `json:"code"`
				} `json:"error"`
			}
			if err := json.Unmarshal(body, &eb); err != nil {
				t.Fatalf("error body %q is not OpenAI-shaped: %v", body, err)
			}
			if code != tt.status {
				t.Errorf("status %d, want %d (%s)", code, tt.status, body)
			}
			deref := func(p *string) string {
				if p == nil {
					return ""
				}
				return *p
			}
			if deref(eb.Error.Param) != tt.param || deref(eb.Error.Code) != tt.code {
				t.Errorf("param %q code %q, want %q %q", deref(eb.Error.Param), deref(eb.Error.Code), tt.param, tt.code)
			}
			if eb.Error.Type != "invalid_request_error" || !strings.Contains(eb.Error.Message, tt.msg) {
				t.Errorf("error %+v, want type invalid_request_error and message containing %q", eb.Error, tt.msg)
			}
			// Every key of the OpenAI error object is present (null or not).
			var raw map[string]map[string]json.RawMessage
			json.Unmarshal(body, &raw)
			for _, k := range []string{"message", "type", "param", "code"} {
				if _, ok := raw["error"][k]; !ok {
					t.Errorf("error body lacks %q: %s", k, body)
				}
			}
		})
	}
}

func TestMethodsAndInfoRoutes(t *testing.T) {
	_, url := startFake(t, &fakeLM{}, Config{ModelName: "tiny"})
	resp, err := http.Get(url + "/v1/completions")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 405 {
		t.Errorf("GET /v1/completions: %d, want 405", resp.StatusCode)
	}
	resp, err = http.Get(url + "/v1/models")
	if err != nil {
		t.Fatal(err)
	}
	var models struct {
		Data []struct {
			ID, Object string
		}
	}
	json.NewDecoder(resp.Body).Decode(&models)
	resp.Body.Close()
	if len(models.Data) != 1 || models.Data[0].ID != "tiny" || models.Data[0].Object != "model" {
		t.Errorf("models %+v", models)
	}
	resp, err = http.Get(url + "/health")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("health %d", resp.StatusCode)
	}
	post(t, url+"/v1/completions", `{"prompt":"a","max_tokens":2}`)
	resp, err = http.Get(url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	m, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{
		`fusionrag_engine_requests_total{code="200",endpoint="/v1/completions"} 1`,
		`fusionrag_engine_requests_total{code="405",endpoint="/v1/completions"} 1`,
		"fusionrag_engine_generation_tokens_total 2",
		"fusionrag_engine_time_to_first_token_seconds_count 1",
	} {
		if !strings.Contains(string(m), want) {
			t.Errorf("metrics lack %q:\n%s", want, m)
		}
	}
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestDisconnectFreesSlot(t *testing.T) {
	lm := &fakeLM{perToken: 5 * time.Millisecond, maxPos: 100000}
	e, url := startFake(t, lm, Config{MaxBatch: 1})
	// Read until the first data event: the request holds the only slot.
	conn := streamtest.ReadUntil(t, url, streamtest.Request{Method: "POST", Path: "/v1/completions",
		Body: `{"prompt":"abc","max_tokens":50000,"stream":true}`}, "data: ")
	if s := e.Stats(); s.Running != 1 {
		t.Fatalf("stats %+v, want one running", s)
	}
	conn.Close()
	waitFor(t, "slot to be freed", func() bool { return e.Stats().Running == 0 })
	n := lm.extends.Load()
	time.Sleep(50 * time.Millisecond)
	if lm.extends.Load() != n {
		t.Errorf("decoding continued after the client left")
	}
	// The slot serves the next request.
	code, b := post(t, url+"/v1/completions", `{"prompt":"x","max_tokens":3}`)
	if code != 200 {
		t.Errorf("after disconnect: %d %s", code, b)
	}
}

func TestQueueFull(t *testing.T) {
	lm := &fakeLM{perToken: 20 * time.Millisecond}
	e, url := startFake(t, lm, Config{MaxBatch: 1, MaxQueue: 1})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	launch := func() {
		req, _ := http.NewRequestWithContext(ctx, "POST", url+"/v1/completions", strings.NewReader(`{"prompt":"a","max_tokens":100}`))
		go http.DefaultClient.Do(req)
	}
	launch()
	waitFor(t, "one running", func() bool { return e.Stats().Running == 1 })
	launch()
	waitFor(t, "one running and one waiting", func() bool { s := e.Stats(); return s.Running == 1 && s.Waiting == 1 })
	resp, err := http.Post(url+"/v1/completions", "application/json", strings.NewReader(`{"prompt":"a"}`))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 503 || !bytes.Contains(b, []byte("queue is full")) || resp.Header.Get("Retry-After") == "" {
		t.Errorf("got %d %s, want 503 queue full with Retry-After", resp.StatusCode, b)
	}
}

func TestTimeout(t *testing.T) {
	lm := &fakeLM{perToken: 20 * time.Millisecond}
	_, url := startFake(t, lm, Config{RequestTimeout: 50 * time.Millisecond})
	code, body := post(t, url+"/v1/completions", `{"prompt":"a","max_tokens":200}`)
	if code != http.StatusGatewayTimeout || !strings.Contains(string(body), "timed out") {
		t.Errorf("got %d %s, want 504", code, body)
	}
}

func TestShutdownFailsPending(t *testing.T) {
	lm := &fakeLM{perToken: 10 * time.Millisecond}
	e, url := startFake(t, lm, Config{})
	done := make(chan int)
	go func() {
		code, _ := post(t, url+"/v1/completions", `{"prompt":"a","max_tokens":200}`)
		done <- code
	}()
	waitFor(t, "running", func() bool { return e.Stats().Running == 1 })
	e.sched.close()
	if code := <-done; code != 503 {
		t.Errorf("status %d, want 503 for a request cut by shutdown", code)
	}
	if code, _ := post(t, url+"/v1/completions", `{"prompt":"a"}`); code != 503 {
		t.Errorf("after close: %d, want 503", code)
	}
}

// TestLongGenerationDoesNotBlockShort: a short request admitted while a long
// one decodes finishes long before it (decode steps interleave).
func TestLongGenerationDoesNotBlockShort(t *testing.T) {
	lm := &fakeLM{perToken: 2 * time.Millisecond, maxPos: 100000}
	e, url := startFake(t, lm, Config{MaxBatch: 4})
	longDone := make(chan struct{})
	go func() {
		defer close(longDone)
		post(t, url+"/v1/completions", `{"prompt":"long","max_tokens":2000,"ignore_eos":true}`)
	}()
	waitFor(t, "the long request to run", func() bool { return e.Stats().Running == 1 })
	code, _ := post(t, url+"/v1/completions", `{"prompt":"short","max_tokens":5}`)
	if code != 200 {
		t.Fatalf("short request: %d", code)
	}
	select {
	case <-longDone:
		t.Fatal("the short request only finished after the long one")
	default:
	}
	waitFor(t, "the short request to leave the batch", func() bool { return e.Stats().Running == 1 })
	select {
	case <-longDone:
		t.Error("the long request should still be running")
	default:
	}
}

// TestGracefulShutdown: Shutdown lets an in-flight stream finish, then stops.
func TestGracefulShutdown(t *testing.T) {
	lm := &fakeLM{perToken: time.Millisecond, vocab: 259, maxPos: 1000}
	e, err := New(Config{}, lm, byteTok{})
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go e.Serve(l)
	url := "http://" + l.Addr().String()
	resp, err := http.Post(url+"/v1/completions", "application/json", strings.NewReader(`{"prompt":"a","max_tokens":100,"stream":true,"ignore_eos":true}`))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	shut := make(chan error, 1)
	go func() { shut <- e.Shutdown(context.Background()) }()
	events := sse(t, resp.Body)
	if len(events) < 3 || events[len(events)-1] != "[DONE]" {
		t.Fatalf("stream cut by shutdown: %d events, last %q", len(events), events[len(events)-1])
	}
	if err := <-shut; err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	if _, err := http.Get(url + "/health"); err == nil {
		t.Error("server still accepting after Shutdown")
	}
}

// TestDecodeOverlapRatio: with a model whose step is latency-bound (the
// fake sleeps, as an accelerator-bound step would), 16 concurrent streams
// finish in a fraction of the time they take one after the other, and each
// gets the text it gets alone. The ratio is measured in the same run.
func TestDecodeOverlapRatio(t *testing.T) {
	lm := &fakeLM{perToken: time.Millisecond, maxPos: 1000}
	_, url := startFake(t, lm, Config{MaxBatch: 16, Workers: 8})
	body := func(i int) string {
		return fmt.Sprintf(`{"prompt":"p%d","max_tokens":40,"temperature":0,"stream":true,"ignore_eos":true}`, i)
	}
	read := func(i int) string {
		resp, err := http.Post(url+"/v1/completions", "application/json", strings.NewReader(body(i)))
		if err != nil {
			t.Error(err)
			return ""
		}
		defer resp.Body.Close()
		var sb strings.Builder
		r := newSSEReader(resp.Body)
		for {
			d, ok := r.next()
			if !ok || d == "[DONE]" {
				return sb.String()
			}
			var c completionResponse
			json.Unmarshal([]byte(d), &c)
			for _, ch := range c.Choices {
				sb.WriteString(ch.Text)
			}
		}
	}
	t0 := time.Now()
	for i := range 16 {
		if got, want := read(i), soloText(lm, fmt.Sprintf("p%d", i), 40); got != want {
			t.Fatalf("request %d alone: %q, want %q", i, got, want)
		}
	}
	seqTime := time.Since(t0)
	got := make([]string, 16)
	var wg sync.WaitGroup
	t1 := time.Now()
	for i := range 16 {
		wg.Add(1)
		go func() { defer wg.Done(); got[i] = read(i) }()
	}
	wg.Wait()
	conTime := time.Since(t1)
	for i := range 16 {
		if want := soloText(lm, fmt.Sprintf("p%d", i), 40); got[i] != want {
			t.Errorf("request %d concurrent: %q, want %q", i, got[i], want)
		}
	}
	ratio := conTime.Seconds() / seqTime.Seconds()
	t.Logf("16 streams x 40 steps of 1ms: sequential %v, concurrent %v, ratio %.2f (ideal with 8 workers: 0.125)",
		seqTime.Round(time.Millisecond), conTime.Round(time.Millisecond), ratio)
	if ratio > 0.9 {
		t.Errorf("concurrent/sequential time ratio %.2f: decoding did not overlap", ratio)
	}
}

// TestPushLimitsAndErrors: PUT /v1/kv/{key} refuses oversize bodies (413),
// bad keys and garbage (400), and answers 404 without a connector.
func TestPushLimitsAndErrors(t *testing.T) {
	_, plain := startFake(t, &fakeLM{}, Config{})
	push, err := kvstore.Open("mem://?max=1MiB")
	if err != nil {
		t.Fatal(err)
	}
	conn, err := NewConnector(ConnectorConfig{Model: "m", Tokenizer: "t", Layers: 1, KVHeads: 1, HeadDim: 2, Pushed: push})
	if err != nil {
		t.Fatal(err)
	}
	lm := &fakeLM{vocab: 259, maxPos: 256}
	e, err := New(Config{MaxKVBytes: 1000}, lm, byteTok{}, WithConnector(conn))
	if err != nil {
		t.Fatal(err)
	}
	srvURL := serve(t, e)
	key := strings.Repeat("ab", 16)
	put := func(url, key string, body []byte) (int, string) {
		req, _ := http.NewRequest(http.MethodPut, url+"/v1/kv/"+key, bytes.NewReader(body))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	for _, tt := range []struct {
		name, url, key string
		body           []byte
		status         int
	}{
		{"too large", srvURL, key, make([]byte, 2000), 413},
		{"bad key", srvURL, "xyz", []byte("x"), 400},
		{"garbage", srvURL, key, []byte("not a blob"), 400},
		{"no connector", plain, key, []byte("x"), 404},
	} {
		if code, body := put(tt.url, tt.key, tt.body); code != tt.status || !strings.Contains(body, `"error"`) {
			t.Errorf("%s: %d %s, want %d with an error body", tt.name, code, body, tt.status)
		}
	}
}
