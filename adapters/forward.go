package adapters

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/valyala/fasthttp"
)

// Forwarder sends requests to one engine over a keep-alive fasthttp
// connection pool, streaming response bodies (SSE) through. Adapters embed
// it for their own calls to the engine (KV info, pushes, slot actions); the
// sidecar forwards client requests itself.
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

// Close closes idle connections.
func (f *Forwarder) Close() error {
	f.client.CloseIdleConnections()
	return nil
}

// WithKVParams returns body with "kv_transfer_params": {"namespace": ns}
// as its last member, every other byte unchanged (see SetMember). Any member
// an engine could read as kv_transfer_params (the name in any case, Unicode
// simple folding included, as encoding/json matches it) is removed first:
// only the caller says where the engine finds KV. The body must be a JSON
// object.
func WithKVParams(body []byte, ns string) ([]byte, error) {
	return SetMember(body, "kv_transfer_params", map[string]string{"namespace": ns})
}

// KVParamsLease is the lease of engines that find published KV through the
// forwarded request's kv_transfer_params (native, vLLM's KV connector):
// Rewrite sets {"namespace": Namespace}; Release does nothing (the KV stays
// published under its prefix key until the engine's store evicts it).
type KVParamsLease struct{ Namespace string }

// Rewrite implements Lease.
func (l KVParamsLease) Rewrite(body []byte) ([]byte, error) { return WithKVParams(body, l.Namespace) }

// Release implements Lease: nothing is held.
func (KVParamsLease) Release() {}

// SetMember returns a copy of the JSON object body with "key": value as its
// last member. Every member whose name equals key under Unicode simple case
// folding is removed first (Go's encoding/json matches names that way, and
// both it and Python's json keep the last duplicate): the engine can read
// no other value. Every other byte, whitespace included, is unchanged, so
// the engine parses the rest of the request exactly as the client sent it
// (a re-encoding would reorder keys, and change which of two duplicates
// counts).
func SetMember(body []byte, key string, value any) ([]byte, error) {
	raw, err := json.Marshal(value)
	if err != nil {
		return nil, fmt.Errorf("adapters: %s: %w", key, err)
	}
	if !json.Valid(body) {
		return nil, errors.New("adapters: request body is not valid JSON")
	}
	for {
		ms, err := objectMembers(body)
		if err != nil {
			return nil, err
		}
		idx := slices.IndexFunc(ms.list, func(m member) bool { return strings.EqualFold(m.key, key) })
		if idx < 0 {
			kb, _ := json.Marshal(key) // a string always marshals
			at, lead := ms.end, ","
			if len(ms.list) == 0 {
				at, lead = ms.open, ""
			} else {
				at = ms.list[len(ms.list)-1].end
			}
			out := make([]byte, 0, len(body)+len(kb)+len(raw)+2)
			out = append(out, body[:at]...)
			out = append(out, lead...)
			out = append(out, kb...)
			out = append(out, ':')
			out = append(out, raw...)
			return append(out, body[at:]...), nil
		}
		// Cut `, "key": value` after the previous member, or, for the
		// first, `"key": value, ` up to the next one.
		cut0, cut1 := ms.list[idx].start, ms.list[idx].end
		switch {
		case idx > 0:
			cut0 = ms.list[idx-1].end
		case len(ms.list) > 1:
			cut1 = ms.list[1].start
		}
		out := make([]byte, 0, len(body)-(cut1-cut0))
		out = append(out, body[:cut0]...)
		body = append(out, body[cut1:]...)
	}
}

// member is one "key": value of an object: body[start:end), key unescaped.
type member struct {
	key        string
	start, end int
}

// members are an object's members in order; open is the offset just after
// its '{'.
type members struct {
	list      []member
	open, end int
}

// objectMembers returns the members of the object body (valid JSON).
func objectMembers(body []byte) (members, error) {
	var ms members
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return ms, errors.New("adapters: request body is not a JSON object")
	}
	ms.open = int(dec.InputOffset())
	prev := ms.open
	for dec.More() {
		// The key starts at the first quote after the previous value (and
		// its comma).
		start := prev + bytes.IndexByte(body[prev:], '"')
		t, err := dec.Token()
		if err != nil {
			return ms, err
		}
		k, _ := t.(string)
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return ms, err
		}
		prev = int(dec.InputOffset())
		ms.list = append(ms.list, member{key: k, start: start, end: prev})
	}
	ms.end = prev
	return ms, nil
}
