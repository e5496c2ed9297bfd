package proxy

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/valyala/fasthttp"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// This file holds the sidecar's own answers: every error the sidecar answers
// itself, instead of relaying the engine's answer, becomes an HTTP status and
// an OpenAI-style error body in pageOf, and nowhere else. Handlers return
// errors (the kinds below wrapped in a *refusal with the client's message,
// the request parse's *OverrideError and *InvalidRequestError, the upstream
// client's errors) and hand them to fail; they never pick a status.
// TestErrorPages holds every page byte for byte.

// Kinds of refusal: each picks a status and an error code in refusals.
// errBodyTooLarge (forward.go) and errEligibleTooLarge (routing.go) are
// kinds too.
var (
	errKVRoute      = errors.New("proxy: an engine KV route")
	errBadRequest   = errors.New("proxy: bad request")
	errUnreadable   = errors.New("proxy: the request could not be read") // fasthttp's ErrorHandler
	errForbidden    = errors.New("proxy: permission denied")
	errUnauthorized = errors.New("proxy: unauthorized")
	errMediaType    = errors.New("proxy: unsupported media type")
	errRateLimited  = errors.New("proxy: rate limited")
)

// refusal is a request the sidecar answers itself: kind (a kind above) picks
// the status and code, msg is the message the client reads, retryAfter (in
// seconds, when positive) becomes a Retry-After header, cause is the error
// behind it, if any.
type refusal struct {
	kind       error
	msg        string
	retryAfter int
	cause      error
}

// refuse returns a refusal of kind with the client's message.
func refuse(kind error, msg string) error { return &refusal{kind: kind, msg: msg} }

func (e *refusal) Error() string { return e.msg }

func (e *refusal) Unwrap() []error {
	if e.cause == nil {
		return []error{e.kind}
	}
	return []error{e.kind, e.cause}
}

// readError is a failure to read a client's body: too large (413) or cut
// (400), its own text the client's message.
func readError(err error) error {
	kind := errBadRequest
	if errors.Is(err, errBodyTooLarge) {
		kind = errBodyTooLarge
	}
	return &refusal{kind: kind, msg: err.Error(), cause: err}
}

// OpenAI error types of the sidecar's pages.
const (
	typeInvalidRequest = "invalid_request_error"
	typePermission     = "permission_error"
	typeUpstream       = "upstream_error"
)

// refusals maps each kind of refusal to its status and error code.
var refusals = []struct {
	kind      error
	status    int
	typ, code string
}{
	{errKVRoute, fasthttp.StatusForbidden, typePermission, "forbidden"},
	{errBodyTooLarge, fasthttp.StatusRequestEntityTooLarge, typeInvalidRequest, "request_too_large"},
	{errEligibleTooLarge, fasthttp.StatusRequestEntityTooLarge, typeInvalidRequest, "request_too_large"},
	{errBadRequest, fasthttp.StatusBadRequest, typeInvalidRequest, "bad_request"},
	{errForbidden, fasthttp.StatusForbidden, typeInvalidRequest, "permission_denied"},
	{errUnauthorized, fasthttp.StatusUnauthorized, typeInvalidRequest, "unauthorized"},
	{errMediaType, fasthttp.StatusUnsupportedMediaType, typeInvalidRequest, "unsupported_media_type"},
	{errRateLimited, fasthttp.StatusTooManyRequests, typeInvalidRequest, "rate_limit_exceeded"},
}

// errorPage is one answer of the sidecar's own.
type errorPage struct {
	status         int
	typ, code, msg string
	retryAfter     int    // seconds; a Retry-After header when positive
	upstream       string // an engine failure's kind (the upstream_errors label); "" for a refused request
}

// pageOf is the one mapping from an error to the page the client gets.
// Errors of none of the kinds above are the engine's failures: 502, or 504
// for a timeout, 503 when every connection to it is busy.
func (p *Proxy) pageOf(err error) errorPage {
	var (
		r  *refusal
		oe *OverrideError
		ie *InvalidRequestError
	)
	switch {
	case errors.As(err, &oe):
		return errorPage{status: fasthttp.StatusBadRequest, typ: typeInvalidRequest, code: "invalid_fusion_override", msg: oe.Error()}
	case errors.As(err, &ie):
		return errorPage{status: fasthttp.StatusBadRequest, typ: typeInvalidRequest, code: "invalid_request", msg: ie.Error()}
	case errors.Is(err, errUnreadable):
		// fasthttp's own errors keep the code bad_request, 413 included.
		status := fasthttp.StatusBadRequest
		if errors.Is(err, fasthttp.ErrBodyTooLarge) {
			status = fasthttp.StatusRequestEntityTooLarge
		}
		return errorPage{status: status, typ: typeInvalidRequest, code: "bad_request", msg: err.Error()}
	}
	for _, k := range refusals {
		if !errors.Is(err, k.kind) {
			continue
		}
		pg := errorPage{status: k.status, typ: k.typ, code: k.code}
		switch {
		case errors.As(err, &r):
			pg.msg, pg.retryAfter = r.msg, r.retryAfter
		case k.kind == errKVRoute:
			pg.msg = "the engine's KV routes are not exposed through the sidecar"
		case k.kind == errEligibleTooLarge:
			pg.msg = fmt.Sprintf("request body exceeds limits.max_fusion_body (%d bytes), the most the sidecar reads of a completions request", p.cfg.Limits.MaxFusionBody)
		case k.kind == errBodyTooLarge: // cut while read or forwarded
			pg.msg = fmt.Sprintf("request body exceeds the limit of %d bytes", p.cfg.Limits.MaxRequestBody)
		default:
			pg.msg = err.Error()
		}
		return pg
	}
	var de *DialError
	var ne net.Error
	pg := errorPage{status: fasthttp.StatusBadGateway, typ: typeUpstream, code: "bad_gateway", upstream: "other"}
	msg := "the inference engine could not be reached"
	switch {
	case errors.As(err, &de):
		pg.upstream = "connect"
		if errors.As(de.Err, &ne) && ne.Timeout() {
			pg.status, pg.code, msg = fasthttp.StatusGatewayTimeout, "gateway_timeout", "connecting to the inference engine timed out"
		}
	case errors.Is(err, fasthttp.ErrTimeout) || errors.As(err, &ne) && ne.Timeout():
		pg.status, pg.upstream, pg.code, msg = fasthttp.StatusGatewayTimeout, "timeout", "gateway_timeout", "the inference engine did not answer in time"
	case errors.Is(err, fasthttp.ErrNoFreeConns):
		pg.status, pg.upstream, pg.code, msg = fasthttp.StatusServiceUnavailable, "saturated", "upstream_saturated", "too many concurrent requests to the inference engine"
	}
	pg.msg = msg + ": " + err.Error()
	return pg
}

// fail answers the exchange's client with err's page and ends the exchange.
// A refused request of the proxied routes takes the path "rejected" (the
// documents routes keep theirs); a 413 there lingers (lingerPage), since the
// client may still be sending the body. An engine failure is counted and
// logged, and ends the exchange with err.
//
// Trap: the code before issue 17 set Connection: close on engine failures
// and on refused document submissions before writing the page, and writing
// it (Response.Reset) cleared it, so those connections stay open; the
// golden pages hold that behaviour.
func (p *Proxy) fail(ctx *fasthttp.RequestCtx, x *exchange, err error) {
	pg := p.pageOf(err)
	switch {
	case pg.upstream != "":
		p.tel.upstreamErrors.Add(x.ctx, 1, metric.WithAttributes(attribute.String("kind", pg.upstream)))
		p.log.Warn("upstream error", "err", err, "status", pg.status)
	case x.path != pathDocuments:
		x.path = PathRejected
	}
	if pg.status == fasthttp.StatusRequestEntityTooLarge && x.path == PathRejected {
		lingerPage(ctx, pg)
	} else {
		writePage(ctx, pg)
		p.setCacheHeader(ctx, x)
	}
	x.firstByte()
	if pg.upstream != "" {
		x.finish(err)
	} else {
		x.finish(nil)
	}
}

// Bounds of the lingering close after a 413.
const (
	lingerTime  = 2 * time.Second
	lingerBytes = 64 << 20
)

// lingerPage answers with pg while the client may still be sending a body
// it will never be asked for: it writes the response itself on the
// hijacked connection, then reads and discards what the client still sends
// (bounded in time and bytes) before closing. Closing at once would make the
// kernel reset the connection over the unread data, and the client would
// see a reset instead of the 413.
func lingerPage(ctx *fasthttp.RequestCtx, pg errorPage) {
	resp := fasthttp.AcquireResponse()
	resp.SetStatusCode(pg.status)
	resp.Header.SetContentType("application/json")
	resp.SetBody(pg.body())
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

// writePage replaces the response with pg.
func writePage(ctx *fasthttp.RequestCtx, pg errorPage) {
	ctx.Response.Reset()
	ctx.SetStatusCode(pg.status)
	ctx.SetContentType("application/json")
	ctx.SetBody(pg.body())
	if pg.retryAfter > 0 {
		ctx.Response.Header.Set("Retry-After", fmt.Sprint(pg.retryAfter))
	}
}

// body is pg's OpenAI-style error body.
func (pg errorPage) body() []byte {
	b, _ := json.Marshal(map[string]any{"error": map[string]any{"message": pg.msg, "type": pg.typ, "param": nil, "code": pg.code}})
	return b
}
