// Package otlptest is a real OTLP/gRPC collector endpoint in process, for
// tests: it receives the traces and metrics the sidecar exports (the same
// gRPC services an OpenTelemetry Collector serves) and lets a test read
// them back. It imports no package of this module, so that package proxy's
// own tests can use it too.
package otlptest

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	colmetricpb "go.opentelemetry.io/proto/otlp/collector/metrics/v1"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	metricpb "go.opentelemetry.io/proto/otlp/metrics/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc"
)

// Receiver holds what was exported to it: every span, and the latest push
// of each metric. Safe for concurrent use.
type Receiver struct {
	coltracepb.UnimplementedTraceServiceServer
	mu      sync.Mutex
	spans   []*tracepb.Span
	metrics map[string]*metricpb.Metric // latest push of each metric, by name
	service map[string]string           // metric name -> service.name of its resource
}

// Export implements the trace service.
func (r *Receiver) Export(_ context.Context, req *coltracepb.ExportTraceServiceRequest) (*coltracepb.ExportTraceServiceResponse, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, rs := range req.ResourceSpans {
		for _, ss := range rs.ScopeSpans {
			r.spans = append(r.spans, ss.Spans...)
		}
	}
	return &coltracepb.ExportTraceServiceResponse{}, nil
}

// Spans returns a copy of the spans received so far.
func (r *Receiver) Spans() []*tracepb.Span {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*tracepb.Span(nil), r.spans...)
}

// metricsService is the metrics service of a Receiver (its Export has
// another signature than the trace service's).
type metricsService struct {
	colmetricpb.UnimplementedMetricsServiceServer
	r *Receiver
}

func (m metricsService) Export(_ context.Context, req *colmetricpb.ExportMetricsServiceRequest) (*colmetricpb.ExportMetricsServiceResponse, error) {
	m.r.mu.Lock()
	defer m.r.mu.Unlock()
	if m.r.metrics == nil {
		m.r.metrics = map[string]*metricpb.Metric{}
	}
	if m.r.service == nil {
		m.r.service = map[string]string{}
	}
	for _, rm := range req.ResourceMetrics {
		svc := ""
		for _, kv := range rm.GetResource().GetAttributes() {
			if kv.Key == "service.name" {
				svc = kv.Value.GetStringValue()
			}
		}
		for _, sm := range rm.ScopeMetrics {
			for _, x := range sm.Metrics {
				m.r.metrics[x.Name] = x
				m.r.service[x.Name] = svc
			}
		}
	}
	return &colmetricpb.ExportMetricsServiceResponse{}, nil
}

// Metric returns the latest push of the metric named name (its
// OpenTelemetry name, e.g. "fusionrag.proxy.chunks"), nil when none came.
func (r *Receiver) Metric(name string) *metricpb.Metric {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.metrics[name]
}

// Service returns the service.name of the resource that last pushed the
// metric named name ("" when none came).
func (r *Receiver) Service(name string) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.service[name]
}

// SumPoints returns a pushed counter's points as attribute value -> value
// for one attribute key (points without the key under "").
func (r *Receiver) SumPoints(name, key string) map[string]int64 {
	out := map[string]int64{}
	m := r.Metric(name)
	if m == nil || m.GetSum() == nil {
		return out
	}
	for _, p := range m.GetSum().DataPoints {
		v := ""
		for _, kv := range p.Attributes {
			if kv.Key == key {
				v = kv.Value.GetStringValue()
			}
		}
		out[v] += p.GetAsInt()
	}
	return out
}

// Serve serves a new Receiver on a loopback port until the test ends and
// returns it with its endpoint ("http://127.0.0.1:port").
func Serve(t testing.TB) (*Receiver, string) {
	t.Helper()
	rcv := &Receiver{}
	srv := grpc.NewServer()
	coltracepb.RegisterTraceServiceServer(srv, rcv)
	colmetricpb.RegisterMetricsServiceServer(srv, metricsService{r: rcv})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(srv.Stop)
	return rcv, "http://" + ln.Addr().String()
}

// Start serves a Receiver and points the OTLP exporters of this test
// process at it (OTEL_* variables, set for the test only); it returns the
// receiver and an environment lookup that holds only the endpoint, for
// code that decides by an env function (proxy.NewTelemetry).
func Start(t *testing.T) (*Receiver, func(string) (string, bool)) {
	t.Helper()
	rcv, endpoint := Serve(t)
	t.Setenv("OTEL_TRACES_EXPORTER", "")
	t.Setenv("OTEL_METRICS_EXPORTER", "")
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
	t.Setenv("OTEL_EXPORTER_OTLP_INSECURE", "true")
	t.Setenv("OTEL_SERVICE_NAME", "fusionrag-test")
	return rcv, func(k string) (string, bool) {
		if k == "OTEL_EXPORTER_OTLP_ENDPOINT" {
			return endpoint, true
		}
		return "", false
	}
}

// WaitSpans waits up to 5 s until rcv holds n spans named name and returns
// every span received; past that it fails the test.
func WaitSpans(t testing.TB, rcv *Receiver, name string, n int) []*tracepb.Span {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		spans := rcv.Spans()
		got := 0
		for _, s := range spans {
			if s.Name == name {
				got++
			}
		}
		if got >= n {
			return spans
		}
		if time.Now().After(deadline) {
			t.Fatalf("receiver got %d spans, %d of %s, want %d", len(spans), got, name, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Attrs returns a span's attributes as key -> Go value (string, int64,
// float64 or bool).
func Attrs(s *tracepb.Span) map[string]any {
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
