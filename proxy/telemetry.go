package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"

	"github.com/sony/gobreaker/v2"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/metric"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/exemplar"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

const instrumentationName = "github.com/fusionrag/fusionrag/proxy"

// Telemetry holds the proxy's tracer and meter providers. Spans go to an
// OTLP/gRPC exporter configured by the standard OTEL_* variables (none when
// unset); metrics are read on demand for the Prometheus /metrics page.
type Telemetry struct {
	tp     *sdktrace.TracerProvider
	mp     *sdkmetric.MeterProvider
	reader *sdkmetric.ManualReader
	tracer trace.Tracer

	requests, fallbacks, skips, chunks, recomputed, bytesLoaded, upstreamErrors, transitions metric.Int64Counter
	ttft, duration                                                                           metric.Float64Histogram

	hits, misses atomic.Int64
	breakerState func() gobreaker.State

	// tracing is false when no span can ever be exported (no exporter):
	// the proxy then starts no spans at all. A non-recording span still
	// costs a context, option slices and attribute conversions per request.
	tracing bool

	// Option slices of the hot path, built once: building an attribute set
	// per request costs allocations and a sort, and passing one option to a
	// variadic parameter allocates its slice.
	byPath      [numPaths][]metric.RecordOption
	byPathRoute [numPaths][numRoutes][]metric.AddOption
}

// hotPaths are the exchange paths whose option slices are prebuilt, in
// pathIndex order.
var hotPaths = [...]string{PathFusion, PathPassthrough, PathFallback, PathRejected}

const (
	numPaths  = len(hotPaths)
	numRoutes = int(RouteCompletions) + 1
)

// pathIndex returns the index of path in hotPaths, or -1.
func pathIndex(path string) int {
	switch path {
	case PathFusion:
		return 0
	case PathPassthrough:
		return 1
	case PathFallback:
		return 2
	case PathRejected:
		return 3
	}
	return -1
}

// pathOpts returns the measurement options labelling a histogram point
// with path.
func (t *Telemetry) pathOpts(path string) []metric.RecordOption {
	if i := pathIndex(path); i >= 0 {
		return t.byPath[i]
	}
	return []metric.RecordOption{metric.WithAttributes(attribute.String("path", path))}
}

// pathRouteOpts returns the measurement options labelling a counter with
// path and route.
func (t *Telemetry) pathRouteOpts(path string, r Route) []metric.AddOption {
	if i := pathIndex(path); i >= 0 && r >= 0 && int(r) < numRoutes {
		return t.byPathRoute[i][r]
	}
	return []metric.AddOption{metric.WithAttributes(attribute.String("path", path), attribute.String("route", r.String()))}
}

// NewTelemetry builds the providers. env looks variables up (os.LookupEnv);
// OTEL_TRACES_EXPORTER may be "otlp" or "none"; with it unset, spans are
// exported when OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT
// is set. The exporter itself reads the other OTEL_EXPORTER_OTLP_* variables.
func NewTelemetry(ctx context.Context, env func(string) (string, bool)) (*Telemetry, error) {
	get := func(k string) string {
		if env == nil {
			return ""
		}
		v, _ := env(k)
		return strings.TrimSpace(v)
	}
	res, err := resource.New(ctx,
		resource.WithAttributes(attribute.String("service.name", "fusionrag")),
		resource.WithFromEnv(), resource.WithTelemetrySDK())
	if err != nil && res == nil {
		return nil, fmt.Errorf("telemetry: resource: %w", err)
	}
	topts := []sdktrace.TracerProviderOption{sdktrace.WithResource(res)}
	exporter := strings.ToLower(get("OTEL_TRACES_EXPORTER"))
	tracing := false
	if exporter == "" && (get("OTEL_EXPORTER_OTLP_ENDPOINT") != "" || get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") != "") {
		exporter = "otlp"
	}
	switch exporter {
	case "", "none":
		// Nothing is exported: the proxy starts no spans (tracing false),
		// and spans others start from this provider are non-recording.
		topts = append(topts, sdktrace.WithSampler(sdktrace.NeverSample()))
	case "otlp":
		tracing = true
		proto := get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
		if proto == "" {
			proto = get("OTEL_EXPORTER_OTLP_PROTOCOL")
		}
		if proto != "" && proto != "grpc" {
			return nil, fmt.Errorf("telemetry: OTLP protocol %q not supported (only grpc)", proto)
		}
		exp, err := otlptracegrpc.New(ctx)
		if err != nil {
			return nil, fmt.Errorf("telemetry: OTLP exporter: %w", err)
		}
		topts = append(topts, sdktrace.WithBatcher(exp))
	default:
		return nil, fmt.Errorf("telemetry: OTEL_TRACES_EXPORTER=%q not supported (otlp or none)", exporter)
	}
	t := &Telemetry{tp: sdktrace.NewTracerProvider(topts...), reader: sdkmetric.NewManualReader(), tracing: tracing}
	// Exemplars are never exposed (the Prometheus page has none): keeping
	// them would only cost each measurement a span-context lookup.
	t.mp = sdkmetric.NewMeterProvider(sdkmetric.WithReader(t.reader), sdkmetric.WithResource(res),
		sdkmetric.WithExemplarFilter(exemplar.AlwaysOffFilter))
	t.tracer = t.tp.Tracer(instrumentationName)
	for i, path := range hotPaths {
		t.byPath[i] = []metric.RecordOption{metric.WithAttributeSet(attribute.NewSet(attribute.String("path", path)))}
		for r := range Route(numRoutes) {
			t.byPathRoute[i][r] = []metric.AddOption{metric.WithAttributeSet(attribute.NewSet(attribute.String("path", path), attribute.String("route", r.String())))}
		}
	}
	if err := t.instruments(); err != nil {
		return nil, err
	}
	return t, nil
}

func (t *Telemetry) instruments() error {
	m := t.mp.Meter(instrumentationName)
	var errs []error
	counter := func(name, desc, unit string) metric.Int64Counter {
		c, err := m.Int64Counter(name, metric.WithDescription(desc), metric.WithUnit(unit))
		errs = append(errs, err)
		return c
	}
	t.requests = counter("fusionrag.proxy.requests", "Requests by path taken: fusion, passthrough, fallback, rejected.", "{request}")
	t.fallbacks = counter("fusionrag.proxy.fallbacks", "Fusion-path failures that fell back to forwarding the original request, by reason.", "{request}")
	t.skips = counter("fusionrag.proxy.skips", "Eligible requests the fusion path declined, by reason.", "{request}")
	t.chunks = counter("fusionrag.proxy.chunks", "Chunks met by the fusion path, by result: hit or miss.", "{chunk}")
	t.recomputed = counter("fusionrag.proxy.recomputed_tokens", "Context tokens recomputed by the fusion path.", "{token}")
	t.bytesLoaded = counter("fusionrag.proxy.loaded", "KV bytes loaded from the store.", "By")
	t.upstreamErrors = counter("fusionrag.proxy.upstream_errors", "Failures talking to the engine, by kind: connect, timeout, other.", "{error}")
	t.transitions = counter("fusionrag.proxy.breaker.transitions", "Circuit breaker state changes, by new state.", "{transition}")
	buckets := metric.WithExplicitBucketBoundaries(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
	var err error
	t.ttft, err = m.Float64Histogram("fusionrag.proxy.ttft", metric.WithDescription("Time from request arrival to the first response body byte, by path."), metric.WithUnit("s"), buckets)
	errs = append(errs, err)
	t.duration, err = m.Float64Histogram("fusionrag.proxy.request.duration", metric.WithDescription("Time from request arrival to the end of the response, by path."), metric.WithUnit("s"), buckets)
	errs = append(errs, err)
	_, err = m.Float64ObservableGauge("fusionrag.proxy.hit_rate", metric.WithDescription("Chunk hit rate of the fusion path since start: hits / (hits + misses)."), metric.WithUnit("1"),
		metric.WithFloat64Callback(func(_ context.Context, o metric.Float64Observer) error {
			h, mi := t.hits.Load(), t.misses.Load()
			if h+mi > 0 {
				o.Observe(float64(h) / float64(h+mi))
			}
			return nil
		}))
	errs = append(errs, err)
	_, err = m.Int64ObservableGauge("fusionrag.proxy.breaker.state", metric.WithDescription("Circuit breaker state: 0 closed, 1 half-open, 2 open."), metric.WithUnit("1"),
		metric.WithInt64Callback(func(_ context.Context, o metric.Int64Observer) error {
			if f := t.breakerState; f != nil {
				o.Observe(int64(f()))
			}
			return nil
		}))
	errs = append(errs, err)
	return errors.Join(errs...)
}

// Tracing reports whether spans are exported; without an exporter the proxy
// starts none.
func (t *Telemetry) Tracing() bool { return t.tracing }

// TracerProvider returns the provider the proxy's spans come from.
func (t *Telemetry) TracerProvider() trace.TracerProvider { return t.tp }

// MeterProvider returns the provider of the proxy's metrics.
func (t *Telemetry) MeterProvider() metric.MeterProvider { return t.mp }

// Shutdown flushes pending spans and stops the providers.
func (t *Telemetry) Shutdown(ctx context.Context) error {
	return errors.Join(t.tp.Shutdown(ctx), t.mp.Shutdown(ctx))
}

// ForceFlush exports pending spans now.
func (t *Telemetry) ForceFlush(ctx context.Context) error { return t.tp.ForceFlush(ctx) }

func (t *Telemetry) recordStats(ctx context.Context, s Stats) {
	t.hits.Add(int64(s.Hits))
	t.misses.Add(int64(s.Misses))
	t.chunks.Add(ctx, int64(s.Hits), metric.WithAttributes(attribute.String("result", "hit")))
	t.chunks.Add(ctx, int64(s.Misses), metric.WithAttributes(attribute.String("result", "miss")))
	t.recomputed.Add(ctx, int64(s.RecomputedTokens))
	t.bytesLoaded.Add(ctx, s.BytesLoaded)
}

// WritePrometheus writes every metric in the Prometheus text exposition
// format (version 0.0.4).
func (t *Telemetry) WritePrometheus(ctx context.Context, w io.Writer) error {
	var rm metricdata.ResourceMetrics
	if err := t.reader.Collect(ctx, &rm); err != nil {
		return err
	}
	var b strings.Builder
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			writeMetric(&b, m)
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// promName maps an OTel name and unit to a Prometheus metric name.
func promName(name, unit string) string {
	n := strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' || r == ':' {
			return r
		}
		return '_'
	}, name)
	switch unit {
	case "s":
		n += "_seconds"
	case "By":
		n += "_bytes"
	case "1":
		if !strings.HasSuffix(n, "_rate") && !strings.HasSuffix(n, "_state") {
			n += "_ratio"
		}
	}
	return n
}

func writeMetric(b *strings.Builder, m metricdata.Metrics) {
	name := promName(m.Name, m.Unit)
	header := func(typ, n string) {
		fmt.Fprintf(b, "# HELP %s %s\n# TYPE %s %s\n", n, escapeHelp(m.Description), n, typ)
	}
	switch d := m.Data.(type) {
	case metricdata.Sum[int64]:
		n, typ := sumName(name, d.IsMonotonic)
		header(typ, n)
		writePoints(b, n, d.DataPoints)
	case metricdata.Sum[float64]:
		n, typ := sumName(name, d.IsMonotonic)
		header(typ, n)
		writePoints(b, n, d.DataPoints)
	case metricdata.Gauge[int64]:
		header("gauge", name)
		writePoints(b, name, d.DataPoints)
	case metricdata.Gauge[float64]:
		header("gauge", name)
		writePoints(b, name, d.DataPoints)
	case metricdata.Histogram[float64]:
		header("histogram", name)
		for _, p := range d.DataPoints {
			var cum uint64
			for i, bound := range p.Bounds {
				cum += p.BucketCounts[i]
				fmt.Fprintf(b, "%s_bucket%s %d\n", name, labels(p.Attributes, `le="`+promFloat(bound)+`"`), cum)
			}
			fmt.Fprintf(b, "%s_bucket%s %d\n", name, labels(p.Attributes, `le="+Inf"`), p.Count)
			fmt.Fprintf(b, "%s_sum%s %s\n", name, labels(p.Attributes, ""), promFloat(p.Sum))
			fmt.Fprintf(b, "%s_count%s %d\n", name, labels(p.Attributes, ""), p.Count)
		}
	}
}

// sumName returns the exposed name and type of a sum: a monotonic one is a
// counter named with _total, any other a gauge.
func sumName(name string, monotonic bool) (n, typ string) {
	if monotonic {
		return name + "_total", "counter"
	}
	return name, "gauge"
}

// writePoints writes one sample line per data point: integers as they are,
// floats as promFloat.
func writePoints[N int64 | float64](b *strings.Builder, name string, points []metricdata.DataPoint[N]) {
	for _, p := range points {
		var v string
		switch x := any(p.Value).(type) {
		case int64:
			v = strconv.FormatInt(x, 10)
		case float64:
			v = promFloat(x)
		}
		fmt.Fprintf(b, "%s%s %s\n", name, labels(p.Attributes, ""), v)
	}
}

func labels(set attribute.Set, extra string) string {
	parts := make([]string, 0, set.Len()+1)
	for _, kv := range set.ToSlice() {
		parts = append(parts, promName(string(kv.Key), "")+`="`+escapeLabel(kv.Value.Emit())+`"`)
	}
	sort.Strings(parts)
	if extra != "" {
		parts = append(parts, extra)
	}
	if len(parts) == 0 {
		return ""
	}
	return "{" + strings.Join(parts, ",") + "}"
}

func escapeLabel(s string) string {
	return strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`).Replace(s)
}

func escapeHelp(s string) string {
	return strings.NewReplacer(`\`, `\\`, "\n", `\n`).Replace(s)
}

func promFloat(x float64) string {
	switch {
	case math.IsInf(x, 1):
		return "+Inf"
	case math.IsInf(x, -1):
		return "-Inf"
	case math.IsNaN(x):
		return "NaN"
	}
	return strconv.FormatFloat(x, 'g', -1, 64)
}
