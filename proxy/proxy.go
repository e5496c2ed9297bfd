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
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sony/gobreaker/v2"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttpadaptor"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
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
			status := fasthttp.StatusBadRequest
			if errors.Is(err, fasthttp.ErrBodyTooLarge) {
				status = fasthttp.StatusRequestEntityTooLarge
			}
			writeError(ctx, status, "invalid_request_error", "bad_request", err.Error())
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

// Paths an exchange takes; they label metrics and spans.
const (
	PathFusion      = "fusion"      // the engine got the fused request
	PathPassthrough = "passthrough" // not eligible: forwarded as is
	PathFallback    = "fallback"    // eligible, the fusion path failed: original forwarded
	PathRejected    = "rejected"    // answered by the sidecar (413, 400)
)

// Fallback reasons (metric label values).
const (
	ReasonBreakerOpen   = "breaker_open"
	ReasonFuserError    = "fuser_error"
	ReasonFuserTimeout  = "fuser_timeout"
	ReasonFuserPanic    = "fuser_panic"
	ReasonBadPlan       = "bad_plan"
	ReasonUpstreamError = "upstream_error"
	ReasonClientCancel  = "client_cancel"
)

// SkipSaturated is the skip reason when max_concurrent_fusions runs are
// already in flight.
const SkipSaturated = "saturated"

// Reasons an eligible route's request never reached the fusion path; they
// appear in the cache header only (not in the skip metric, which counts the
// requests the fusion path declined).
const (
	SkipFusionOff   = "fusion_off"   // no fusion path (no model) or fusion.disabled
	SkipMalformed   = "malformed"    // the body is not a request the sidecar can read: forwarded as is
	SkipNotEligible = "not_eligible" // a request the fusion path does not serve (see ParseRequest)
)

// exchange is one client request, from arrival to the end of its response
// (which, for a streamed body, is after the handler returned).
type exchange struct {
	p        *Proxy
	start    time.Time
	ctx      context.Context // carries the proxy.request span
	span     trace.Span
	route    Route
	path     string
	reason   string      // fallback reason
	skip     string      // skip reason (the fusion path declined)
	stats    Stats       // what the fusion path knew of the chunks, when looked
	looked   bool        // stats hold a lookup's hits and misses
	done     func(error) // breaker outcome, set on the fusion path
	plan     *Plan
	ttft     atomic.Bool
	finished atomic.Bool
	refs     atomic.Int32 // the handler's and finish's; see newExchange
}

// exchanges recycles exchange records: the pass-through path allocates
// nothing else per request, and a collector with nothing to do keeps the
// sidecar's tail latency down (see transport.go).
var exchanges = sync.Pool{New: func() any { return new(exchange) }}

// newExchange takes an exchange from the pool. It holds two references:
// the handler's, dropped with a deferred unref when the handler returns,
// and the one finish drops. Whatever still runs once the handler returned
// (the relay of a streamed body) ends in finish, so the record goes back
// to the pool only when nothing can reach it.
func (p *Proxy) newExchange(start time.Time, route Route) *exchange {
	x := exchanges.Get().(*exchange)
	x.p, x.start, x.ctx, x.span, x.route, x.path = p, start, context.Background(), noSpan, route, PathPassthrough
	x.refs.Store(2)
	return x
}

// unref drops a reference; the last one returns x to the pool.
func (x *exchange) unref() {
	switch n := x.refs.Add(-1); {
	case n > 0:
		return
	case n < 0:
		panic("proxy: exchange released twice")
	}
	x.p, x.ctx, x.span, x.reason, x.skip, x.done, x.plan = nil, nil, nil, "", "", nil, nil
	x.stats, x.looked = Stats{}, false
	x.ttft.Store(false)
	x.finished.Store(false)
	exchanges.Put(x)
}

// noSpan is the span of exchanges when tracing is off: a no-op, whose
// IsRecording is false.
var noSpan = trace.SpanFromContext(context.Background())

func (x *exchange) firstByte() { x.firstByteAt(time.Now()) }

// firstByteAt records the time to first byte, as of now.
func (x *exchange) firstByteAt(now time.Time) {
	if x.ttft.CompareAndSwap(false, true) {
		x.p.tel.ttft.Record(x.ctx, now.Sub(x.start).Seconds(), x.p.tel.pathOpts(x.path)...)
	}
}

// finish ends the exchange: err nil when the response was delivered whole.
func (x *exchange) finish(err error) { x.finishAt(time.Now(), err) }

// finishAt is finish as of now.
func (x *exchange) finishAt(now time.Time, err error) {
	if !x.finished.CompareAndSwap(false, true) {
		return
	}
	if x.done != nil {
		if isClientCancel(err) {
			x.done(context.Canceled)
		} else {
			x.done(err)
		}
	}
	x.plan.release()
	x.p.tel.requests.Add(x.ctx, 1, x.p.tel.pathRouteOpts(x.path, x.route)...)
	x.p.tel.duration.Record(x.ctx, now.Sub(x.start).Seconds(), x.p.tel.pathOpts(x.path)...)
	if x.span.IsRecording() {
		x.span.SetAttributes(attribute.String(AttrPath, x.path))
		if x.reason != "" {
			x.span.SetAttributes(attribute.String(AttrFallbackReason, x.reason))
		}
		if err != nil {
			x.span.RecordError(err)
			if !isClientCancel(err) {
				x.span.SetStatus(codes.Error, err.Error())
			}
		}
	}
	x.span.End()
	x.unref()
}

func (x *exchange) fallback(reason string) {
	x.path, x.reason = PathFallback, reason
	x.p.tel.fallbacks.Add(x.ctx, 1, metric.WithAttributes(attribute.String("reason", reason)))
	if reason != ReasonClientCancel && x.span.IsRecording() {
		// The client is served (the original request), but the fusion
		// path failed: the span says so where a trace viewer looks.
		x.span.SetStatus(codes.Error, "fusion fallback: "+reason)
	}
}

// skipped notes that the fusion path declined the request.
func (x *exchange) skipped(reason string) {
	x.skip = reason
	x.p.tel.skips.Add(x.ctx, 1, metric.WithAttributes(attribute.String("reason", reason)))
	if x.span.IsRecording() {
		x.span.SetAttributes(attribute.String(AttrSkipReason, reason))
	}
}

// lookedUp counts an eligible request the fusion path was asked about
// (fusionrag.proxy.lookups, and its chunks as hits and misses) and keeps
// what it knew for the cache header; s nil: nothing known.
func (x *exchange) lookedUp(s *Stats) {
	x.p.tel.recordLookup(x.ctx, s)
	if s != nil && s.Hits+s.Misses > 0 {
		x.stats, x.looked = *s, true
		if x.span.IsRecording() {
			x.span.SetAttributes(attribute.Int(AttrChunks, s.Chunks), attribute.Int(AttrHits, s.Hits),
				attribute.Int(AttrMisses, s.Misses), attribute.Float64(AttrHitRate, s.hitRate()))
		}
	}
}

// Handler is the fasthttp handler of the sidecar.
func (p *Proxy) Handler(ctx *fasthttp.RequestCtx) {
	path := ctx.Path() // valid until the handler returns; string(path) where kept
	if ctx.IsGet() || ctx.IsHead() {
		switch string(path) {
		case p.cfg.MetricsPath:
			p.serveMetrics(ctx)
			return
		case p.cfg.HealthPath:
			p.serveHealth(ctx)
			return
		}
	}
	route := routeOf(ctx.Method(), path)
	if engineKVRoute(path) || engineKVRouteRaw(ctx.Request.Header.RequestURI()) {
		// The engine's KV routes (PUT /v1/kv/{key} stores a blob under any
		// key, another tenant's included) are for the adapter, which
		// reaches the engine directly, never for clients of the sidecar.
		writeError(ctx, fasthttp.StatusForbidden, "permission_error", "forbidden",
			"the engine's KV routes are not exposed through the sidecar")
		ctx.SetConnectionClose() // the body, if any, is not read
		return
	}
	// The server read the clock when it called the handler: arrival time
	// without another clock read (zero only for a context built by hand).
	start := ctx.Time()
	if start.IsZero() {
		start = time.Now()
	}
	x := p.newExchange(start, route)
	defer x.unref()
	if p.tel.tracing {
		x.ctx, x.span = p.tel.tracer.Start(x.ctx, SpanRequest, trace.WithSpanKind(trace.SpanKindServer),
			trace.WithAttributes(attribute.String("http.request.method", string(ctx.Method())),
				attribute.String("url.path", string(path)), attribute.String(AttrRoute, route.String())))
	}
	if p.serveDocuments(ctx, x) {
		return
	}

	limit := p.cfg.Limits.MaxRequestBody
	cl := ctx.Request.Header.ContentLength()
	if int64(cl) > limit {
		p.reject(ctx, x, fasthttp.StatusRequestEntityTooLarge, "request_too_large",
			fmt.Sprintf("request body of %d bytes exceeds the limit of %d bytes", cl, limit))
		return
	}
	body, stream, err := p.readBody(ctx, route)
	if err != nil {
		if errors.Is(err, errEligibleTooLarge) {
			p.reject(ctx, x, fasthttp.StatusRequestEntityTooLarge, "request_too_large",
				fmt.Sprintf("request body exceeds limits.max_fusion_body (%d bytes), the most the sidecar reads of a completions request", p.cfg.Limits.MaxFusionBody))
		} else if errors.Is(err, errBodyTooLarge) {
			p.reject(ctx, x, fasthttp.StatusRequestEntityTooLarge, "request_too_large",
				fmt.Sprintf("request body exceeds the limit of %d bytes", limit))
		} else {
			ctx.SetConnectionClose()
			p.reject(ctx, x, fasthttp.StatusBadRequest, "bad_request", "reading request body: "+err.Error())
		}
		return
	}
	if stream != nil || route == RouteOther {
		p.forward(ctx, x, body, stream, cl)
		return
	}
	if !json.Valid(body) && mayCarryKVParams(body) {
		p.reject(ctx, x, fasthttp.StatusBadRequest, "bad_request",
			"invalid JSON body naming kv_transfer_params, which only the sidecar may set")
		return
	}
	if p.fuser == nil || p.cfg.Fusion.Disabled {
		// The "fusionrag" member is addressed to the sidecar and
		// kv_transfer_params is the sidecar's to set: neither reaches the
		// engine from the client, fusion or not.
		x.skip = SkipFusionOff
		body = stripClientControl(body)
		p.forward(ctx, x, body, nil, len(body))
		return
	}
	p.serveEligible(ctx, x, body)
}

// errEligibleTooLarge: a body of an eligible route over MaxFusionBody.
var errEligibleTooLarge = errors.New("proxy: request body over max_fusion_body")

// engineKVRoute reports whether path (decoded and normalised, as
// fasthttp's Path returns it, and as the engine routes it) is one of the
// engine's KV routes: /v1/kv and /v1/kv/{key}.
func engineKVRoute(path []byte) bool {
	return string(path) == "/v1/kv" || bytes.HasPrefix(path, []byte("/v1/kv/"))
}

// engineKVRouteRaw reports whether any reading of the raw request URI an
// engine might make is one of its KV routes. The sidecar forwards the URI
// as the client wrote it, and fasthttp's Path (decoded, dot segments
// resolved) is only one reading: a router that matches the raw path, or
// decodes it without resolving "..", sees "/v1/kv/<key>/../.." and
// "/v1/kv/%2e%2e/" as KV routes while Path says "/v1" and "/v1/" (issue 18).
// So each of up to three percent-decodings is checked as is and cleaned.
func engineKVRouteRaw(uri []byte) bool {
	if i := bytes.IndexByte(uri, '?'); i >= 0 {
		uri = uri[:i]
	}
	// Without escapes, dot segments or empty segments (and so not in
	// absolute form) the raw path is the normalised one, already checked:
	// the pass-through path allocates nothing here.
	if bytes.IndexByte(uri, '%') < 0 && !bytes.Contains(uri, []byte("/.")) && !bytes.Contains(uri, []byte("//")) {
		return false
	}
	p := string(uri)
	if i := strings.Index(p, "://"); i >= 0 { // absolute form: drop scheme://host
		rest := p[i+3:]
		j := strings.IndexByte(rest, '/')
		if j < 0 {
			return false
		}
		p = rest[j:]
	}
	for range 3 {
		if kvPath(p) || kvPath(path.Clean("/"+p)) {
			return true
		}
		d, err := url.PathUnescape(p)
		if err != nil || d == p {
			return false
		}
		p = d
	}
	return kvPath(p) || kvPath(path.Clean("/"+p))
}

func kvPath(p string) bool { return p == "/v1/kv" || strings.HasPrefix(p, "/v1/kv/") }

// readBody returns the whole body (buffered) or, for bodies of other routes
// too large to buffer, a stream bounded by MaxRequestBody. Eligible routes
// are always buffered, up to MaxFusionBody (errEligibleTooLarge beyond it):
// the sidecar must parse them, to fuse and to remove a client's
// kv_transfer_params, which streaming them unread would let through.
func (p *Proxy) readBody(ctx *fasthttp.RequestCtx, route Route) ([]byte, io.Reader, error) {
	cl := ctx.Request.Header.ContentLength()
	switch {
	case cl == 0 || cl == -2: // no body (-2: identity, which a request cannot have)
		return nil, nil, nil
	case cl > 0 && cl <= p.cfg.Limits.BufferBody:
		return ctx.Request.Body(), nil, nil // prefetched whole by the server
	}
	stream := io.Reader(&limitReader{r: ctx.RequestBodyStream(), n: p.cfg.Limits.MaxRequestBody})
	if route == RouteOther {
		return nil, stream, nil
	}
	max := p.cfg.Limits.MaxFusionBody
	if int64(cl) > max {
		return nil, nil, errEligibleTooLarge
	}
	buf, err := io.ReadAll(io.LimitReader(stream, max+1))
	if err != nil {
		return nil, nil, err
	}
	if int64(len(buf)) > max { // chunked and too large
		return nil, nil, errEligibleTooLarge
	}
	return buf, nil, nil
}

// serveEligible runs the fusion path for a buffered body of an eligible route.
func (p *Proxy) serveEligible(ctx *fasthttp.RequestCtx, x *exchange, body []byte) {
	// The Fuser may outlive the handler (a late one is abandoned at the
	// deadline), while fasthttp reuses the request's buffers at once: give
	// it a body, and slices into it, of its own.
	body = append([]byte(nil), body...)
	req, err := ParseRequest(x.route, body)
	var oe *OverrideError
	var ie *InvalidRequestError
	switch {
	case errors.Is(err, ErrMalformed):
		// Forward untouched: the engine answers exactly as it would have.
		x.skip = SkipMalformed
		p.forward(ctx, x, body, nil, len(body))
		return
	case errors.As(err, &oe):
		p.reject(ctx, x, fasthttp.StatusBadRequest, "invalid_fusion_override", oe.Error())
		return
	case errors.As(err, &ie):
		p.reject(ctx, x, fasthttp.StatusBadRequest, "invalid_request", ie.Error())
		return
	case err != nil: // ErrNotEligible
		x.skip = SkipNotEligible
		p.forward(ctx, x, req.Body, nil, len(req.Body))
		return
	}
	h := &ctx.Request.Header
	if p.cfg.Fusion.IgnoreOverrides {
		req.Override = Override{}
	} else if req.Override, err = ParseOverrideHeaders(string(h.Peek(HeaderStrategy)), string(h.Peek(HeaderRatio)), req.Override); err != nil {
		p.reject(ctx, x, fasthttp.StatusBadRequest, "invalid_fusion_override", err.Error())
		return
	}
	req.Tenant, req.TenantSource = p.tenantOf(h)
	if x.span.IsRecording() {
		x.span.SetAttributes(attribute.String(AttrTenantSource, req.TenantSource))
	}

	fused, ok := p.fuse(x, req)
	if !ok {
		p.forward(ctx, x, req.Body, nil, len(req.Body))
		return
	}
	// Try the fused request; if the engine fails or refuses it before
	// anything reached the client, send the original instead.
	resp, err := p.roundTrip(ctx, x, fused, nil, len(fused), "fused")
	if err == nil && resp.StatusCode() < 400 {
		x.path = PathFusion
		p.respond(ctx, x, resp)
		return
	}
	fusedClass := 5
	if err == nil {
		fusedClass = min(resp.StatusCode()/100, 5)
		err = fmt.Errorf("proxy: engine answered %d to the fused request", resp.StatusCode())
		_ = resp.CloseBodyStream()
		fasthttp.ReleaseResponse(resp)
	}
	done := x.done
	x.done = nil
	x.fallback(ReasonUpstreamError)
	x.plan.release() // before the original is sent: a slot it held is free for it
	x.plan = nil
	// The fusion path is at fault only if the engine treats the original
	// better: an engine that fails both (down, overloaded) is not a fusion
	// failure, and opening the breaker would only add full prefills to its
	// load; a request it refuses both ways is the client's error.
	resp, oerr := p.roundTrip(ctx, x, req.Body, nil, len(req.Body), "original")
	origClass := 5
	if oerr == nil {
		origClass = min(resp.StatusCode()/100, 5)
	}
	if origClass == fusedClass {
		done(fmt.Errorf("%w: %w", errEngineFailing, err))
	} else {
		done(err)
	}
	if oerr != nil {
		p.upstreamError(ctx, x, oerr)
		return
	}
	p.respond(ctx, x, resp)
}

// errEngineFailing marks a fused request's failure or refusal that the
// original request met too: the engine's or the client's, not the fusion
// path's (breaker-excluded).
var errEngineFailing = errors.New("proxy: the engine fails or refuses the original request too")

type fuseResult struct {
	plan *Plan
	err  error
}

// fuse asks the Fuser under the breaker and the fusion deadline. On success
// it returns the rewritten body, with x.done and x.plan set; otherwise it has
// recorded why and the caller forwards the original.
func (p *Proxy) fuse(x *exchange, req *Request) ([]byte, bool) {
	select {
	case p.fusions <- struct{}{}:
	default:
		x.skipped(SkipSaturated)
		x.lookedUp(nil)
		return nil, false
	}
	done, err := p.breaker.Allow()
	if err != nil {
		<-p.fusions
		x.fallback(ReasonBreakerOpen)
		x.lookedUp(nil)
		return nil, false
	}
	fctx, cancel := context.WithTimeout(x.ctx, p.cfg.Timeouts.Fusion)
	defer cancel()
	ch := make(chan fuseResult, 1)
	go func() {
		defer func() { <-p.fusions }() // held until the Fuser returns, even if abandoned
		defer func() {
			if v := recover(); v != nil {
				ch <- fuseResult{err: &PanicError{Value: v}}
			}
		}()
		plan, err := p.fuser.Fuse(fctx, req)
		ch <- fuseResult{plan: plan, err: err}
	}()
	var r fuseResult
	select {
	case r = <-ch:
	case <-fctx.Done():
		r.err = fctx.Err()
		go func() { // a late plan is never used: release it
			late := <-ch
			late.plan.release()
		}()
	}
	if r.err == nil && r.plan == nil {
		r.err = errors.New("proxy: fuser returned neither a plan nor an error")
	}
	if r.err != nil && r.plan != nil { // a plan with an error is not used
		r.plan.release()
		r.plan = nil
	}
	// Every eligible request the fusion path was asked about counts in
	// the lookups and, with the chunks it recognised, in the chunk hits and
	// misses: fused, skipped (too many missing) or failed alike.
	var known *Stats
	var skip *SkipError
	switch {
	case r.err == nil:
		known = &r.plan.Stats
	case errors.As(r.err, &skip) && skip.Stats == nil && skip.Reason == SkipNoChunks:
		known = &Stats{} // nothing recognised
	default:
		known = statsOf(r.err)
	}
	x.lookedUp(known)
	var body []byte
	if r.err == nil {
		base := req.Body
		if r.plan.Body != nil {
			base = r.plan.Body
		}
		if body, err = applyPlan(base, r.plan); err != nil {
			r.plan.release()
			done(err)
			reason := ReasonBadPlan
			if ar := adapterReason(err, ""); ar != "" {
				reason = ar
			}
			x.fallback(reason)
			x.span.RecordError(err)
			return nil, false
		}
	}
	var pe *PanicError
	var fe *FallbackError
	switch {
	case r.err == nil:
		x.done, x.plan = done, r.plan
		if x.span.IsRecording() {
			x.span.SetAttributes(r.plan.Stats.Attributes()...)
		}
		p.tel.recordFused(x.ctx, r.plan.Stats)
		return body, true
	case errors.As(r.err, &skip) || errors.Is(r.err, ErrSkip):
		done(r.err)
		reason := "skipped"
		if skip != nil {
			reason = skip.Reason
		}
		x.skipped(reason)
		return nil, false
	case errors.Is(r.err, context.DeadlineExceeded):
		x.fallback(ReasonFuserTimeout)
	case errors.As(r.err, &pe):
		x.fallback(ReasonFuserPanic)
		p.log.Error("fuser panicked", "panic", pe.Value)
	case errors.Is(r.err, context.Canceled):
		x.fallback(ReasonClientCancel)
	case errors.As(r.err, &fe):
		x.fallback(fe.Reason)
	default:
		x.fallback(ReasonFuserError)
	}
	x.span.RecordError(r.err)
	done(r.err)
	return nil, false
}

// roundTrip sends the client's request to the engine with body (buffered)
// or stream (size: Content-Length or -1). The response body is a stream the
// caller must hand to respond or close.
func (p *Proxy) roundTrip(ctx *fasthttp.RequestCtx, x *exchange, body []byte, stream io.Reader, size int, attempt string) (*fasthttp.Response, error) {
	span := noSpan
	if p.tel.tracing {
		_, span = p.tel.tracer.Start(x.ctx, SpanForward, trace.WithSpanKind(trace.SpanKindClient),
			trace.WithAttributes(attribute.String("fusionrag.attempt", attempt)))
	}
	defer span.End()
	req := fasthttp.AcquireRequest()
	defer fasthttp.ReleaseRequest(req)
	ctx.Request.Header.CopyTo(&req.Header)
	stripRequestHopHeaders(&req.Header)
	req.Header.SetNoDefaultContentType(true)
	req.SetRequestURIBytes(ctx.Request.Header.RequestURI())
	setForwardedFor(&req.Header, ctx.RemoteIP())
	switch {
	case stream != nil:
		req.SetBodyStream(stream, size)
	case body != nil:
		req.SetBodyRaw(body)
	default:
		req.ResetBody()
	}
	resp := fasthttp.AcquireResponse()
	err := p.client.Do(req, resp)
	if err != nil {
		fasthttp.ReleaseResponse(resp)
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
		return nil, err
	}
	if span.IsRecording() {
		span.SetAttributes(attribute.Int("http.response.status_code", resp.StatusCode()))
		if resp.StatusCode() >= 400 { // an error for a client span (OTel HTTP semantic conventions)
			span.SetStatus(codes.Error, fmt.Sprintf("engine answered %d", resp.StatusCode()))
		}
	}
	return resp, nil
}

// forward sends the request as is (body already without the "fusionrag"
// member where one was removed) and relays the answer, or an error page.
func (p *Proxy) forward(ctx *fasthttp.RequestCtx, x *exchange, body []byte, stream io.Reader, size int) {
	resp, err := p.roundTrip(ctx, x, body, stream, size, "original")
	if err != nil {
		p.upstreamError(ctx, x, err)
		return
	}
	p.respond(ctx, x, resp)
}

// respond copies the engine's status and headers and relays its body:
// one already read (engineTransport reads small bodies at once) is handed
// over without a copy, a stream is relayed read by read.
func (p *Proxy) respond(ctx *fasthttp.RequestCtx, x *exchange, resp *fasthttp.Response) {
	resp.Header.CopyTo(&ctx.Response.Header)
	stripResponseHopHeaders(&ctx.Response.Header)
	p.setCacheHeader(ctx, x) // before the body: a streamed response's header goes out first
	bs := resp.BodyStream()
	cl := resp.Header.ContentLength()
	if bs == nil || cl == 0 || ctx.IsHead() {
		if ctx.IsHead() || resp.StatusCode() == fasthttp.StatusNotModified {
			// No body to relay: keep the engine's Content-Length as is.
			ctx.Response.SkipBody = true
		} else if bs == nil && len(resp.Body()) > 0 {
			// Swap buffers: the client response takes the engine's body,
			// the engine response (released now) takes the old buffer.
			ctx.Response.SwapBody(resp.SwapBody(ctx.Response.SwapBody(nil)))
		}
		closeEngineBody(resp, nil)
		fasthttp.ReleaseResponse(resp)
		now := time.Now()
		x.firstByteAt(now)
		x.finishAt(now, nil)
		return
	}
	if cl < 0 { // chunked or until-close: re-chunk, one flushed chunk per read
		cl = -1
		ctx.Response.ImmediateHeaderFlush = true
	}
	ctx.Response.SetBodyStream(&relay{x: x, resp: resp, stream: bs}, cl)
}

func (p *Proxy) upstreamError(ctx *fasthttp.RequestCtx, x *exchange, err error) {
	var de *DialError
	var ne net.Error
	status, kind, code := fasthttp.StatusBadGateway, "other", "bad_gateway"
	msg := "the inference engine could not be reached"
	switch {
	case errors.Is(err, errBodyTooLarge):
		p.reject(ctx, x, fasthttp.StatusRequestEntityTooLarge, "request_too_large",
			fmt.Sprintf("request body exceeds the limit of %d bytes", p.cfg.Limits.MaxRequestBody))
		return
	case errors.As(err, &de):
		kind = "connect"
		if errors.As(de.Err, &ne) && ne.Timeout() {
			status, code, msg = fasthttp.StatusGatewayTimeout, "gateway_timeout", "connecting to the inference engine timed out"
		}
	case errors.Is(err, fasthttp.ErrTimeout) || errors.As(err, &ne) && ne.Timeout():
		status, kind, code, msg = fasthttp.StatusGatewayTimeout, "timeout", "gateway_timeout", "the inference engine did not answer in time"
	case errors.Is(err, fasthttp.ErrNoFreeConns):
		status, kind, code, msg = fasthttp.StatusServiceUnavailable, "saturated", "upstream_saturated", "too many concurrent requests to the inference engine"
	}
	p.tel.upstreamErrors.Add(x.ctx, 1, metric.WithAttributes(attribute.String("kind", kind)))
	p.log.Warn("upstream error", "err", err, "status", status)
	ctx.SetConnectionClose()
	writeError(ctx, status, "upstream_error", code, msg+": "+err.Error())
	p.setCacheHeader(ctx, x)
	x.firstByte()
	x.finish(err)
}

func (p *Proxy) reject(ctx *fasthttp.RequestCtx, x *exchange, status int, code, msg string) {
	x.path = PathRejected
	if status == fasthttp.StatusRequestEntityTooLarge {
		lingerError(ctx, status, code, msg)
	} else {
		writeError(ctx, status, "invalid_request_error", code, msg)
		p.setCacheHeader(ctx, x)
	}
	x.firstByte()
	x.finish(nil)
}

// Bounds of the lingering close after a 413.
const (
	lingerTime  = 2 * time.Second
	lingerBytes = 64 << 20
)

// lingerError answers with an error while the client may still be sending a
// body it will never be asked for: it writes the response itself on the
// hijacked connection, then reads and discards what the client still sends
// (bounded in time and bytes) before closing. Closing at once would make the
// kernel reset the connection over the unread data, and the client would
// see a reset instead of the 413.
func lingerError(ctx *fasthttp.RequestCtx, status int, code, msg string) {
	resp := fasthttp.AcquireResponse()
	resp.SetStatusCode(status)
	resp.Header.SetContentType("application/json")
	b, _ := json.Marshal(map[string]any{"error": map[string]any{"message": msg, "type": "invalid_request_error", "param": nil, "code": code}})
	resp.SetBody(b)
	resp.SetConnectionClose()
	ctx.HijackSetNoResponse(true)
	ctx.Hijack(func(c net.Conn) {
		defer fasthttp.ReleaseResponse(resp)
		bw := bufio.NewWriter(c)
		if resp.Write(bw) != nil || bw.Flush() != nil {
			return
		}
		_ = c.SetReadDeadline(time.Now().Add(lingerTime))
		_, _ = io.CopyN(io.Discard, c, lingerBytes)
	})
}

// writeError writes an OpenAI-style error body.
func writeError(ctx *fasthttp.RequestCtx, status int, typ, code, msg string) {
	ctx.Response.Reset()
	ctx.SetStatusCode(status)
	ctx.SetContentType("application/json")
	b, _ := json.Marshal(map[string]any{"error": map[string]any{"message": msg, "type": typ, "param": nil, "code": code}})
	ctx.SetBody(b)
}

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

func bytesReader(b []byte) io.Reader { return &byteReader{b: b} }

// byteReader is a minimal bytes.Reader without WriterTo, so fasthttp frames
// it like any stream.
type byteReader struct{ b []byte }

func (r *byteReader) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, io.EOF
	}
	n := copy(p, r.b)
	r.b = r.b[n:]
	return n, nil
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
