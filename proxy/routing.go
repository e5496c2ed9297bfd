package proxy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"path"
	"strings"
	"time"

	"github.com/valyala/fasthttp"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
)

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
		writePage(ctx, p.pageOf(errKVRoute))
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
		p.fail(ctx, x, refuse(errBodyTooLarge, fmt.Sprintf("request body of %d bytes exceeds the limit of %d bytes", cl, limit)))
		return
	}
	body, stream, err := p.readBody(ctx, route)
	if err != nil {
		p.fail(ctx, x, err)
		return
	}
	if stream != nil || route == RouteOther {
		p.forward(ctx, x, body, stream, cl)
		return
	}
	if !json.Valid(body) && mayCarryKVParams(body) {
		p.fail(ctx, x, refuse(errBadRequest, "invalid JSON body naming kv_transfer_params, which only the sidecar may set"))
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
// too large to buffer, a stream bounded by MaxRequestBody. Its errors are
// refusals (pageOf). Eligible routes
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
	if errors.Is(err, errBodyTooLarge) {
		return nil, nil, err
	}
	if err != nil {
		return nil, nil, &refusal{kind: errBadRequest, msg: "reading request body: " + err.Error(), cause: err}
	}
	if int64(len(buf)) > max { // chunked and too large
		return nil, nil, errEligibleTooLarge
	}
	return buf, nil, nil
}
