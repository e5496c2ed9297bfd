// Package proxy is the sidecar's front door: a fasthttp reverse proxy placed
// in front of an OpenAI-compatible engine. It forwards every route faithfully
// (methods, headers, bodies, status codes, SSE streams flushed event by
// event) and, for eligible POST /v1/chat/completions and /v1/completions
// requests, asks a Fuser to prepare the prompt's KV and points the engine at
// it through the adapter's lease ("kv_transfer_params", a pinned slot),
// released once the response has ended. Any failure of that path (error, deadline,
// panic, open circuit breaker, engine error on the rewritten request) degrades
// to forwarding the original request, so a client never sees the fusion path
// fail. Spans, metrics (Prometheus /metrics) and /healthz come with it.
package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"

	"github.com/sony/gobreaker/v2"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttpadaptor"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// Proxy is the sidecar. Build it with New, serve with Serve or
// ListenAndServe, stop with Shutdown.
type Proxy struct {
	cfg     Config
	fuser   Fuser
	tel     *Telemetry
	ownTel  bool
	log     *slog.Logger
	client  *fasthttp.HostClient
	server  *fasthttp.Server
	breaker *gobreaker.TwoStepCircuitBreaker[struct{}]
	addr    string        // upstream host:port
	fusions chan struct{} // semaphore: running (and abandoned) Fuse calls
	docs    *docsRoutes
	debug   *debugServer // FUSIONRAG_PPROF listener, nil when off
	metrics fasthttp.RequestHandler
}

// Option configures a Proxy.
type Option func(*Proxy)

// WithFuser plugs the fusion path in. Without one, every request is passed
// through.
func WithFuser(f Fuser) Option { return func(p *Proxy) { p.fuser = f } }

// WithTelemetry uses t instead of building one from the OTEL_* environment;
// the caller then owns its shutdown.
func WithTelemetry(t *Telemetry) Option { return func(p *Proxy) { p.tel = t } }

// WithLogger sets the logger (default: slog.Default()).
func WithLogger(l *slog.Logger) Option { return func(p *Proxy) { p.log = l } }

// New validates cfg (filling defaults) and builds the proxy.
func New(cfg Config, opts ...Option) (*Proxy, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	p := &Proxy{cfg: cfg}
	for _, o := range opts {
		o(p)
	}
	if p.log == nil {
		p.log = slog.Default()
	}
	if p.tel == nil {
		t, err := NewTelemetry(context.Background(), os.LookupEnv)
		if err != nil {
			return nil, err
		}
		p.tel, p.ownTel = t, true
	}
	var err error
	if p.client, err = newUpstreamClient(cfg); err != nil {
		return nil, err
	}
	p.addr = p.client.Addr
	p.fusions = make(chan struct{}, cfg.Limits.MaxFusions)
	b := cfg.Breaker
	p.breaker = gobreaker.NewTwoStepCircuitBreaker[struct{}](gobreaker.Settings{
		Name:        "fusion",
		MaxRequests: b.HalfOpenRequests,
		Interval:    b.Interval,
		Timeout:     b.OpenTimeout,
		ReadyToTrip: func(c gobreaker.Counts) bool { return c.ConsecutiveFailures >= b.ConsecutiveFailures },
		OnStateChange: func(_ string, from, to gobreaker.State) {
			p.tel.transitions.Add(context.Background(), 1, metric.WithAttributes(attribute.String("to", to.String())))
			p.log.Warn("fusion circuit breaker", "from", from.String(), "to", to.String())
		},
		// Skips and client cancels say nothing about the fusion path's health.
		// Nor do engine failures that the original request meets too.
		IsExcluded: func(err error) bool {
			return errors.Is(err, ErrSkip) || isClientCancel(err) || errors.Is(err, errEngineFailing)
		},
	})
	p.tel.breakerState = p.breaker.State
	p.metrics = fasthttpadaptor.NewFastHTTPHandler(p.tel.prom.Handler())
	p.server = &fasthttp.Server{
		Handler:           p.Handler,
		Name:              "fusionrag",
		StreamRequestBody: true,
		// With StreamRequestBody, this is how much of a body is read before
		// the handler runs: bodies up to it are buffered whole.
		MaxRequestBodySize:           max(cfg.Limits.BufferBody, 1),
		ReadTimeout:                  cfg.Timeouts.ClientRead,
		IdleTimeout:                  cfg.Timeouts.ClientIdle,
		NoDefaultServerHeader:        true,
		NoDefaultDate:                true,
		NoDefaultContentType:         true,
		DisablePreParseMultipartForm: true,
		CloseOnShutdown:              true,
		ErrorHandler: func(ctx *fasthttp.RequestCtx, err error) {
			writePage(ctx, p.pageOf(&refusal{kind: errUnreadable, msg: err.Error(), cause: err}))
		},
		Logger: slogPrintf{p.log},
	}
	if addr, ok := os.LookupEnv(EnvPprof); ok && addr != "" {
		if p.debug, err = startDebug(addr); err != nil {
			if p.ownTel {
				_ = p.tel.Shutdown(context.Background())
			}
			return nil, err
		}
		p.log.Info("pprof debug listener", "addr", p.debug.addr)
	}
	return p, nil
}

type slogPrintf struct{ l *slog.Logger }

func (s slogPrintf) Printf(format string, args ...any) {
	if s.l.Enabled(context.Background(), slog.LevelDebug) {
		s.l.Debug(fmt.Sprintf(format, args...))
	}
}

// Serve accepts connections on ln until Shutdown.
func (p *Proxy) Serve(ln net.Listener) error { return p.server.Serve(ln) }

// ListenAndServe listens on Config.Listen and serves.
func (p *Proxy) ListenAndServe() error {
	ln, err := net.Listen("tcp", p.cfg.Listen)
	if err != nil {
		return err
	}
	return p.Serve(ln)
}

// Shutdown stops accepting, waits for in-flight requests until ctx ends,
// then flushes telemetry (when the proxy built it).
func (p *Proxy) Shutdown(ctx context.Context) error {
	err := p.server.ShutdownWithContext(ctx)
	p.client.CloseIdleConnections()
	err = errors.Join(err, p.debug.shutdown(ctx))
	if p.ownTel {
		err = errors.Join(err, p.tel.Shutdown(ctx))
	}
	return err
}

// Config returns the validated configuration.
func (p *Proxy) Config() Config { return p.cfg }

// Telemetry returns the proxy's providers.
func (p *Proxy) Telemetry() *Telemetry { return p.tel }

// BreakerState returns the fusion circuit breaker's state.
func (p *Proxy) BreakerState() gobreaker.State { return p.breaker.State() }

// BreakerCounts returns the fusion circuit breaker's counts of the
// current generation (failures since it last closed or opened).
func (p *Proxy) BreakerCounts() gobreaker.Counts { return p.breaker.Counts() }

// serveMetrics serves the Prometheus page through promhttp (content
// negotiation, compression), as the OpenTelemetry Prometheus exporter
// gathers it.
func (p *Proxy) serveMetrics(ctx *fasthttp.RequestCtx) {
	p.metrics(ctx)
}

func (p *Proxy) serveHealth(ctx *fasthttp.RequestCtx) {
	status, upstream := fasthttp.StatusOK, "reachable"
	c, err := net.DialTimeout("tcp", p.addr, p.cfg.Timeouts.Connect)
	if err != nil {
		status, upstream = fasthttp.StatusServiceUnavailable, "unreachable: "+err.Error()
	} else {
		_ = c.Close()
	}
	state := "ok"
	if status != fasthttp.StatusOK {
		state = "degraded"
	}
	b, _ := json.Marshal(map[string]string{"status": state, "upstream": upstream, "breaker": p.breaker.State().String()})
	ctx.SetStatusCode(status)
	ctx.SetContentType("application/json")
	ctx.Response.Header.Set("Cache-Control", "no-store")
	ctx.SetBody(b)
}

// tenantOf is the tenant of a request: the configured tenant header's value
// when one is trusted (tenant.header not "-"), else a hash of its API key,
// else anonymous (TenantOf). Every route that keys KV by tenant uses it.
func (p *Proxy) tenantOf(h *fasthttp.RequestHeader) (tenant, source string) {
	var v string
	if p.cfg.Tenant.Header != "-" {
		v = string(h.Peek(p.cfg.Tenant.Header))
	}
	return TenantOf(v, string(h.Peek("Authorization")))
}
