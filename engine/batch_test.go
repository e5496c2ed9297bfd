package engine

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fusionrag/fusionrag/model"
	"github.com/google/go-cmp/cmp"
)

// batchFakeLM is fakeLM with ExtendBatch: one call (one sleep, as an
// accelerator-bound step would take) serves every sequence of the
// iteration. It records what each call carried.
type batchFakeLM struct {
	*fakeLM
	perCall time.Duration

	mu    sync.Mutex
	calls [][]int // per call, the number of tokens of each sequence
}

func (f *batchFakeLM) ExtendBatch(ctx context.Context, seqs []Sequence, tokens [][]int32) ([][]float32, []error) {
	sizes := make([]int, len(seqs))
	for i, t := range tokens {
		sizes[i] = len(t)
	}
	f.mu.Lock()
	f.calls = append(f.calls, sizes)
	f.mu.Unlock()
	logits, errs := make([][]float32, len(seqs)), make([]error, len(seqs))
	select {
	case <-time.After(f.perCall):
	case <-ctx.Done():
		for i := range errs {
			errs[i] = ctx.Err()
		}
		return logits, errs
	}
	for i, s := range seqs {
		fs := s.(*fakeSeq)
		fs.ids = append(fs.ids, tokens[i]...)
		logits[i] = fakeLogits(fs.ids, f.vocab, f.eosEvery)
	}
	return logits, errs
}

// startFakeLM serves an engine over lm on a loopback httptest server.
func startFakeLM(t *testing.T, lm LM, cfg Config) (*Engine, string) {
	t.Helper()
	e, err := New(cfg, lm, byteTok{})
	if err != nil {
		t.Fatal(err)
	}
	return e, serve(t, e)
}

func (f *batchFakeLM) snapshot() [][]int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([][]int(nil), f.calls...)
}

// complete posts a non-streaming completion and returns its text.
func complete(t *testing.T, url, body string) string {
	t.Helper()
	code, b := post(t, url+"/v1/completions", body)
	if code != http.StatusOK {
		t.Errorf("status %d: %s", code, b)
		return ""
	}
	var r completionResponse
	if err := json.Unmarshal(b, &r); err != nil || len(r.Choices) != 1 {
		t.Errorf("response %s: %v", b, err)
		return ""
	}
	return r.Choices[0].Text
}

// TestContinuousBatching: 16 concurrent requests with different prompts and
// lengths on a batching LM each get their solo answer; their steps share
// model calls (at most MaxBatch sequences per call), requests joining and
// leaving between calls.
func TestContinuousBatching(t *testing.T) {
	lm := &batchFakeLM{fakeLM: &fakeLM{vocab: 259, maxPos: 1000}, perCall: time.Millisecond}
	_, url := startFakeLM(t, lm, Config{MaxBatch: 8})
	const n = 16
	got := make([]string, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got[i] = complete(t, url, fmt.Sprintf(`{"prompt":"request %d","max_tokens":%d,"temperature":0,"ignore_eos":true}`, i, 10+3*i))
		}()
	}
	wg.Wait()
	steps := 0
	for i := range n {
		if want := soloText(lm.fakeLM, fmt.Sprintf("request %d", i), 10+3*i); got[i] != want {
			t.Errorf("request %d: %q, want %q", i, got[i], want)
		}
		steps += 10 + 3*i
	}
	calls := lm.snapshot()
	largest, sizes := 0, map[int]bool{}
	for _, c := range calls {
		largest = max(largest, len(c))
		sizes[len(c)] = true
	}
	if largest != 8 {
		t.Errorf("largest batch %d sequences, want MaxBatch = 8", largest)
	}
	if len(sizes) < 3 {
		t.Errorf("batch sizes %v: requests did not join and leave between steps", sizes)
	}
	if len(calls) > steps/2 {
		t.Errorf("%d model calls for %d decode steps: steps were not batched", len(calls), steps)
	}
	t.Logf("%d requests, %d decode steps, %d model calls, batch sizes seen %v", n, steps, len(calls), sizes)
}

// TestPrefillBudget: long prompts are prefilled in chunks of at most
// PrefillChunk tokens per step in all, while a decoding request keeps
// getting one token in every step.
func TestPrefillBudget(t *testing.T) {
	lm := &batchFakeLM{fakeLM: &fakeLM{vocab: 259, maxPos: 1000}, perCall: 2 * time.Millisecond}
	_, url := startFakeLM(t, lm, Config{MaxBatch: 4, PrefillChunk: 16})
	long := strings.Repeat("x", 60)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); complete(t, url, `{"prompt":"d","max_tokens":150,"ignore_eos":true}`) }()
	waitFor(t, "the decoding request to run", func() bool { return len(lm.snapshot()) > 3 })
	for range 3 {
		wg.Add(1)
		go func() { defer wg.Done(); complete(t, url, `{"prompt":"`+long+`","max_tokens":2}`) }()
	}
	wg.Wait()
	prefillCalls := 0
	for i, c := range lm.snapshot()[1:] { // [0] is the decoding request's own prompt
		i++
		decode, prefill := 0, 0
		for _, n := range c {
			if n == 1 {
				decode++
			} else {
				prefill += n
			}
		}
		if prefill > 16 {
			t.Errorf("call %d prefilled %d prompt tokens (sizes %v), budget 16", i, prefill, c)
		}
		if prefill > 0 {
			prefillCalls++
			if decode == 0 {
				t.Errorf("call %d (sizes %v): the decoding request skipped a step", i, c)
			}
		}
	}
	// 3 prompts of 62 tokens (BOS, 60 bytes, at least one chunk each).
	if prefillCalls < 3*62/16 {
		t.Errorf("%d calls carried prompt tokens, want at least %d", prefillCalls, 3*62/16)
	}
}

// TestBatchedCancelLeaves: a cancelled request leaves the batch at the next
// step; the others finish with their solo answers.
func TestBatchedCancelLeaves(t *testing.T) {
	lm := &batchFakeLM{fakeLM: &fakeLM{vocab: 259, maxPos: 100000}, perCall: 2 * time.Millisecond}
	e, url := startFakeLM(t, lm, Config{MaxBatch: 4})
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "POST", url+"/v1/completions", strings.NewReader(`{"prompt":"long","max_tokens":50000,"ignore_eos":true}`))
	go func() {
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
		}
	}()
	waitFor(t, "the long request to run", func() bool { return e.Stats().Running == 1 })
	done := make(chan string)
	go func() {
		done <- complete(t, url, `{"prompt":"short","max_tokens":30,"temperature":0,"ignore_eos":true}`)
	}()
	waitFor(t, "both to run", func() bool { return e.Stats().Running == 2 })
	cancel()
	waitFor(t, "the cancelled request to leave", func() bool { return e.Stats().Running <= 1 })
	if got, want := <-done, soloText(lm.fakeLM, "short", 30); got != want {
		t.Errorf("short request: %q, want %q", got, want)
	}
	waitFor(t, "the batch to empty", func() bool { return e.Stats().Running == 0 })
	n := len(lm.snapshot())
	time.Sleep(30 * time.Millisecond)
	if len(lm.snapshot()) != n {
		t.Error("model calls continued with nothing running")
	}
}

// TestModelLMExtendBatch: ExtendBatch gives every sequence exactly what its
// own Extend gives (same logits bits, same KV), and a sequence the model
// refuses fails alone.
func TestModelLMExtendBatch(t *testing.T) {
	m := benchModel(t)
	lm := NewModelLM(m)
	ctx := context.Background()
	prompts := [][]int32{benchIDs(5), benchIDs(9)[2:], {1, 40, 41}}
	newSeqs := func() []Sequence {
		var ss []Sequence
		for _, p := range prompts {
			s := lm.NewSequence()
			if _, err := s.Extend(ctx, p); err != nil {
				t.Fatal(err)
			}
			ss = append(ss, s)
		}
		return ss
	}
	solo, batch := newSeqs(), newSeqs()
	steps := [][]int32{{7}, {8, 9, 10}, {int32(m.Config.Vocab)}} // the last is out of vocab
	want := make([][]float32, 2)
	for i := range 2 {
		l, err := solo[i].Extend(ctx, steps[i])
		if err != nil {
			t.Fatal(err)
		}
		want[i] = l
	}
	got, errs := lm.ExtendBatch(ctx, batch, steps)
	if errs[0] != nil || errs[1] != nil || !errors.Is(errs[2], model.ErrToken) {
		t.Fatalf("errs %v, want nil, nil, ErrToken", errs)
	}
	if diff := cmp.Diff(want, got[:2]); diff != "" {
		t.Errorf("logits (-Extend +ExtendBatch):\n%s", diff)
	}
	for i := range 2 {
		if diff := cmp.Diff(solo[i].(*modelSeq).cache, batch[i].(*modelSeq).cache); diff != "" {
			t.Errorf("sequence %d KV (-Extend +ExtendBatch):\n%s", i, diff)
		}
	}
	if _, errs := lm.ExtendBatch(ctx, []Sequence{&fakeSeq{}}, [][]int32{{1}}); errs[0] == nil {
		t.Error("a foreign sequence was accepted")
	}
}
