package proxy

import (
	"errors"

	"github.com/valyala/fasthttp"
	"go.opentelemetry.io/otel/attribute"
)

// Route is an OpenAI route on which the fusion path may run.
type Route int

const (
	RouteOther       Route = iota // any other route: always passed through
	RouteChat                     // POST /v1/chat/completions
	RouteCompletions              // POST /v1/completions
)

func (r Route) String() string {
	switch r {
	case RouteChat:
		return "chat"
	case RouteCompletions:
		return "completions"
	}
	return "other"
}

// Path is the route's request path ("" for RouteOther).
func (r Route) Path() string {
	switch r {
	case RouteChat:
		return "/v1/chat/completions"
	case RouteCompletions:
		return "/v1/completions"
	}
	return ""
}

// routeOf returns the route of an HTTP method and path (no query).
func routeOf(method, path []byte) Route {
	if string(method) != "POST" {
		return RouteOther
	}
	switch string(path) {
	case "/v1/chat/completions":
		return RouteChat
	case "/v1/completions":
		return RouteCompletions
	}
	return RouteOther
}

// eligible parses the buffered body of an eligible route and reads the
// request's override headers and tenant. It returns the request the fusion
// path is asked about; otherwise it has answered the client: forwarded a
// body the fusion path does not serve (malformed: untouched; not eligible:
// without the sidecar's members), or refused a bad one (400, fail).
func (p *Proxy) eligible(ctx *fasthttp.RequestCtx, x *exchange, body []byte) (*Request, bool) {
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
		return nil, false
	case errors.As(err, &oe), errors.As(err, &ie): // answered 400
		p.fail(ctx, x, err)
		return nil, false
	case err != nil: // ErrNotEligible
		x.skip = SkipNotEligible
		p.forward(ctx, x, req.Body, nil, len(req.Body))
		return nil, false
	}
	h := &ctx.Request.Header
	if p.cfg.Fusion.IgnoreOverrides {
		req.Override = Override{}
	} else if req.Override, err = ParseOverrideHeaders(string(h.Peek(HeaderStrategy)), string(h.Peek(HeaderRatio)), req.Override); err != nil {
		p.fail(ctx, x, err)
		return nil, false
	}
	req.Tenant, req.TenantSource = p.tenantOf(h)
	if x.span.IsRecording() {
		x.span.SetAttributes(attribute.String(AttrTenantSource, req.TenantSource))
	}
	return req, true
}
