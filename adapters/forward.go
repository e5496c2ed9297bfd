package adapters

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/valyala/fasthttp"
)

// Forwarder sends requests to one engine over a keep-alive fasthttp
// connection pool, streaming response bodies (SSE) through. Adapters embed
// it.
type Forwarder struct {
	base    *url.URL
	client  *fasthttp.HostClient
	timeout time.Duration
}

// NewForwarder returns a forwarder for the engine at cfg.URL.
func NewForwarder(cfg Config) (*Forwarder, error) {
	u, err := url.Parse(cfg.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("%w: engine URL %q (want http://host:port)", ErrConfig, cfg.URL)
	}
	return &Forwarder{
		base: u,
		client: &fasthttp.HostClient{
			Addr:                          hostPort(u),
			IsTLS:                         u.Scheme == "https",
			MaxConns:                      cfg.MaxConns,
			StreamResponseBody:            true,
			DisableHeaderNamesNormalizing: true,
			DisablePathNormalizing:        true,
			// Below vLLM's and uvicorn's 5 s keep-alive: the engine must not
			// be the one to close an idle connection (fasthttp only finds
			// out on the next request).
			MaxIdleConnDuration: 4 * time.Second,
		},
		timeout: cfg.Timeout,
	}, nil
}

func hostPort(u *url.URL) string {
	if u.Port() != "" {
		return u.Host
	}
	if u.Scheme == "https" {
		return u.Host + ":443"
	}
	return u.Host + ":80"
}

// URL returns the engine URL of path.
func (f *Forwarder) URL(path string) string { return f.base.Scheme + "://" + f.base.Host + path }

func (f *Forwarder) deadline(ctx context.Context) time.Time {
	if d, ok := ctx.Deadline(); ok {
		return d
	}
	return time.Now().Add(f.timeout)
}

// Forward implements Engine.Forward. The ctx is checked before sending and
// its deadline bounds the exchange; fasthttp has no cancellation, so a
// caller whose client leaves mid-stream closes resp's body stream
// (resp.CloseBodyStream), which closes the engine connection and so cancels
// the engine's work.
func (f *Forwarder) Forward(ctx context.Context, req *fasthttp.Request, resp *fasthttp.Response) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	req.URI().SetScheme(f.base.Scheme)
	req.URI().SetHost(f.base.Host)
	req.SetHost(f.base.Host)
	if err := f.client.DoDeadline(req, resp, f.deadline(ctx)); err != nil {
		return fmt.Errorf("adapters: forward to %s: %w", f.base.Host, err)
	}
	return nil
}

// Do sends a small request (method, path, body) and returns status and body.
func (f *Forwarder) Do(ctx context.Context, method, path, contentType string, body []byte) (int, []byte, error) {
	req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.Header.SetMethod(method)
	req.SetRequestURI(f.URL(path))
	if contentType != "" {
		req.Header.SetContentType(contentType)
	}
	req.SetBodyRaw(body)
	if err := f.client.DoDeadline(req, resp, f.deadline(ctx)); err != nil {
		return 0, nil, fmt.Errorf("adapters: %s %s: %w", method, f.URL(path), err)
	}
	b, err := resp.BodyUncompressed()
	if err != nil {
		return 0, nil, fmt.Errorf("adapters: %s %s: reading body: %w", method, f.URL(path), err)
	}
	return resp.StatusCode(), append([]byte(nil), b...), nil
}

// Health checks GET /health.
func (f *Forwarder) Health(ctx context.Context) error {
	code, body, err := f.Do(ctx, fasthttp.MethodGet, "/health", "", nil)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrUnhealthy, err)
	}
	if code != fasthttp.StatusOK {
		return fmt.Errorf("%w: GET /health: %d %s", ErrUnhealthy, code, truncate(body))
	}
	return nil
}

// Close closes idle connections.
func (f *Forwarder) Close() error {
	f.client.CloseIdleConnections()
	return nil
}

func truncate(b []byte) string {
	if len(b) > 200 {
		return string(b[:200]) + "..."
	}
	return string(b)
}

// WithKVParams returns body with "kv_transfer_params": {"namespace": ns}
// set, every other field kept. Any member an engine could read as
// kv_transfer_params (the name in any case, Unicode simple folding
// included, as encoding/json matches it) is replaced: only the caller says
// where the engine finds KV. The body must be a JSON object.
func WithKVParams(body []byte, ns string) ([]byte, error) {
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(body, &obj); err != nil || obj == nil {
		return nil, fmt.Errorf("adapters: request body is not a JSON object: %v", err)
	}
	for k := range obj {
		if strings.EqualFold(k, "kv_transfer_params") {
			delete(obj, k)
		}
	}
	p, _ := json.Marshal(map[string]string{"namespace": ns})
	obj["kv_transfer_params"] = p
	return json.Marshal(obj)
}
