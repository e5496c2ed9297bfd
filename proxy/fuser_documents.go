package proxy

import (
	"errors"
	"io"
	"strings"

	"github.com/valyala/fasthttp"
	"go.opentelemetry.io/otel/attribute"
)

// Documents is the offline ingest as the proxy consumes it: the handlers of
// POST /v1/fusion/documents and GET /v1/fusion/documents/{id}, answering
// with an HTTP status and a JSON body. fusion.Queue implements it.
type Documents interface {
	HandleSubmit(body []byte) (int, []byte)
	HandleStatus(id string) (int, []byte)
}

// Ingest routes.
const (
	DocumentsPath = "/v1/fusion/documents"
)

// WithDocuments mounts the ingest routes. forTenant returns the ingest of a
// tenant (derived from the request like the fusion path's: tenant header or
// API key), so that documents are stored under the keys of the tenant that
// sent them, and a job id is only visible to its tenant. Without it, the
// routes are forwarded to the engine like any other.
func WithDocuments(forTenant func(tenant string) (Documents, error)) Option {
	return func(p *Proxy) { p.docs = forTenant }
}

// serveDocuments answers the ingest routes; it reports false for any other
// request.
func (p *Proxy) serveDocuments(ctx *fasthttp.RequestCtx, x *exchange) bool {
	if p.docs == nil {
		return false
	}
	path := string(ctx.Path())
	var id string
	switch {
	case path == DocumentsPath && ctx.IsPost():
	case strings.HasPrefix(path, DocumentsPath+"/") && ctx.IsGet():
		id = path[len(DocumentsPath)+1:]
		if id == "" || strings.Contains(id, "/") {
			return false
		}
	default:
		return false
	}
	x.path = "documents"
	h := &ctx.Request.Header
	var tenantHeader string
	if p.cfg.Tenant.Header != "-" {
		tenantHeader = string(h.Peek(p.cfg.Tenant.Header))
	}
	tenant, source := TenantOf(tenantHeader, string(h.Peek("Authorization")))
	x.span.SetAttributes(attribute.String(AttrTenantSource, source))
	d, err := p.docs(tenant)
	if err != nil {
		writeError(ctx, fasthttp.StatusServiceUnavailable, "server_error", "ingest_unavailable", err.Error())
		x.firstByte()
		x.finish(nil)
		return true
	}
	var status int
	var body []byte
	if id != "" {
		status, body = d.HandleStatus(id)
	} else {
		b, err := p.readWhole(ctx)
		if err != nil {
			code, st := "bad_request", fasthttp.StatusBadRequest
			if errors.Is(err, errBodyTooLarge) {
				code, st = "request_too_large", fasthttp.StatusRequestEntityTooLarge
			}
			ctx.SetConnectionClose()
			writeError(ctx, st, "invalid_request_error", code, err.Error())
			x.firstByte()
			x.finish(nil)
			return true
		}
		status, body = d.HandleSubmit(b)
	}
	ctx.SetStatusCode(status)
	ctx.SetContentType("application/json")
	ctx.SetBody(body)
	x.firstByte()
	x.finish(nil)
	return true
}

// readWhole reads a request body of any size up to MaxRequestBody.
func (p *Proxy) readWhole(ctx *fasthttp.RequestCtx) ([]byte, error) {
	cl := ctx.Request.Header.ContentLength()
	if cl >= 0 && cl <= p.cfg.Limits.BufferBody {
		return append([]byte(nil), ctx.Request.Body()...), nil
	}
	if int64(cl) > p.cfg.Limits.MaxRequestBody {
		return nil, errBodyTooLarge
	}
	return io.ReadAll(&limitReader{r: ctx.RequestBodyStream(), n: p.cfg.Limits.MaxRequestBody})
}
