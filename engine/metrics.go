package engine

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"

	"github.com/fusionrag/fusionrag/internal/promexport"
)

// metrics are the engine's counters, exposed on /metrics by the
// OpenTelemetry Prometheus exporter (package promexport) from a meter
// provider of the engine's own. The counters the hot paths bump are plain
// atomics (and two small maps), read by observable instruments when the
// page is gathered; the TTFT histogram is an OTel histogram.
//
// Exposed names (the exporter adds _total to counters and _seconds to the
// histogram): fusionrag_engine_requests_total{code,endpoint},
// fusionrag_engine_kv_lookups_total{result}, fusionrag_engine_prompt_tokens_total,
// fusionrag_engine_generation_tokens_total, fusionrag_engine_cached_tokens_total,
// fusionrag_engine_kv_pushes_total, fusionrag_engine_requests_running,
// fusionrag_engine_requests_waiting, fusionrag_engine_time_to_first_token_seconds.
type metrics struct {
	promptTokens atomic.Int64
	genTokens    atomic.Int64
	cachedTokens atomic.Int64
	kvPushes     atomic.Int64
	ttft         histogram

	mu       sync.Mutex
	requests map[[2]string]int64 // (endpoint, status code) -> count
	lookups  map[string]int64    // KV lookup result -> count

	// counts reports the scheduler's running and waiting requests (set by
	// the engine; nil: none observed).
	counts atomic.Pointer[func() (running, waiting int)]

	prom *promexport.Exposition
	mp   *sdkmetric.MeterProvider
	stop sync.Once
}

// shutdown shuts the meter provider down once: readers that push (OTLP)
// push a last time, within ctx.
func (m *metrics) shutdown(ctx context.Context) error {
	var err error
	m.stop.Do(func() { err = m.mp.Shutdown(ctx) })
	return err
}

// histogram is the TTFT histogram.
type histogram struct{ h metric.Float64Histogram }

func (h *histogram) observe(v float64) {
	if h.h != nil {
		h.h.Record(context.Background(), v)
	}
}

// newMetrics builds the engine's meter provider: the /metrics page and
// the extra readers (an OTLP push, see WithMetricReader), under res (nil:
// the SDK's default resource).
func newMetrics(res *resource.Resource, readers ...sdkmetric.Reader) *metrics {
	m := &metrics{requests: map[[2]string]int64{}, lookups: map[string]int64{}}
	if err := m.instruments(res, readers); err != nil {
		// The instruments' names and options are constants and the
		// registry is the engine's own: a failure is a broken invariant.
		panic("engine: metrics: " + err.Error())
	}
	return m
}

func (m *metrics) instruments(res *resource.Resource, readers []sdkmetric.Reader) error {
	var err error
	if m.prom, err = promexport.New(); err != nil {
		return err
	}
	opts := []sdkmetric.Option{sdkmetric.WithReader(m.prom.Reader())}
	for _, r := range readers {
		opts = append(opts, sdkmetric.WithReader(r))
	}
	if res != nil {
		opts = append(opts, sdkmetric.WithResource(res))
	}
	m.mp = sdkmetric.NewMeterProvider(opts...)
	meter := m.mp.Meter("github.com/fusionrag/fusionrag/engine")
	var errs []error
	add := func(err error) { errs = append(errs, err) }

	_, err = meter.Int64ObservableCounter("fusionrag.engine.requests", metric.WithUnit("{request}"),
		metric.WithDescription("HTTP requests by endpoint and status code."),
		metric.WithInt64Callback(func(_ context.Context, o metric.Int64Observer) error {
			m.mu.Lock()
			defer m.mu.Unlock()
			for k, v := range m.requests {
				o.Observe(v, metric.WithAttributes(attribute.String("endpoint", k[0]), attribute.String("code", k[1])))
			}
			return nil
		}))
	add(err)
	_, err = meter.Int64ObservableCounter("fusionrag.engine.kv_lookups", metric.WithUnit("{lookup}"),
		metric.WithDescription("KV connector lookups by result (hit, miss, mismatch, error)."),
		metric.WithInt64Callback(func(_ context.Context, o metric.Int64Observer) error {
			m.mu.Lock()
			defer m.mu.Unlock()
			for k, v := range m.lookups {
				o.Observe(v, metric.WithAttributes(attribute.String("result", k)))
			}
			return nil
		}))
	add(err)
	for _, c := range []struct {
		name, unit, help string
		v                *atomic.Int64
	}{
		{"fusionrag.engine.prompt_tokens", "{token}", "Prompt tokens of admitted requests.", &m.promptTokens},
		{"fusionrag.engine.generation_tokens", "{token}", "Generated tokens.", &m.genTokens},
		{"fusionrag.engine.cached_tokens", "{token}", "Prompt tokens whose KV was loaded instead of prefilled.", &m.cachedTokens},
		{"fusionrag.engine.kv_pushes", "{blob}", "KV blobs accepted on PUT /v1/kv/{key}.", &m.kvPushes},
	} {
		_, err = meter.Int64ObservableCounter(c.name, metric.WithUnit(c.unit), metric.WithDescription(c.help),
			metric.WithInt64Callback(func(_ context.Context, o metric.Int64Observer) error {
				o.Observe(c.v.Load())
				return nil
			}))
		add(err)
	}
	gauge := func(name, help string, pick func(running, waiting int) int) {
		_, err := meter.Int64ObservableGauge(name, metric.WithUnit("{request}"), metric.WithDescription(help),
			metric.WithInt64Callback(func(_ context.Context, o metric.Int64Observer) error {
				if f := m.counts.Load(); f != nil {
					o.Observe(int64(pick((*f)())))
				}
				return nil
			}))
		add(err)
	}
	gauge("fusionrag.engine.requests_running", "Requests in the running batch.", func(r, _ int) int { return r })
	gauge("fusionrag.engine.requests_waiting", "Requests waiting for a slot.", func(_, w int) int { return w })
	m.ttft.h, err = meter.Float64Histogram("fusionrag.engine.time_to_first_token", metric.WithUnit("s"),
		metric.WithDescription("From admission to the first generated token."),
		metric.WithExplicitBucketBoundaries(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
	add(err)
	return errors.Join(errs...)
}

func (m *metrics) request(endpoint string, status int) {
	m.mu.Lock()
	m.requests[[2]string{endpoint, strconv.Itoa(status)}]++
	m.mu.Unlock()
}

func (m *metrics) lookup(result string) {
	m.mu.Lock()
	m.lookups[result]++
	m.mu.Unlock()
}

// serve writes the Prometheus page (promhttp: content negotiation,
// compression).
func (m *metrics) serve(w http.ResponseWriter, r *http.Request) {
	m.prom.Handler().ServeHTTP(w, r)
}
