package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/sony/gobreaker/v2"
	"github.com/valyala/fasthttp"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/metric"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/exemplar"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/fusionrag/fusionrag/internal/otelenv"
	"github.com/fusionrag/fusionrag/internal/promexport"
)

const instrumentationName = "github.com/fusionrag/fusionrag/proxy"

// Telemetry holds the proxy's tracer and meter providers. Spans go to an
// OTLP/gRPC exporter configured by the standard OTEL_* variables (none when
// unset). Metrics are read on demand for the Prometheus /metrics page by the
// OpenTelemetry Prometheus exporter (package promexport), and pushed over
// OTLP/gRPC by a periodic reader when an OTLP endpoint is configured.
type Telemetry struct {
	tp     *sdktrace.TracerProvider
	mp     *sdkmetric.MeterProvider
	prom   *promexport.Exposition
	tracer trace.Tracer

	requests, fallbacks, skips, chunks, lookups, recomputed, bytesLoaded, upstreamErrors, transitions metric.Int64Counter
	ttft, duration                                                                                    metric.Float64Histogram

	breakerState func() gobreaker.State

	// metricsOTLP is true when metrics are also pushed over OTLP.
	metricsOTLP bool

	// tracing is false when no span can ever be exported (no exporter):
	// the proxy then starts no spans at all. A non-recording span still
	// costs a context, option slices and attribute conversions per request.
	tracing bool

	// Option slices of the hot path, built once: building an attribute set
	// per request costs allocations and a sort, and passing one option to a
	// variadic parameter allocates its slice.
	byPath      [numPaths][]metric.RecordOption
	byPathRoute [numPaths][numRoutes][]metric.AddOption
	byLookup    [numLookups][]metric.AddOption
	chunkHit    []metric.AddOption
	chunkMiss   []metric.AddOption
}

// Results of fusionrag.proxy.lookups, one per eligible request the fusion
// path was asked about (the "result" label).
const (
	LookupHit     = "hit"     // every recognised chunk was in the store
	LookupPartial = "partial" // some were
	LookupMiss    = "miss"    // none was
	LookupNone    = "none"    // no chunk recognised in the prompt (no markers, parts or known chunks)
	LookupUnknown = "unknown" // the fusion path stopped before it knew (breaker open, saturated, deadline, error)
)

var lookupResults = [...]string{LookupHit, LookupPartial, LookupMiss, LookupNone, LookupUnknown}

const numLookups = len(lookupResults)

// lookupResult classifies what a fusion attempt knew of its chunks (nil:
// nothing), as an index into lookupResults.
func lookupResult(s *Stats) int {
	switch {
	case s == nil:
		return 4
	case s.Hits+s.Misses == 0 && s.Chunks == 0:
		return 3
	case s.Hits+s.Misses == 0: // chunks recognised, never looked up
		return 4
	case s.Misses == 0:
		return 0
	case s.Hits == 0:
		return 2
	}
	return 1
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
// is set. Likewise OTEL_METRICS_EXPORTER ("otlp" or "none"; unset: otlp when
// OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_METRICS_ENDPOINT is set)
// pushes metrics every OTEL_METRIC_EXPORT_INTERVAL (default 60 s), besides
// the /metrics page that is always there. The exporters themselves read the
// other OTEL_EXPORTER_OTLP_* variables. Only OTLP over gRPC is supported.
func NewTelemetry(ctx context.Context, env func(string) (string, bool)) (*Telemetry, error) {
	res, err := otelenv.Resource(ctx, "fusionrag")
	if err != nil {
		return nil, err
	}
	topts := []sdktrace.TracerProviderOption{sdktrace.WithResource(res)}
	tracing, err := otelenv.Wanted(env, "TRACES")
	if err != nil {
		return nil, err
	}
	if tracing {
		exp, err := otlptracegrpc.New(ctx)
		if err != nil {
			return nil, fmt.Errorf("telemetry: OTLP trace exporter: %w", err)
		}
		topts = append(topts, sdktrace.WithBatcher(exp))
	} else {
		// Nothing is exported: the proxy starts no spans (tracing false),
		// and spans others start from this provider are non-recording.
		topts = append(topts, sdktrace.WithSampler(sdktrace.NeverSample()))
	}
	prom, err := promexport.New()
	if err != nil {
		return nil, fmt.Errorf("telemetry: %w", err)
	}
	// Exemplars are never exposed (neither the text page nor the pushed
	// points need them): keeping them would only cost each measurement a
	// span-context lookup.
	mopts := []sdkmetric.Option{sdkmetric.WithReader(prom.Reader()), sdkmetric.WithResource(res),
		sdkmetric.WithExemplarFilter(exemplar.AlwaysOffFilter)}
	push, err := otelenv.MetricReader(ctx, env)
	if err != nil {
		return nil, err
	}
	pushMetrics := push != nil
	if pushMetrics {
		mopts = append(mopts, sdkmetric.WithReader(push))
	}
	t := &Telemetry{tp: sdktrace.NewTracerProvider(topts...), prom: prom, tracing: tracing, metricsOTLP: pushMetrics}
	t.mp = sdkmetric.NewMeterProvider(mopts...)
	t.tracer = t.tp.Tracer(instrumentationName)
	for i, path := range hotPaths {
		t.byPath[i] = []metric.RecordOption{metric.WithAttributeSet(attribute.NewSet(attribute.String("path", path)))}
		for r := range Route(numRoutes) {
			t.byPathRoute[i][r] = []metric.AddOption{metric.WithAttributeSet(attribute.NewSet(attribute.String("path", path), attribute.String("route", r.String())))}
		}
	}
	for i, r := range lookupResults {
		t.byLookup[i] = []metric.AddOption{metric.WithAttributeSet(attribute.NewSet(attribute.String("result", r)))}
	}
	t.chunkHit = []metric.AddOption{metric.WithAttributeSet(attribute.NewSet(attribute.String("result", "hit")))}
	t.chunkMiss = []metric.AddOption{metric.WithAttributeSet(attribute.NewSet(attribute.String("result", "miss")))}
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
	t.chunks = counter("fusionrag.proxy.chunks", "Chunks recognised in eligible requests, by result: hit (in the store) or miss (not in it), whether the request was fused or skipped. Chunk hit ratio over a window: rate(hit) / rate(hit + miss).", "{chunk}")
	t.lookups = counter("fusionrag.proxy.lookups", "Eligible requests the fusion path was asked about, by what it found: hit (every chunk), partial, miss (no chunk), none (no chunk recognised), unknown (stopped before it knew).", "{request}")
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
	_, err = m.Int64ObservableGauge("fusionrag.proxy.breaker.state", metric.WithDescription("Circuit breaker state: 0 closed, 1 half-open, 2 open."), metric.WithUnit("{state}"),
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

// ForceFlush exports pending spans and, when pushed, metrics now.
func (t *Telemetry) ForceFlush(ctx context.Context) error {
	return errors.Join(t.tp.ForceFlush(ctx), t.mp.ForceFlush(ctx))
}

// MetricsOTLP reports whether metrics are pushed over OTLP.
func (t *Telemetry) MetricsOTLP() bool { return t.metricsOTLP }

// recordLookup counts one eligible request the fusion path was asked
// about: its lookup result and, when s is known, its chunks as hits and
// misses, fused or not. A request skipped because too many chunks were
// missing counts its misses here too, so the windowed hit ratio falls on
// cold traffic.
func (t *Telemetry) recordLookup(ctx context.Context, s *Stats) {
	t.lookups.Add(ctx, 1, t.byLookup[lookupResult(s)]...)
	if s == nil {
		return
	}
	if s.Hits > 0 {
		t.chunks.Add(ctx, int64(s.Hits), t.chunkHit...)
	}
	if s.Misses > 0 {
		t.chunks.Add(ctx, int64(s.Misses), t.chunkMiss...)
	}
}

// recordFused adds the work of a fused request.
func (t *Telemetry) recordFused(ctx context.Context, s Stats) {
	t.recomputed.Add(ctx, int64(s.RecomputedTokens))
	t.bytesLoaded.Add(ctx, s.BytesLoaded)
}

// WritePrometheus writes every metric in the Prometheus text exposition
// format (version 0.0.4), as the OpenTelemetry Prometheus exporter names
// them (see package promexport).
func (t *Telemetry) WritePrometheus(_ context.Context, w io.Writer) error {
	return t.prom.WriteText(w)
}

// HeaderCache is the response header in which the sidecar tells a client
// what its cache did for the request (telemetry.cache_header renames it or,
// "-", turns it off). The value is space-separated key=value fields:
//
//	path=fusion hit=3/4 recomputed=19
//	path=passthrough reason=too_many_missing hit=1/4
//	path=fallback reason=fuser_timeout
//
// path is the exchange's path (the label of fusionrag_proxy_requests_total);
// reason the skip or fallback reason when not fused; hit=H/K the chunks
// found in the store out of those recognised, when the fusion path got as
// far as looking them up; recomputed the context tokens recomputed, when
// fused. Clients must ignore fields they do not know.
const HeaderCache = "X-Fusionrag-Cache"

// cacheHeader formats the exchange's HeaderCache value.
func (x *exchange) cacheHeader() []byte {
	b := make([]byte, 0, 64)
	b = append(b, "path="...)
	b = append(b, x.path...)
	reason := x.reason
	if reason == "" {
		reason = x.skip
	}
	if reason != "" && x.path != PathFusion {
		b = append(b, " reason="...)
		b = append(b, reason...)
	}
	if x.looked {
		b = append(b, " hit="...)
		b = strconv.AppendInt(b, int64(x.stats.Hits), 10)
		b = append(b, '/')
		b = strconv.AppendInt(b, int64(x.stats.Chunks), 10)
	}
	if x.path == PathFusion && x.looked {
		b = append(b, " recomputed="...)
		b = strconv.AppendInt(b, int64(x.stats.RecomputedTokens), 10)
	}
	return b
}

// setCacheHeader sets the cache header on the response to an eligible
// route's request, replacing any the engine sent: the header is the
// sidecar's word, and an engine's (another sidecar's, a test double's)
// would read as it. Off ("-"), the engine's HeaderCache is removed all the
// same. Other routes are relayed untouched.
func (p *Proxy) setCacheHeader(ctx *fasthttp.RequestCtx, x *exchange) {
	if x.route == RouteOther {
		return
	}
	h := &ctx.Response.Header
	name := p.cfg.Telemetry.CacheHeader
	if name == "-" || !strings.EqualFold(name, HeaderCache) {
		h.Del(HeaderCache)
	}
	if name != "-" {
		h.SetBytesV(name, x.cacheHeader())
	}
}
