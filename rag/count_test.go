package rag

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/fusionrag/fusionrag/internal/proxytest"
	"github.com/fusionrag/fusionrag/prompt"
	"github.com/fusionrag/fusionrag/proxy"
)

// TestOneParseOneTokenization: one fused chat request through the real
// proxy and the real fuser decodes the OpenAI body once (prompt.ParseRequest,
// called by proxy.ParseRequest and kept in Request.Parsed) and tokenizes the
// prompt once (issue 17: before, the proxy decoded the messages itself, the
// fuser parsed the body twice and the engine once more; it tokenized twice,
// prompt ids then offsets). The proxy's own checks are scans (json.Valid,
// the member scan, the shapes of the messages) and decode no value of this
// body (proxy.Decodes). The proxy's upstream here is a canned answer, not
// the engine, so that the engine's own parse of the forwarded body
// (another process in production) is not counted; the adapter still
// publishes to the real engine.
func TestOneParseOneTokenization(t *testing.T) {
	fe := newFuserEnv(t, nil) // max_missing_fraction 1: the cold request computes its chunks and fuses
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"id":"x","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}]}`))
	}))
	defer up.Close()
	cfg := upstreamConfig(up.URL)
	cfg.Timeouts.Fusion = 30 * time.Second
	_, base := proxytest.Start(t, cfg, proxy.WithFuser(fe.f))

	before, decodes := prompt.Counts(), proxy.Decodes()
	code, h, body := postHeader(t, base+"/v1/chat/completions",
		ragChat(false, "Once upon a time", "Document: A\n"+storyA, "Document: B\n"+storyB))
	got, gotDecodes := prompt.Counts().Sub(before), proxy.Decodes()-decodes
	if code != 200 || !strings.HasPrefix(h, "path=fusion") {
		t.Fatalf("status %d, cache header %q (%s): want a fused request", code, h, body)
	}
	if want := (prompt.Count{Parses: 1, Encodes: 1}); got != want {
		t.Errorf("one fused request: %+v, want %+v", got, want)
	}
	if gotDecodes != 0 {
		t.Errorf("one fused request: the proxy decoded %d values of the body itself, want 0", gotDecodes)
	}
}

// TestWarmRemembersChunks: the background warm-up after a too_many_missing
// skip stores the request's chunks and remembers them for its tenant (as a
// fused request does), so that the tenant's later unmarked prompts find
// them; another tenant's index stays empty.
func TestWarmRemembersChunks(t *testing.T) {
	fe := newFuserEnv(t, func(c *proxy.Config) { c.Fusion.MaxMissingFraction = 0.5 })
	body := ragChat(false, "Once upon a time", "Document: A\n"+storyA, "Document: B\n"+storyB)
	r := fe.request(t, proxy.RouteChat, body, "tenant-a")
	if _, err := fe.f.Fuse(context.Background(), r); skipReason(err) != proxy.SkipTooManyMissing {
		t.Fatalf("cold request: %v, want skip %s", err, proxy.SkipTooManyMissing)
	}
	deadline := time.Now().Add(30 * time.Second)
	for len(fe.f.warming) > 0 {
		if time.Now().After(deadline) {
			t.Fatal("the warm-up did not finish in 30 s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if n, _ := fe.f.seen.len(r.Tenant); n != 2 {
		t.Errorf("tenant A remembers %d chunks after the warm-up, want 2", n)
	}
	other, _ := proxy.TenantOf("tenant-b", "")
	if n, _ := fe.f.seen.len(other); n != 0 {
		t.Errorf("tenant B remembers %d chunks, want 0", n)
	}
	if n := fe.f.budget.InUse(); n != 0 {
		t.Errorf("%d bytes of the memory budget still reserved after the warm-up, want 0", n)
	}
}
