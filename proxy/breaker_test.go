package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync/atomic"
	"testing"

	"github.com/sony/gobreaker/v2"
)

// TestEngineFailureIsNotAFusionFailure: when the engine fails the fused
// request and the original alike (overloaded: 503 to everything), the
// fusion path is not at fault and the breaker must not open: opening it
// would turn every request into a full prefill and add to the overload.
// The client gets the engine's own answer to the original request.
func TestEngineFailureIsNotAFusionFailure(t *testing.T) {
	var seen atomic.Int64
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen.Add(1)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = w.Write([]byte(`{"error":{"message":"engine overloaded","type":"server_error","param":null,"code":null}}`))
	}))
	defer up.Close()
	p, base := startProxy(t, upstreamConfig(up.URL), WithFuser(FuserFunc(func(context.Context, *Request) (*Plan, error) {
		return okPlan("ab"), nil
	})))
	for i := range 8 {
		if code, body := post(t, base+"/v1/chat/completions", chatBody); code != 503 {
			t.Fatalf("request %d: %d %s, want the engine's 503", i, code, body)
		}
	}
	if st, c := p.BreakerState(), p.breaker.Counts(); st != gobreaker.StateClosed || c.TotalFailures != 0 {
		t.Errorf("breaker %v with %d failures after an engine outage; want closed, 0", st, c.TotalFailures)
	}
	if n := seen.Load(); n != 16 {
		t.Errorf("engine saw %d requests, want 16 (fused, then original)", n)
	}
}

// TestFuserBadInputIsASkip: requests the engine itself will refuse (token
// ids outside the vocabulary next to known chunks) are skipped, not
// failures: a client must not open the breaker for every tenant by sending
// them. A prompt that ends with a known chunk leaves it as the question.
func TestFuserBadInputIsASkip(t *testing.T) {
	fe := newFuserEnv(t, nil)
	partsBody := `{"messages":[{"role":"system","content":"You tell stories."},{"role":"user","content":[{"type":"text","text":` +
		jsonString("Document: A\n"+storyA) + `},{"type":"text","text":` + jsonString("Document: B\n"+storyB) +
		`},{"type":"text","text":"Once upon a time"}]}],"max_tokens":2}`
	if _, err := fe.f.Fuse(context.Background(), fe.request(t, RouteChat, partsBody, "t")); err != nil {
		t.Fatal(err)
	}
	known := "You tell stories.\n\nDocument: A\n" + storyA + "\n\nDocument: B\n" + storyB
	ids := fe.f.tok.Encode(known)
	if fe.f.tok.AddBOS() {
		ids = append([]int32{fe.f.tok.BOS()}, ids...)
	}
	idsJSON := func(ids []int32) string { b, _ := json.Marshal(ids); return string(b) }
	vocab := int32(fe.f.m.Config.Vocab)
	for name, body := range map[string]string{
		"token out of vocabulary": `{"prompt":` + idsJSON(append(slices.Clone(ids), vocab+5)) + `,"max_tokens":2}`,
	} {
		_, err := fe.f.Fuse(context.Background(), fe.request(t, RouteCompletions, body, "t"))
		if !errors.Is(err, ErrSkip) {
			t.Errorf("%s: Fuse error %v, want a skip", name, err)
		}
	}
}
