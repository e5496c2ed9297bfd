package engine

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fusionrag/fusionrag/fingerprint"
	"github.com/fusionrag/fusionrag/internal/modeltest"
	"github.com/fusionrag/fusionrag/internal/redistest"
	"github.com/fusionrag/fusionrag/internal/shareddata"
	"github.com/fusionrag/fusionrag/kvstore"
	"github.com/fusionrag/fusionrag/model"
	"github.com/fusionrag/fusionrag/prompt"
	"github.com/google/go-cmp/cmp"
	"github.com/redis/go-redis/v9"
)

// startModel serves m with an optional connector.
func startModel(tb testing.TB, m *model.Model, cfg Config, conn *Connector) (*Engine, string) {
	tb.Helper()
	lm := NewModelLM(m)
	opts := []Option{WithStopIDs(lm.StopIDs())}
	if conn != nil {
		opts = append(opts, WithConnector(conn))
	}
	e, err := New(cfg, lm, m.Tokenizer, opts...)
	if err != nil {
		tb.Fatal(err)
	}
	return e, serve(tb, e)
}

func completion(tb testing.TB, url, body string) completionResponse {
	tb.Helper()
	resp, err := http.Post(url+"/v1/completions", "application/json", strings.NewReader(body))
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		tb.Fatalf("status %d: %s", resp.StatusCode, b)
	}
	var r completionResponse
	if err := json.Unmarshal(b, &r); err != nil {
		tb.Fatal(err)
	}
	return r
}

// TestGoldenGreedyStories260K: the served greedy completion of the real
// model equals the golden continuation (independent fp32 reference,
// cross-checked with llama2.c run.c), text and token count.
func TestGoldenGreedyStories260K(t *testing.T) {
	m := modeltest.Stories(t)
	c := shareddata.LoadStoriesGolden(t).Cases[0]
	ids, err := prompt.Tokens(m.Tokenizer, nil, Prompt{Text: c.Prompt})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(c.PromptTokens, ids); diff != "" {
		t.Fatalf("prompt.Tokens (-golden +got):\n%s", diff)
	}
	_, url := startModel(t, m, Config{}, nil)
	r := completion(t, url, fmt.Sprintf(`{"prompt":%q,"max_tokens":%d,"temperature":0}`, c.Prompt, len(c.GreedyTokens)))
	if diff := cmp.Diff(c.GreedyText, r.Choices[0].Text); diff != "" {
		t.Errorf("greedy text (-golden +got):\n%s", diff)
	}
	if r.Usage.CompletionTokens != len(c.GreedyTokens) || r.Usage.PromptTokens != len(c.PromptTokens) {
		t.Errorf("usage %+v", r.Usage)
	}
}

// publishBlob encodes kv as the blob a publisher stores for prefix [0, n)
// of ids under namespace ns.
func publishBlob(tb testing.TB, m *model.Model, ns string, ids []int32, kv *model.Cache, dt kvstore.DType) *kvstore.Blob {
	tb.Helper()
	n := kv.Len()
	key, err := fingerprint.PrefixKey(fingerprint.KVNamespace(m.Fingerprint(), m.Tokenizer.Fingerprint(), ns), ids, n, fingerprint.BlockSize)
	if err != nil {
		tb.Fatal(err)
	}
	b, err := kvstore.FromFloat32(kvstore.Meta{DType: dt, Layers: kv.Layers, KVHeads: kv.KVHeads, HeadDim: kv.HeadDim,
		Tokens: n, PositionFree: true, Key: key, Check: fingerprint.CheckOf(ids[:n])}, kv.K, kv.V)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

const storyPrompt = "Once upon a time, there was a little girl named Lily. She loved to play outside in the park with her friends"

// TestInjectedKVSameGreedyOutput: with exact published KV the greedy
// output is identical to plain prefill, cached_tokens reports the loaded
// prefix, and KV is only used by requests that ask for it with the right
// namespace. Both transports: HTTP push and a shared store (real Redis).
func TestInjectedKVSameGreedyOutput(t *testing.T) {
	m := modeltest.Stories(t)
	sharedURL := redistest.Start(t).URL(0)
	lm := NewModelLM(m)
	conn, err := OpenConnector(sharedURL, "mem://?max=64MiB", lm, m.Tokenizer.Fingerprint())
	if err != nil {
		t.Fatal(err)
	}
	_, url := startModel(t, m, Config{}, conn)
	ids := must(prompt.Tokens(m.Tokenizer, nil, Prompt{Text: storyPrompt}))
	L := len(ids)
	req := func(ns string) completionResponse {
		kvp := ""
		if ns != "" {
			kvp = fmt.Sprintf(`,"kv_transfer_params":{"namespace":%q}`, ns)
		}
		return completion(t, url, fmt.Sprintf(`{"prompt":%q,"max_tokens":30,"temperature":0%s}`, storyPrompt, kvp))
	}
	base := req("")
	if base.Usage.PromptTokensDetails.CachedTokens != 0 {
		t.Fatalf("cached tokens %d without KV", base.Usage.PromptTokensDetails.CachedTokens)
	}

	// HTTP push of the whole prompt's KV (length L): the engine loads L-1.
	blob := publishBlob(t, m, "aa01", ids, modeltest.Prefill(t, m, ids[:L]), kvstore.Float32)
	enc := must(blob.Encode())
	putReq, _ := http.NewRequest(http.MethodPut, url+"/v1/kv/"+blob.Key.String(), bytes.NewReader(enc))
	resp, err := http.DefaultClient.Do(putReq)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("PUT /v1/kv: %d", resp.StatusCode)
	}

	// Shared store: a block-aligned prefix (32 tokens) under another namespace.
	pub, err := kvstore.Open(sharedURL)
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	n2 := L / fingerprint.BlockSize * fingerprint.BlockSize
	b2 := publishBlob(t, m, "bb02", ids, modeltest.Prefill(t, m, ids[:n2]), kvstore.Float32)
	// Publish it under the block key (the exact PrefixKey differs from a
	// block key): the engine probes block boundaries after exact lengths.
	probes := must(fingerprint.Lookup(fingerprint.KVNamespace(m.Fingerprint(), m.Tokenizer.Fingerprint(), "bb02"), ids, fingerprint.BlockSize))
	for _, p := range probes {
		if !p.Exact && p.Len == n2 {
			b2.Key = p.Key
		}
	}
	if err := pub.Put(context.Background(), b2); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		ns     string
		cached int
	}{
		{"aa01", L - 1}, // pushed, whole prompt: all but the last token
		{"bb02", n2},    // shared store, block boundary
		{"cc03", 0},     // nothing published
		{"", 0},         // no kv_transfer_params: never sees published KV
	}
	for _, tt := range tests {
		r := req(tt.ns)
		if diff := cmp.Diff(base.Choices[0].Text, r.Choices[0].Text); diff != "" {
			t.Errorf("ns %q: text differs from plain prefill (-plain +kv):\n%s", tt.ns, diff)
		}
		if got := r.Usage.PromptTokensDetails.CachedTokens; got != tt.cached {
			t.Errorf("ns %q: cached_tokens %d, want %d", tt.ns, got, tt.cached)
		}
	}
}

// TestCorruptAndMismatchedKVAreMisses: a blob whose payload was altered in
// the store, or a blob of the wrong shape, is a miss: plain prefill, same
// answer, no error to the client.
func TestCorruptAndMismatchedKVAreMisses(t *testing.T) {
	m := modeltest.Stories(t)
	addr := redistest.Start(t).Addr
	sharedURL := "redis://" + addr + "/0"
	conn, err := OpenConnector(sharedURL, "mem://?max=64MiB", NewModelLM(m), m.Tokenizer.Fingerprint())
	if err != nil {
		t.Fatal(err)
	}
	_, url := startModel(t, m, Config{}, conn)
	ids := must(prompt.Tokens(m.Tokenizer, nil, Prompt{Text: storyPrompt}))
	base := completion(t, url, fmt.Sprintf(`{"prompt":%q,"max_tokens":20,"temperature":0}`, storyPrompt))

	// Publish the exact KV, then flip one payload bit inside Redis.
	b := publishBlob(t, m, "dd04", ids, modeltest.Prefill(t, m, ids), kvstore.Float32)
	pub := must(kvstore.Open(sharedURL))
	if err := pub.Put(context.Background(), b); err != nil {
		t.Fatal(err)
	}
	pub.Close()
	raw := append([]byte(nil), must(b.Encode())...)
	raw[len(raw)-3] ^= 0x40
	rc := redis.NewClient(&redis.Options{Addr: addr})
	defer rc.Close()
	if err := rc.SetRange(context.Background(), "fusionrag:kv:{"+b.Key.String()+"}", int64(len(raw)-3), string(raw[len(raw)-3:len(raw)-2])).Err(); err != nil {
		t.Fatal(err)
	}
	r := completion(t, url, fmt.Sprintf(`{"prompt":%q,"max_tokens":20,"temperature":0,"kv_transfer_params":{"namespace":"dd04"}}`, storyPrompt))
	if r.Choices[0].Text != base.Choices[0].Text || r.Usage.PromptTokensDetails.CachedTokens != 0 {
		t.Errorf("corrupt blob: text %q cached %d, want plain %q and 0", r.Choices[0].Text, r.Usage.PromptTokensDetails.CachedTokens, base.Choices[0].Text)
	}
	if got := metricsText(t, url); !strings.Contains(got, `fusionrag_engine_kv_lookups_total{result="mismatch"} 1`) {
		t.Errorf("the corrupt blob was not counted as a mismatch:\n%s", got)
	}
	// A pushed blob of another model's shape is refused with 400.
	bad := must(kvstore.FromFloat32(kvstore.Meta{DType: kvstore.Float32, Layers: 1, KVHeads: 1, HeadDim: 2, Tokens: 1,
		PositionFree: true, Key: b.Key, Check: fingerprint.CheckOf(ids[:1])}, [][]float32{{1, 2}}, [][]float32{{3, 4}}))
	put, _ := http.NewRequest(http.MethodPut, url+"/v1/kv/"+b.Key.String(), bytes.NewReader(must(bad.Encode())))
	resp, err := http.DefaultClient.Do(put)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 400 || !strings.Contains(string(body), "shape") {
		t.Errorf("wrong-shape push: %d %s", resp.StatusCode, body)
	}
	put, _ = http.NewRequest(http.MethodPut, url+"/v1/kv/"+b.Key.String(), bytes.NewReader(raw))
	resp, err = http.DefaultClient.Do(put)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 400 {
		t.Errorf("corrupt push: %d, want 400", resp.StatusCode)
	}
}

// countingLM wraps an LM and records how many sequences its model calls
// served at once: overlapping Extend calls, or the size of an ExtendBatch
// (which it passes on when the wrapped LM batches).
type countingLM struct {
	LM
	mu                  sync.Mutex
	live, peak, batches int
	// gate, when set, is run by the next model call alone, before it
	// computes: a test holds the scheduler's first step there until all
	// its requests are admitted, so that batching does not depend on how
	// fast client goroutines are scheduled.
	gate atomic.Pointer[func()]
}

// wait runs the gate, once.
func (c *countingLM) wait() {
	if g := c.gate.Swap(nil); g != nil {
		(*g)()
	}
}

func (c *countingLM) NewSequence() Sequence { return &countingSeq{Sequence: c.LM.NewSequence(), c: c} }

func (c *countingLM) ExtendBatch(ctx context.Context, seqs []Sequence, tokens [][]int32) ([][]float32, []error) {
	c.wait()
	c.mu.Lock()
	c.peak = max(c.peak, len(seqs))
	c.batches++
	c.mu.Unlock()
	inner := make([]Sequence, len(seqs))
	for i, s := range seqs {
		inner[i] = s.(*countingSeq).Sequence
	}
	return c.LM.(BatchLM).ExtendBatch(ctx, inner, tokens)
}

type countingSeq struct {
	Sequence
	c *countingLM
}

func (s *countingSeq) Extend(ctx context.Context, t []int32) ([]float32, error) {
	s.c.wait()
	s.c.mu.Lock()
	s.c.live++
	s.c.peak = max(s.c.peak, s.c.live)
	s.c.mu.Unlock()
	defer func() { s.c.mu.Lock(); s.c.live--; s.c.mu.Unlock() }()
	return s.Sequence.Extend(ctx, t)
}

// streamText posts a streaming completion and returns its text and the
// times of its first and last events.
func streamText(tb testing.TB, url, body string) (text string, first, last time.Time) {
	resp, err := http.Post(url+"/v1/completions", "application/json", strings.NewReader(body))
	if err != nil {
		tb.Error(err)
		return
	}
	defer resp.Body.Close()
	dec := newSSEReader(resp.Body)
	var sb strings.Builder
	for {
		data, ok := dec.next()
		if !ok || data == "[DONE]" {
			break
		}
		if first.IsZero() {
			first = time.Now()
		}
		var c completionResponse
		if err := json.Unmarshal([]byte(data), &c); err != nil {
			tb.Errorf("event %q: %v", data, err)
			return
		}
		for _, ch := range c.Choices {
			sb.WriteString(ch.Text)
		}
	}
	return sb.String(), first, time.Now()
}

// TestConcurrentStreamsNoCrossTalk: 16 concurrent streaming requests (some
// greedy, some seeded sampling) each get exactly the answer they get alone;
// decoding overlaps (first tokens arrive before any request ends, and model
// calls served several sequences at once: batched decode steps). The
// wall-time ratio to running them one after the other is logged.
func TestConcurrentStreamsNoCrossTalk(t *testing.T) {
	m := modeltest.Stories(t)
	lm := &countingLM{LM: NewModelLM(m)}
	e, err := New(Config{MaxBatch: 16}, lm, m.Tokenizer, WithStopIDs(NewModelLM(m).StopIDs()))
	if err != nil {
		t.Fatal(err)
	}
	srvURL := serve(t, e)
	prompts := []string{"Once upon a time", "The cat", "Lily and Ben", "One day", "A big dog", "The sun was",
		"Tom had a red ball", "In the park", "Mom said", "The little bird", "Sara wanted", "There was a tree",
		"The boy ran", "Max liked to", "A girl named Sue", "The car"}
	bodies := make([]string, len(prompts))
	for i, p := range prompts {
		sampling := `"temperature":0`
		if i%2 == 1 {
			sampling = fmt.Sprintf(`"temperature":0.8,"top_p":0.9,"top_k":40,"seed":%d`, i)
		}
		bodies[i] = fmt.Sprintf(`{"prompt":%q,"max_tokens":120,"stream":true,"ignore_eos":true,%s}`, p, sampling)
	}
	solo := make([]string, len(prompts))
	t0 := time.Now()
	for i, b := range bodies {
		solo[i], _, _ = streamText(t, srvURL, b)
	}
	seqTime := time.Since(t0)
	lm.mu.Lock()
	soloCalls := lm.batches
	lm.mu.Unlock()
	got := make([]string, len(prompts))
	firsts := make([]time.Time, len(prompts))
	lasts := make([]time.Time, len(prompts))
	// The first model call of the concurrent run waits (at most 10 s)
	// until every request is admitted: with GOMAXPROCS 1 the engine could
	// otherwise finish one request before the next client even sent its
	// own (seen: a largest batch of 3), which says nothing about batching.
	gate := func() {
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
			if st := e.Stats(); st.Running+st.Waiting >= len(prompts) {
				return
			}
		}
	}
	lm.gate.Store(&gate)
	var wg sync.WaitGroup
	t1 := time.Now()
	for i, b := range bodies {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got[i], firsts[i], lasts[i] = streamText(t, srvURL, b)
		}()
	}
	wg.Wait()
	conTime := time.Since(t1)
	for i := range prompts {
		if got[i] != solo[i] {
			t.Errorf("request %d (%q): concurrent output differs from solo:\n solo %q\n conc %q", i, prompts[i], solo[i], got[i])
		}
		if solo[i] == "" {
			t.Errorf("request %d: empty output", i)
		}
	}
	// Interleaving, seen by the clients: at some instant several streams
	// were between their first and last token (a run-to-completion
	// scheduler serves one at a time). Not "most got a first token before
	// the first one ended": on a fast machine, or with GOMAXPROCS 1, the
	// first request can finish its 120 tokens (about 10 ms of this model)
	// before the other clients' requests arrive (seen: 1 of 16, with a
	// largest batch of 12).
	overlap := 0
	for i := range firsts {
		n := 0
		for j := range firsts {
			if !firsts[j].After(firsts[i]) && lasts[j].After(firsts[i]) {
				n++
			}
		}
		overlap = max(overlap, n)
	}
	if overlap < 2 {
		t.Errorf("decoding did not interleave: no two streams were between their first and last token at once")
	}
	if lm.peak < 2 {
		t.Errorf("no model call served two sequences at once (peak %d)", lm.peak)
	}
	// Each request takes 121 steps (120 tokens + the prompt); batched, the
	// 16 share most of theirs. Unbatched they would take 16 × 121 calls.
	if calls, steps := lm.batches-soloCalls, 121*len(prompts); calls > steps/2 {
		t.Errorf("16 concurrent requests took %d model calls for %d sequence steps: decode steps were not batched", calls, steps)
	} else {
		t.Logf("16 concurrent requests: %d model calls for %d sequence steps", calls, steps)
	}
	t.Logf("16 streams x 120 tokens: sequential %v, concurrent %v, ratio %.2f; largest batch %d sequences, %d batched calls; at most %d streams open at once",
		seqTime.Round(time.Millisecond), conTime.Round(time.Millisecond), conTime.Seconds()/seqTime.Seconds(), lm.peak, lm.batches, overlap)
}

func metricsText(tb testing.TB, url string) string {
	resp, err := http.Get(url + "/metrics")
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// TestStoreDownIsAMiss: with the shared Redis stalled (SIGSTOP: client
// timeouts) or killed, requests that ask for published KV are served by
// plain prefill (same answer, no cached tokens); each lookup counts one
// store error and then stops asking that store, so a dead store costs one
// timeout per request, not one per probe.
func TestStoreDownIsAMiss(t *testing.T) {
	m := modeltest.Stories(t)
	srv := redistest.Start(t)
	conn, err := OpenConnector(srv.URL(0)+"?timeout=300ms", "", NewModelLM(m), m.Tokenizer.Fingerprint())
	if err != nil {
		t.Fatal(err)
	}
	_, url := startModel(t, m, Config{}, conn)
	body := fmt.Sprintf(`{"prompt":%q,"max_tokens":12,"temperature":0%s}`, storyPrompt, "%s")
	base := completion(t, url, fmt.Sprintf(body, ""))
	for i, fault := range []struct {
		name string
		do   func() error
	}{
		{"stalled", func() error { return srv.Server.Stop() }},
		{"killed", func() error { srv.Kill(); return nil }},
	} {
		if err := fault.do(); err != nil {
			t.Fatal(err)
		}
		r := completion(t, url, fmt.Sprintf(body, `,"kv_transfer_params":{"namespace":"ee05"}`))
		if r.Choices[0].Text != base.Choices[0].Text || r.Usage.PromptTokensDetails.CachedTokens != 0 {
			t.Errorf("%s: %q cached %d, want plain %q", fault.name, r.Choices[0].Text, r.Usage.PromptTokensDetails.CachedTokens, base.Choices[0].Text)
		}
		want := fmt.Sprintf(`fusionrag_engine_kv_lookups_total{result="error"} %d`, i+1)
		if got := metricsText(t, url); !strings.Contains(got, want) {
			t.Errorf("%s: want %q (one store error per lookup):\n%s", fault.name, want, got)
		}
	}
}
