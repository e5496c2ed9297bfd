package proxy

import (
	"encoding/json"
	"errors"
	"io"
	"strings"
	"sync"

	"github.com/valyala/fasthttp"
	"go.opentelemetry.io/otel/attribute"
)

// Documents is the offline ingest as the proxy consumes it: the handlers of
// POST /v1/fusion/documents and GET /v1/fusion/documents/{id}, answering
// with an HTTP status and a JSON body. fusion.Queue implements it.
type Documents interface {
	// HandleSubmit ingests the documents of body for tenant: their KV is
	// stored under the tenant's keys.
	HandleSubmit(tenant string, body []byte) (int, []byte)
	HandleStatus(id string) (int, []byte)
}

// Ingest routes.
const (
	DocumentsPath = "/v1/fusion/documents"
)

// WithDocuments mounts the ingest routes. The tenant is derived from the
// request like the fusion path's (tenant header or API key), so documents
// are stored under the keys of the tenant that sent them, and a job's status
// is only shown to the tenant that submitted it. Without it, the routes are
// forwarded to the engine like any other.
func WithDocuments(d Documents) Option {
	return func(p *Proxy) { p.docs = &docsRoutes{d: d, owner: map[string]string{}} }
}

// docsRoutes remembers which tenant submitted which job (the most recent
// maxJobOwners jobs).
type docsRoutes struct {
	d     Documents
	mu    sync.Mutex
	owner map[string]string
	order []string
}

const maxJobOwners = 10000

func (r *docsRoutes) remember(body []byte, tenant string) {
	var st struct {
		ID string `json:"id"`
	}
	if json.Unmarshal(body, &st) != nil || st.ID == "" {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.order) >= maxJobOwners {
		delete(r.owner, r.order[0])
		r.order = r.order[1:]
	}
	r.owner[st.ID] = tenant
	r.order = append(r.order, st.ID)
}

func (r *docsRoutes) ownedBy(id, tenant string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.owner[id] == tenant
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
	tenant, source := p.tenantOf(h)
	x.span.SetAttributes(attribute.String(AttrTenantSource, source))
	var status int
	var body []byte
	if id != "" {
		if p.docs.ownedBy(id, tenant) {
			status, body = p.docs.d.HandleStatus(id)
		} else {
			status, body = fasthttp.StatusNotFound, []byte(`{"error":"unknown job"}`)
		}
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
		status, body = p.docs.d.HandleSubmit(tenant, b)
		if status < 300 {
			p.docs.remember(body, tenant)
		}
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
