package proxy

import (
	"context"
	"encoding/hex"
	"errors"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/sony/gobreaker/v2"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"

	"github.com/fusionrag/fusionrag/internal/otlptest"
)

// TestTracesReachOTLPReceiver: spans configured purely through the standard
// OTEL_* variables arrive at a gRPC collector with the phase structure and
// the hit-rate attributes.
func TestTracesReachOTLPReceiver(t *testing.T) {
	rcv, env := otlptest.Start(t)
	tel, err := NewTelemetry(context.Background(), env)
	if err != nil {
		t.Fatal(err)
	}
	defer tel.Shutdown(context.Background())

	up := httptest.NewServer(&recorder{})
	defer up.Close()
	fail := false
	var mu sync.Mutex
	_, base := startProxy(t, upstreamConfig(up.URL), WithTelemetry(tel), WithFuser(FuserFunc(func(ctx context.Context, r *Request) (*Plan, error) {
		for _, phase := range []string{SpanSegment, SpanLookup, SpanRecompute, SpanPublish} {
			_, sp := StartPhase(ctx, phase)
			sp.End()
		}
		mu.Lock()
		defer mu.Unlock()
		if fail {
			return nil, errors.New("recompute: out of memory")
		}
		return okPlan("ns"), nil
	})))
	if code, _ := post(t, base+"/v1/chat/completions", chatBody); code != 200 {
		t.Fatal(code)
	}
	mu.Lock()
	fail = true
	mu.Unlock()
	if code, _ := post(t, base+"/v1/chat/completions", chatBody); code != 200 {
		t.Fatal(code)
	}
	if err := tel.ForceFlush(context.Background()); err != nil {
		t.Fatal(err)
	}
	spans := otlptest.WaitSpans(t, rcv, SpanRequest, 2)
	var fused, fallback *tracepb.Span
	for _, s := range spans {
		if s.Name != SpanRequest {
			continue
		}
		switch otlptest.Attrs(s)[AttrPath] {
		case PathFusion:
			fused = s
		case PathFallback:
			fallback = s
		}
	}
	if fused == nil || fallback == nil {
		t.Fatalf("request spans by path: fused %v, fallback %v", fused != nil, fallback != nil)
	}
	got := otlptest.Attrs(fused)
	want := map[string]any{
		AttrHitRate: 0.75, AttrChunks: int64(4), AttrHits: int64(3), AttrMisses: int64(1), AttrRecomputedTokens: int64(42),
		AttrRatio: 0.15, AttrBytesLoaded: int64(1 << 20), AttrStrategy: "fusionrag", AttrPath: PathFusion,
	}
	for k, v := range want {
		if d := cmp.Diff(v, got[k]); d != "" {
			t.Errorf("fused span attribute %s (-want +got):\n%s", k, d)
		}
	}
	if r := otlptest.Attrs(fallback)[AttrFallbackReason]; r != ReasonFuserError {
		t.Errorf("fallback span reason = %v, want %s", r, ReasonFuserError)
	}
	// The span that carries the exception event says Error, with why.
	if st := fallback.GetStatus(); st.GetCode() != tracepb.Status_STATUS_CODE_ERROR || !strings.Contains(st.GetMessage(), ReasonFuserError) {
		t.Errorf("fallback span status = %v, want ERROR naming %s", st, ReasonFuserError)
	}
	if st := fused.GetStatus(); st.GetCode() == tracepb.Status_STATUS_CODE_ERROR {
		t.Errorf("fused span status = %v, want not ERROR", st)
	}
	// Metrics went over OTLP too, the lookups counter among them.
	if got := rcv.SumPoints("fusionrag.proxy.lookups", "result"); got[LookupPartial] != 1 || got[LookupUnknown] != 1 {
		t.Errorf("pushed fusionrag.proxy.lookups by result = %v, want partial 1 (the fused 3/4) and unknown 1 (the failure)", got)
	}
	// Phase spans are children of their request span; forwards too.
	children := map[string][]string{}
	for _, s := range spans {
		children[hex.EncodeToString(s.ParentSpanId)] = append(children[hex.EncodeToString(s.ParentSpanId)], s.Name)
	}
	kids := strings.Join(children[hex.EncodeToString(fused.SpanId)], ",")
	for _, name := range []string{SpanSegment, SpanLookup, SpanRecompute, SpanPublish, SpanForward} {
		if !strings.Contains(kids, name) {
			t.Errorf("fused request span's children %q lack %s", kids, name)
		}
	}
}

func TestTelemetryEnv(t *testing.T) {
	env := func(m map[string]string) func(string) (string, bool) {
		return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
	}
	for _, tt := range []struct {
		env     map[string]string
		fail    bool
		tracing bool // spans are started (an exporter is configured)
		metrics bool // metrics are pushed over OTLP
	}{
		{map[string]string{}, false, false, false},
		{map[string]string{"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1"}, false, false, true},
		{map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1"}, false, true, true},
		{map[string]string{"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "http://127.0.0.1:1"}, false, false, true},
		{map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1", "OTEL_METRICS_EXPORTER": "none"}, false, true, false},
		{map[string]string{"OTEL_TRACES_EXPORTER": "zipkin"}, true, false, false},
		{map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}, true, false, false},
		{map[string]string{"OTEL_METRICS_EXPORTER": "prometheus"}, true, false, false},
		{map[string]string{"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "http://127.0.0.1:1", "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": "http/json"}, true, false, false},
	} {
		tel, err := NewTelemetry(context.Background(), env(tt.env))
		if (err != nil) != tt.fail {
			t.Errorf("env %v: err %v, want failure %v", tt.env, err, tt.fail)
		}
		if tel != nil {
			if tel.Tracing() != tt.tracing {
				t.Errorf("env %v: Tracing() = %v, want %v", tt.env, tel.Tracing(), tt.tracing)
			}
			if tel.MetricsOTLP() != tt.metrics {
				t.Errorf("env %v: MetricsOTLP() = %v, want %v", tt.env, tel.MetricsOTLP(), tt.metrics)
			}
			// The endpoints are unreachable: a bounded shutdown, or the
			// metric reader's last push waits out its export timeout.
			ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
			_ = tel.Shutdown(ctx)
			cancel()
		}
	}
}

// TestPrometheusExposition checks the page the OpenTelemetry Prometheus
// exporter writes on a known state: the names (dots to underscores, _total
// on counters, unit suffixes), sorted labels, histogram series.
func TestPrometheusExposition(t *testing.T) {
	tel := testTelemetry(t)
	ctx := context.Background()
	tel.recordLookup(ctx, &Stats{Chunks: 20, Hits: 19, Misses: 1})
	tel.recordLookup(ctx, &Stats{Chunks: 4, Misses: 4})
	tel.recordLookup(ctx, &Stats{})
	tel.recordLookup(ctx, nil)
	tel.recordFused(ctx, Stats{RecomputedTokens: 10, BytesLoaded: 2048})
	tel.breakerState = func() gobreaker.State { return gobreaker.StateOpen }
	var b strings.Builder
	if err := tel.WritePrometheus(ctx, &b); err != nil {
		t.Fatal(err)
	}
	text := b.String()
	for _, line := range []string{
		"# TYPE fusionrag_proxy_chunks_total counter",
		`fusionrag_proxy_chunks_total{result="hit"} 19`,
		`fusionrag_proxy_chunks_total{result="miss"} 5`,
		"# TYPE fusionrag_proxy_lookups_total counter",
		`fusionrag_proxy_lookups_total{result="partial"} 1`,
		`fusionrag_proxy_lookups_total{result="miss"} 1`,
		`fusionrag_proxy_lookups_total{result="none"} 1`,
		`fusionrag_proxy_lookups_total{result="unknown"} 1`,
		"fusionrag_proxy_loaded_bytes_total 2048",
		"fusionrag_proxy_recomputed_tokens_total 10",
		"# TYPE fusionrag_proxy_breaker_state gauge",
		"fusionrag_proxy_breaker_state 2",
	} {
		if !strings.Contains(text, line+"\n") {
			t.Errorf("exposition lacks %q:\n%s", line, text)
		}
	}
	if strings.Contains(text, "hit_rate") {
		t.Errorf("the since-start hit_rate gauge is back (it hid all-miss traffic):\n%s", text)
	}
	tel.ttft.Record(ctx, 0.003)
	b.Reset()
	_ = tel.WritePrometheus(ctx, &b)
	m := parseExposition(t, b.String())
	if m[`fusionrag_proxy_ttft_seconds_bucket{le="0.0025"}`] != 0 || m[`fusionrag_proxy_ttft_seconds_bucket{le="0.005"}`] != 1 ||
		m[`fusionrag_proxy_ttft_seconds_bucket{le="+Inf"}`] != 1 || m[`fusionrag_proxy_ttft_seconds_count`] != 1 {
		t.Errorf("histogram series wrong:\n%s", b.String())
	}
}

// TestLookupResult pins the classification of fusionrag.proxy.lookups.
func TestLookupResult(t *testing.T) {
	for _, tc := range []struct {
		s    *Stats
		want string
	}{
		{nil, LookupUnknown},
		{&Stats{}, LookupNone},
		{&Stats{Chunks: 3}, LookupUnknown}, // recognised, never looked up
		{&Stats{Chunks: 3, Hits: 3}, LookupHit},
		{&Stats{Chunks: 3, Hits: 1, Misses: 2}, LookupPartial},
		{&Stats{Chunks: 3, Misses: 3}, LookupMiss},
	} {
		if got := lookupResults[lookupResult(tc.s)]; got != tc.want {
			t.Errorf("lookupResult(%+v) = %s, want %s", tc.s, got, tc.want)
		}
	}
}
