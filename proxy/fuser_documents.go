package proxy

import (
	"crypto/subtle"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"mime"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/fusionrag/fusionrag/fingerprint"

	"github.com/valyala/fasthttp"
	"go.opentelemetry.io/otel/attribute"
)

// Documents is the offline ingest as the proxy consumes it: the handlers of
// POST /v1/fusion/documents and GET /v1/fusion/documents/{id}, answering
// with an HTTP status and a JSON body. The sidecar wires fusion.Queue in
// (package sidecar); the proxy never parses a submission itself.
type Documents interface {
	// Count returns how many documents body submits, so that the proxy
	// refuses a submission over documents.max_documents (413) before
	// HandleSubmit, the same whatever the queue does; an error (a body
	// that does not parse) is left to HandleSubmit to answer.
	Count(body []byte) (int, error)
	// HandleSubmit ingests the documents of body for tenant: their KV is
	// stored under the tenant's keys.
	HandleSubmit(tenant string, body []byte) (int, []byte)
	HandleStatus(id string) (int, []byte)
}

// Ingest routes.
const (
	DocumentsPath = "/v1/fusion/documents"
)

// HeaderAdminKey carries documents.admin_key on POST /v1/fusion/documents.
const HeaderAdminKey = "X-Fusionrag-Admin-Key"

// WithDocuments mounts the ingest routes. The tenant is derived from the
// request like the fusion path's (tenant header or API key), so documents
// are stored under the keys of the tenant that sent them, and a job's status
// is only shown to the tenant that submitted it. Without it, the routes are
// forwarded to the engine like any other.
func WithDocuments(d Documents) Option {
	return func(p *Proxy) {
		p.docs = &docsRoutes{d: d, owner: map[string]string{}, buckets: map[string]*byteBucket{}}
	}
}

// docsRoutes remembers which tenant submitted which job (the most recent
// maxJobOwners jobs).
type docsRoutes struct {
	d     Documents
	mu    sync.Mutex
	owner map[string]string
	order []string

	bmu     sync.Mutex
	buckets map[string]*byteBucket // by tenant
}

// byteBucket is one tenant's token bucket of submission bytes.
type byteBucket struct {
	tokens float64
	last   time.Time
}

// maxBuckets bounds the tenants whose buckets are remembered; past it, the
// full ones are forgotten (a full bucket is what a new tenant gets).
const maxBuckets = 10000

// take spends n bytes of tenant's bucket (refilled at perMinute, holding at
// most capacity). When it holds too few, nothing is spent and wait says
// how long until it holds n.
func (r *docsRoutes) take(tenant string, n, perMinute, capacity int64, now time.Time) (ok bool, wait time.Duration) {
	if perMinute <= 0 {
		return true, 0
	}
	r.bmu.Lock()
	defer r.bmu.Unlock()
	rate := float64(perMinute) / 60 // bytes per second
	b := r.buckets[tenant]
	if b == nil {
		if len(r.buckets) >= maxBuckets {
			for k, o := range r.buckets {
				if o.tokens+now.Sub(o.last).Seconds()*rate >= float64(capacity) {
					delete(r.buckets, k)
				}
			}
		}
		b = &byteBucket{tokens: float64(capacity), last: now}
		r.buckets[tenant] = b
	}
	b.tokens = math.Min(float64(capacity), b.tokens+now.Sub(b.last).Seconds()*rate)
	b.last = now
	if b.tokens < float64(n) {
		return false, time.Duration((float64(n) - b.tokens) / rate * float64(time.Second))
	}
	b.tokens -= float64(n)
	return true, 0
}

// documentTypes are the media types a submission may have: JSON and JSONL.
// Anything else (text/plain, form encodings: what a web page can post
// cross-site without a preflight) is refused with 415.
var documentTypes = map[string]bool{
	"application/json": true, "application/jsonl": true, "application/x-jsonlines": true,
	"application/jsonlines": true, "application/x-ndjson": true, "application/ndjson": true,
}

// admitSubmission decides whether a POST may submit documents, before its
// body is read: the route is closed unless the request carries
// documents.admin_key or a trusted tenant header; the body must be JSON or
// JSONL and within documents.max_bytes. It returns nil or the refusal.
func (p *Proxy) admitSubmission(h *fasthttp.RequestHeader, source string) error {
	dc := p.cfg.Documents
	key := h.Peek(HeaderAdminKey)
	switch {
	case source == fingerprint.TenantFromHeader:
		// The trusted gateway vouches for the tenant.
	case dc.AdminKey != "" && len(key) > 0 && subtle.ConstantTimeCompare(key, []byte(dc.AdminKey)) == 1:
	case dc.AdminKey == "" && p.cfg.Tenant.Header == "-":
		return refuse(errForbidden, "POST "+DocumentsPath+" is closed: set documents.admin_key (sent in "+
			HeaderAdminKey+") or tenant.header (a trusted gateway's tenant header) to open it")
	case len(key) > 0:
		return refuse(errForbidden, "wrong "+HeaderAdminKey)
	default:
		return refuse(errUnauthorized, "POST "+DocumentsPath+" needs "+HeaderAdminKey+" or the trusted tenant header")
	}
	mt, _, err := mime.ParseMediaType(string(h.ContentType()))
	if err != nil || !documentTypes[mt] {
		return refuse(errMediaType, fmt.Sprintf("Content-Type %q: documents are application/json or application/jsonl", h.ContentType()))
	}
	if cl := h.ContentLength(); dc.MaxBytes > 0 && int64(cl) > dc.MaxBytes {
		return refuse(errBodyTooLarge, fmt.Sprintf("submission of %d bytes is over documents.max_bytes (%d)", cl, dc.MaxBytes))
	}
	return nil
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
	x.path = pathDocuments
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
		if err := p.admitSubmission(h, source); err != nil {
			p.fail(ctx, x, err)
			return true
		}
		b, err := p.readWhole(ctx, p.cfg.Documents.MaxBytes)
		if err != nil {
			p.fail(ctx, x, readError(err))
			return true
		}
		if err := p.limitSubmission(tenant, b); err != nil {
			p.fail(ctx, x, err)
			return true
		}
		status, body = p.docs.d.HandleSubmit(tenant, b)
		if status < 300 {
			p.docs.remember(body, tenant)
		}
		if status == fasthttp.StatusTooManyRequests {
			// The queue is full or the tenant holds
			// documents.max_jobs_per_tenant jobs: its body says when to retry.
			var ra struct {
				RetryAfter int `json:"retry_after"`
			}
			if json.Unmarshal(body, &ra) == nil && ra.RetryAfter > 0 {
				ctx.Response.Header.Set("Retry-After", strconv.Itoa(ra.RetryAfter))
			}
		}
	}
	ctx.SetStatusCode(status)
	ctx.SetContentType("application/json")
	ctx.SetBody(body)
	x.firstByte()
	x.finish(nil)
	return true
}

// limitSubmission applies the per-tenant quotas to a read submission:
// documents.tenant_bytes_per_minute (429 with Retry-After) and
// documents.max_documents (413). It returns nil or the refusal.
func (p *Proxy) limitSubmission(tenant string, body []byte) error {
	dc := p.cfg.Documents
	ok, wait := p.docs.take(tenant, int64(len(body)), dc.TenantBytesPerMinute, max(dc.TenantBytesPerMinute, dc.MaxBytes), time.Now())
	if !ok {
		secs := max(1, int(math.Ceil(wait.Seconds())))
		return &refusal{kind: errRateLimited, retryAfter: secs, msg: fmt.Sprintf("this tenant's submissions are over documents.tenant_bytes_per_minute (%d); retry in %d s",
			dc.TenantBytesPerMinute, secs)}
	}
	if dc.MaxDocuments > 0 {
		// The queue parses the body again; the count is checked here so
		// that the refusal is the same whatever the queue does.
		if n, err := p.docs.d.Count(body); err == nil && n > dc.MaxDocuments {
			return refuse(errBodyTooLarge, fmt.Sprintf("%d documents in one submission, over documents.max_documents (%d)",
				n, dc.MaxDocuments))
		}
	}
	return nil
}

// readWhole reads a request body of any size up to MaxRequestBody and
// limit (when positive).
func (p *Proxy) readWhole(ctx *fasthttp.RequestCtx, limit int64) ([]byte, error) {
	n := p.cfg.Limits.MaxRequestBody
	if limit > 0 && (n <= 0 || limit < n) {
		n = limit
	}
	cl := ctx.Request.Header.ContentLength()
	if int64(cl) > n {
		return nil, errBodyTooLarge
	}
	if cl >= 0 && cl <= p.cfg.Limits.BufferBody {
		return append([]byte(nil), ctx.Request.Body()...), nil
	}
	return io.ReadAll(&limitReader{r: ctx.RequestBodyStream(), n: n})
}
