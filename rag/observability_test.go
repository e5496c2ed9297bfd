package rag

import (
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"

	"github.com/fusionrag/fusionrag/internal/otlptest"
	"github.com/fusionrag/fusionrag/internal/proxytest"
	"github.com/fusionrag/fusionrag/proxy"
)

// What an operator sees (issue 19): the cache header, hit and miss
// accounting over every eligible request, the documented spans.

// window is the chunk hit ratio between two scrapes, as a dashboard
// computes it from the counters: Δhit / (Δhit + Δmiss); -1 when no chunk
// was counted.
func window(before, after map[string]float64) (ratio, hits, misses float64) {
	hits = after[`fusionrag_proxy_chunks_total{result="hit"}`] - before[`fusionrag_proxy_chunks_total{result="hit"}`]
	misses = after[`fusionrag_proxy_chunks_total{result="miss"}`] - before[`fusionrag_proxy_chunks_total{result="miss"}`]
	if hits+misses == 0 {
		return -1, 0, 0
	}
	return hits / (hits + misses), hits, misses
}

// TestHitRatioDropsOnAllMissTraffic: through the real Fuser and engine,
// warm traffic reads hit=2/2 in the header and a windowed ratio of 1; then
// all-miss traffic, which the fuser skips as too_many_missing, reads
// hit=0/2 and moves the miss counter, so the windowed ratio drops to 0 (the
// since-start gauge this replaces stayed at 1). A request with no chunk
// recognised counts as lookups{result="none"}.
func TestHitRatioDropsOnAllMissTraffic(t *testing.T) {
	fe := newFuserEnv(t, func(c *proxy.Config) { c.Fusion.MaxMissingFraction = 0.5 })
	cfg := upstreamConfig(fe.engine)
	cfg.Fusion.MaxMissingFraction = 0.5
	cfg.Timeouts.Fusion = 30 * time.Second
	p, base := proxytest.Start(t, cfg, proxy.WithFuser(fe.f))
	url := base + "/v1/chat/completions"
	docA, docB := "Document: A\n"+storyA, "Document: B\n"+storyB

	// Cold: both chunks missing, skipped; the fuser warms them in the
	// background, and the same request fuses once they are stored.
	deadline := time.Now().Add(30 * time.Second)
	for first := true; ; first = false {
		code, h, body := postHeader(t, url, ragChat(false, "Once upon a time", docA, docB))
		if code != 200 {
			t.Fatalf("status %d: %s", code, body)
		}
		if first && h != "path=passthrough reason=too_many_missing hit=0/2" {
			t.Errorf("cold request's header %q, want path=passthrough reason=too_many_missing hit=0/2", h)
		}
		if strings.HasPrefix(h, "path=fusion") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("never fused after the warm-up; last header %q", h)
		}
		time.Sleep(50 * time.Millisecond)
	}

	m0 := scrape(t, p)
	for range 2 {
		_, h, _ := postHeader(t, url, ragChat(false, "Once upon a time", docA, docB))
		if !regexp.MustCompile(`^path=fusion hit=2/2 recomputed=\d+$`).MatchString(h) {
			t.Errorf("warm request's header %q, want path=fusion hit=2/2 recomputed=N", h)
		}
	}
	// Streamed: the header comes with the response head, before the events.
	_, h, body := postHeader(t, url, ragChat(true, "Once upon a time", docA, docB))
	if !strings.HasPrefix(h, "path=fusion hit=2/2 ") || !strings.Contains(body, "data: ") {
		t.Errorf("streamed warm request: header %q, body %.80q", h, body)
	}
	m1 := scrape(t, p)
	warm, wh, wm := window(m0, m1)
	t.Logf("warm window: %v hits, %v misses, ratio %.2f", wh, wm, warm)
	if warm != 1 {
		t.Errorf("warm window ratio %v (hits %v, misses %v), want 1", warm, wh, wm)
	}

	const cold = 3
	for i := range cold {
		d1 := fmt.Sprintf("Document: cold %d\n%s", i, storyB)
		d2 := fmt.Sprintf("Document: also cold %d\n%s", i, storyA)
		_, h, _ := postHeader(t, url, ragChat(false, "The end", d1, d2))
		if h != "path=passthrough reason=too_many_missing hit=0/2" {
			t.Errorf("all-miss request %d: header %q, want path=passthrough reason=too_many_missing hit=0/2", i, h)
		}
	}
	m2 := scrape(t, p)
	missed, mh, mm := window(m1, m2)
	t.Logf("all-miss window: %v hits, %v misses, ratio %.2f", mh, mm, missed)
	if missed != 0 || mm != 2*cold {
		t.Errorf("all-miss window: ratio %v, %v hits, %v misses; want 0, 0, %d", missed, mh, mm, 2*cold)
	}
	if d := m2[`fusionrag_proxy_lookups_total{result="miss"}`] - m1[`fusionrag_proxy_lookups_total{result="miss"}`]; d != cold {
		t.Errorf("lookups{result=miss} moved by %v, want %d", d, cold)
	}
	if d := m2[`fusionrag_proxy_skips_total{reason="too_many_missing"}`] - m1[`fusionrag_proxy_skips_total{reason="too_many_missing"}`]; d != cold {
		t.Errorf("skips{too_many_missing} moved by %v, want %d", d, cold)
	}

	// No chunk recognised: no hit, no miss, a lookup that found none.
	_, h, _ = postHeader(t, url, `{"max_tokens":2,"messages":[{"role":"user","content":"Once upon a time"}]}`)
	if h != "path=passthrough reason=no_chunks" {
		t.Errorf("chunkless request: header %q, want path=passthrough reason=no_chunks", h)
	}
	m3 := scrape(t, p)
	if d := m3[`fusionrag_proxy_lookups_total{result="none"}`] - m2[`fusionrag_proxy_lookups_total{result="none"}`]; d != 1 {
		t.Errorf("lookups{result=none} moved by %v, want 1", d)
	}
	if r, _, _ := window(m2, m3); r != -1 {
		t.Errorf("a chunkless request moved the chunk counters (ratio %v)", r)
	}
}

// documentedSpans returns the span names docs/observability.md lists in
// its spans table (rows starting "| `name` |").
func documentedSpans(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile("../docs/observability.md")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, m := range regexp.MustCompile("(?m)^\\| `((?:proxy|fusion)\\.[a-z_]+)` \\|").FindAllStringSubmatch(string(b), -1) {
		names = append(names, m[1])
	}
	if len(names) < 6 {
		t.Fatalf("docs/observability.md lists %d spans (%v): the table's format changed?", len(names), names)
	}
	return names
}

// TestOTLPEveryDocumentedSpan: with the real Fuser, engine and store, an
// OTLP/gRPC receiver gets every span docs/observability.md documents, the
// phases as children of the request span, fusion.lookup with the chunk
// counts, and the metrics pushed over OTLP.
func TestOTLPEveryDocumentedSpan(t *testing.T) {
	rcv, env := otlptest.Start(t)
	tel, err := proxy.NewTelemetry(context.Background(), env)
	if err != nil {
		t.Fatal(err)
	}
	defer tel.Shutdown(context.Background())
	fe := newFuserEnv(t, nil) // max_missing_fraction 1: a cold request computes its chunks and fuses
	cfg := upstreamConfig(fe.engine)
	cfg.Timeouts.Fusion = 30 * time.Second
	_, base := proxytest.Start(t, cfg, proxy.WithTelemetry(tel), proxy.WithFuser(fe.f))
	code, h, body := postHeader(t, base+"/v1/chat/completions",
		ragChat(false, "Once upon a time", "Document: A\n"+storyA, "Document: B\n"+storyB))
	if code != 200 || !strings.HasPrefix(h, "path=fusion hit=0/2 ") {
		t.Fatalf("status %d, header %q: %s", code, h, body)
	}
	if err := tel.ForceFlush(context.Background()); err != nil {
		t.Fatal(err)
	}
	spans := otlptest.WaitSpans(t, rcv, proxy.SpanRequest, 1)
	var req *tracepb.Span
	byName := map[string]*tracepb.Span{}
	for _, s := range spans {
		byName[s.Name] = s
		if s.Name == proxy.SpanRequest {
			req = s
		}
	}
	for _, name := range documentedSpans(t) {
		s := byName[name]
		if s == nil {
			t.Errorf("documented span %s not received (got %d spans)", name, len(spans))
			continue
		}
		if name != proxy.SpanRequest && hex.EncodeToString(s.ParentSpanId) != hex.EncodeToString(req.SpanId) {
			t.Errorf("%s is not a child of %s", name, proxy.SpanRequest)
		}
		if s.GetStatus().GetCode() == tracepb.Status_STATUS_CODE_ERROR {
			t.Errorf("%s has status ERROR on a fused request: %v", name, s.GetStatus())
		}
	}
	if lk := byName[proxy.SpanLookup]; lk != nil {
		a := otlptest.Attrs(lk)
		if a[proxy.AttrChunks] != int64(2) || a[proxy.AttrHits] != int64(0) || a[proxy.AttrMisses] != int64(2) {
			t.Errorf("%s attributes %v, want 2 chunks, 0 hits, 2 misses", proxy.SpanLookup, a)
		}
		if lk.EndTimeUnixNano < lk.StartTimeUnixNano {
			t.Errorf("%s ends before it starts", proxy.SpanLookup)
		}
	}
	if got := rcv.SumPoints("fusionrag.proxy.chunks", "result"); got["miss"] != 2 {
		t.Errorf("pushed fusionrag.proxy.chunks by result = %v, want miss 2", got)
	}
	if got := rcv.SumPoints("fusionrag.proxy.lookups", "result"); got[proxy.LookupMiss] != 1 {
		t.Errorf("pushed fusionrag.proxy.lookups by result = %v, want miss 1", got)
	}
}

// What an operator sees (issue 19): the cache header, hit and miss
// accounting over every eligible request, the documented spans.

// ragChat is a chat request whose last user message carries one content
// part per document and the question last (segment convention a).
func ragChat(stream bool, question string, docs ...string) string {
	var parts []string
	for _, d := range docs {
		parts = append(parts, `{"type":"text","text":`+jsonString(d)+`}`)
	}
	parts = append(parts, `{"type":"text","text":`+jsonString(question)+`}`)
	s := ""
	if stream {
		s = `"stream":true,`
	}
	return `{` + s + `"max_tokens":2,"temperature":0,"messages":[{"role":"system","content":"You tell stories."},{"role":"user","content":[` +
		strings.Join(parts, ",") + `]}]}`
}

// postHeader posts body and returns the status, the cache header and the
// response body (read whole, after the header was taken).
func postHeader(t *testing.T, url, body string) (int, string, string) {
	t.Helper()
	resp, err := http.Post(url, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	h := resp.Header.Get(proxy.HeaderCache)
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, h, string(b)
}
