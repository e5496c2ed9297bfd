package proxy

import (
	"context"
	"encoding/hex"
	"errors"
	"net"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc"
)

// receiver is a real OTLP/gRPC trace collector endpoint, in process.
type receiver struct {
	coltracepb.UnimplementedTraceServiceServer
	mu    sync.Mutex
	spans []*tracepb.Span
}

func (r *receiver) Export(_ context.Context, req *coltracepb.ExportTraceServiceRequest) (*coltracepb.ExportTraceServiceResponse, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, rs := range req.ResourceSpans {
		for _, ss := range rs.ScopeSpans {
			r.spans = append(r.spans, ss.Spans...)
		}
	}
	return &coltracepb.ExportTraceServiceResponse{}, nil
}

func (r *receiver) snapshot() []*tracepb.Span {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*tracepb.Span(nil), r.spans...)
}

func attrs(s *tracepb.Span) map[string]any {
	m := map[string]any{}
	for _, kv := range s.Attributes {
		switch v := kv.Value.Value.(type) {
		case *commonpb.AnyValue_StringValue:
			m[kv.Key] = v.StringValue
		case *commonpb.AnyValue_IntValue:
			m[kv.Key] = v.IntValue
		case *commonpb.AnyValue_DoubleValue:
			m[kv.Key] = v.DoubleValue
		case *commonpb.AnyValue_BoolValue:
			m[kv.Key] = v.BoolValue
		}
	}
	return m
}

// TestTracesReachOTLPReceiver: spans configured purely through the standard
// OTEL_* variables arrive at a gRPC collector with the phase structure and
// the hit-rate attributes.
func TestTracesReachOTLPReceiver(t *testing.T) {
	rcv := &receiver{}
	srv := grpc.NewServer()
	coltracepb.RegisterTraceServiceServer(srv, rcv)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Stop()

	t.Setenv("OTEL_TRACES_EXPORTER", "")
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://"+ln.Addr().String())
	t.Setenv("OTEL_EXPORTER_OTLP_INSECURE", "true")
	t.Setenv("OTEL_SERVICE_NAME", "fusionrag-test")
	tel, err := NewTelemetry(context.Background(), func(k string) (string, bool) {
		switch k {
		case "OTEL_EXPORTER_OTLP_ENDPOINT":
			return "http://" + ln.Addr().String(), true
		}
		return "", false
	})
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
	deadline := time.Now().Add(5 * time.Second)
	var spans []*tracepb.Span
	for {
		spans = rcv.snapshot()
		n := 0
		for _, s := range spans {
			if s.Name == SpanRequest {
				n++
			}
		}
		if n == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("receiver got %d spans, no 2 request spans", len(spans))
		}
		time.Sleep(20 * time.Millisecond)
	}
	var fused, fallback *tracepb.Span
	for _, s := range spans {
		if s.Name != SpanRequest {
			continue
		}
		switch attrs(s)[AttrPath] {
		case PathFusion:
			fused = s
		case PathFallback:
			fallback = s
		}
	}
	if fused == nil || fallback == nil {
		t.Fatalf("request spans by path: fused %v, fallback %v", fused != nil, fallback != nil)
	}
	got := attrs(fused)
	want := map[string]any{
		AttrHitRate: 0.75, AttrChunks: int64(4), AttrHits: int64(3), AttrMisses: int64(1), AttrRecomputedTokens: int64(42),
		AttrRatio: 0.15, AttrBytesLoaded: int64(1 << 20), AttrStrategy: "fusionrag", AttrPath: PathFusion,
	}
	for k, v := range want {
		if d := cmp.Diff(v, got[k]); d != "" {
			t.Errorf("fused span attribute %s (-want +got):\n%s", k, d)
		}
	}
	if r := attrs(fallback)[AttrFallbackReason]; r != ReasonFuserError {
		t.Errorf("fallback span reason = %v, want %s", r, ReasonFuserError)
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
	}{
		{map[string]string{}, false, false},
		{map[string]string{"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1"}, false, false},
		{map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1"}, false, true},
		{map[string]string{"OTEL_TRACES_EXPORTER": "zipkin"}, true, false},
		{map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}, true, false},
	} {
		tel, err := NewTelemetry(context.Background(), env(tt.env))
		if (err != nil) != tt.fail {
			t.Errorf("env %v: err %v, want failure %v", tt.env, err, tt.fail)
		}
		if tel != nil {
			if tel.Tracing() != tt.tracing {
				t.Errorf("env %v: Tracing() = %v, want %v", tt.env, tel.Tracing(), tt.tracing)
			}
			_ = tel.Shutdown(context.Background())
		}
	}
}

// TestPrometheusExposition checks the text format itself on a known state.
func TestPrometheusExposition(t *testing.T) {
	tel := testTelemetry(t)
	ctx := context.Background()
	tel.recordStats(ctx, Stats{Hits: 19, Misses: 1, RecomputedTokens: 10, BytesLoaded: 2048})
	var b strings.Builder
	if err := tel.WritePrometheus(ctx, &b); err != nil {
		t.Fatal(err)
	}
	text := b.String()
	for _, line := range []string{
		"# TYPE fusionrag_proxy_chunks_total counter",
		`fusionrag_proxy_chunks_total{result="hit"} 19`,
		`fusionrag_proxy_chunks_total{result="miss"} 1`,
		"# TYPE fusionrag_proxy_hit_rate gauge",
		"fusionrag_proxy_hit_rate 0.95",
		"fusionrag_proxy_loaded_bytes_total 2048",
		"fusionrag_proxy_recomputed_tokens_total 10",
	} {
		if !strings.Contains(text, line+"\n") {
			t.Errorf("exposition lacks %q:\n%s", line, text)
		}
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

// TestWriteMetricKinds pins the exposition of every sum and gauge kind:
// integer and float values, monotonic sums as counters named _total,
// labels sorted.
func TestWriteMetricKinds(t *testing.T) {
	attrs := attribute.NewSet(attribute.String("z", "1"), attribute.String("a", `q"x`))
	for _, tc := range []struct {
		name string
		data metricdata.Aggregation
		want string
	}{
		{"int counter", metricdata.Sum[int64]{IsMonotonic: true, DataPoints: []metricdata.DataPoint[int64]{{Attributes: attrs, Value: 7}}},
			"# HELP m_total d\n# TYPE m_total counter\nm_total{a=\"q\\\"x\",z=\"1\"} 7\n"},
		{"int up-down sum", metricdata.Sum[int64]{DataPoints: []metricdata.DataPoint[int64]{{Value: -3}}},
			"# HELP m d\n# TYPE m gauge\nm -3\n"},
		{"float counter", metricdata.Sum[float64]{IsMonotonic: true, DataPoints: []metricdata.DataPoint[float64]{{Value: 0.25}, {Attributes: attrs, Value: 1e21}}},
			"# HELP m_total d\n# TYPE m_total counter\nm_total 0.25\nm_total{a=\"q\\\"x\",z=\"1\"} 1e+21\n"},
		{"float up-down sum", metricdata.Sum[float64]{DataPoints: []metricdata.DataPoint[float64]{{Value: 2}}},
			"# HELP m d\n# TYPE m gauge\nm 2\n"},
		{"int gauge", metricdata.Gauge[int64]{DataPoints: []metricdata.DataPoint[int64]{{Value: 12}}},
			"# HELP m d\n# TYPE m gauge\nm 12\n"},
		{"float gauge", metricdata.Gauge[float64]{DataPoints: []metricdata.DataPoint[float64]{{Attributes: attrs, Value: 0.95}}},
			"# HELP m d\n# TYPE m gauge\nm{a=\"q\\\"x\",z=\"1\"} 0.95\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var b strings.Builder
			writeMetric(&b, metricdata.Metrics{Name: "m", Description: "d", Data: tc.data})
			if diff := cmp.Diff(tc.want, b.String()); diff != "" {
				t.Errorf("exposition (-want +got):\n%s", diff)
			}
		})
	}
}
