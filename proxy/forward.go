package proxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/valyala/fasthttp"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
)

// This file is the reverse proxy proper: the upstream connection pool with
// idle timeouts, header rewriting per RFC 9110 §7.6.1, and the response body
// relay that ends an exchange when the last byte has gone (or failed).

// hopHeaders are the hop-by-hop fields a proxy must not forward (RFC 9110
// §7.6.1, plus the de-facto Proxy-Connection and Keep-Alive). Expect is
// answered by the sidecar's own server, so it is not repeated upstream.
var hopHeaders = []string{
	"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization",
	"Te", "Trailer", "Transfer-Encoding", "Upgrade", "Expect",
}

// connectionTokens returns the field names listed in a Connection header,
// lower-cased.
func connectionTokens(v []byte) []string {
	var out []string
	for _, f := range bytes.Split(v, []byte{','}) {
		f = bytes.TrimSpace(f)
		if len(f) == 0 || bytes.EqualFold(f, []byte("close")) || bytes.EqualFold(f, []byte("keep-alive")) {
			continue
		}
		out = append(out, strings.ToLower(string(f)))
	}
	return out
}

// fasthttpSpecial are the fields fasthttp keeps outside its ordered list
// (they are framing, or parsed); deleting and re-adding them is either
// unnecessary or lossy, so stripHop leaves them where they are.
var fasthttpSpecial = []string{
	"Host", "Content-Type", "Content-Length", "User-Agent", "Cookie",
	"Set-Cookie", "Server", "Date", "Transfer-Encoding", "Connection",
	"Trailer", "Content-Encoding",
}

// equalFold reports whether b and s are equal under ASCII case folding
// (field names are tokens: ASCII only).
func equalFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := range len(b) {
		c, d := b[i], s[i]
		if c == d {
			continue
		}
		if c|0x20 != d|0x20 || c|0x20 < 'a' || c|0x20 > 'z' {
			return false
		}
	}
	return true
}

func isSpecial(k []byte) bool {
	for _, s := range fasthttpSpecial {
		if equalFold(k, s) {
			return true
		}
	}
	return false
}

// headerList is what stripHop needs of fasthttp's request and response headers.
type headerList interface {
	VisitAll(func(key, value []byte))
	Peek(key string) []byte
	Del(key string)
	DelBytes(key []byte)
	Add(key, value string)
}

// Bounds of hopScan's fixed arrays; a header beyond them takes the general
// (allocating) path of stripHopSlow.
const (
	maxHopTokens  = 8
	maxHopDropped = 8
	maxHopKept    = 48
)

// hopScan is one pass over a header's fields, without allocating: the
// Connection header's tokens, the fields to drop, and whether a kept
// ordinary field name occurs more than once (then dropping by Del, which
// swaps the last field into the hole, could reorder its lines). All slices
// are views into the header, valid until it is modified.
type hopScan struct {
	keep     bool // keep Transfer-Encoding (responses: it is framing)
	tokens   [maxHopTokens][]byte
	nTokens  int
	dropped  [maxHopDropped][]byte
	nDropped int
	kept     [maxHopKept][]byte
	nKept    int
	repeat   bool // a kept ordinary field name occurs twice
	overflow bool // an array was too small: use stripHopSlow
}

// connection notes the names listed in the Connection header value v.
func (s *hopScan) connection(v []byte) {
	for len(v) > 0 {
		var f []byte
		if i := bytes.IndexByte(v, ','); i >= 0 {
			f, v = v[:i], v[i+1:]
		} else {
			f, v = v, nil
		}
		f = bytes.TrimSpace(f)
		if len(f) == 0 || equalFold(f, "close") || equalFold(f, "keep-alive") {
			continue
		}
		if s.nTokens == maxHopTokens {
			s.overflow = true
			return
		}
		s.tokens[s.nTokens] = f
		s.nTokens++
	}
}

// dropped reports whether field k is hop-by-hop (and not kept) or listed
// in the Connection header.
func (s *hopScan) drops(k []byte) bool {
	for _, name := range hopHeaders {
		if equalFold(k, name) {
			return !(s.keep && name == "Transfer-Encoding")
		}
	}
	for _, t := range s.tokens[:s.nTokens] {
		if bytes.EqualFold(k, t) {
			return true
		}
	}
	return false
}

// visit looks at one field name.
func (s *hopScan) visit(k []byte) {
	if s.overflow {
		return
	}
	if s.drops(k) {
		for _, d := range s.dropped[:s.nDropped] {
			if bytes.EqualFold(d, k) {
				return // Del removes every line of a name at once
			}
		}
		if s.nDropped == maxHopDropped {
			s.overflow = true
			return
		}
		s.dropped[s.nDropped] = k
		s.nDropped++
		return
	}
	if s.repeat || isSpecial(k) {
		return
	}
	for _, o := range s.kept[:s.nKept] {
		if bytes.EqualFold(o, k) {
			s.repeat = true
			return
		}
	}
	if s.nKept == maxHopKept {
		s.overflow = true
		return
	}
	s.kept[s.nKept] = k
	s.nKept++
}

// apply removes the dropped fields from h. Without a repeated kept name,
// deleting reorders only lines of different names, whose order carries no
// meaning (RFC 9110 §5.3); otherwise stripHopSlow keeps every line's place.
func (s *hopScan) apply(h headerList) {
	switch {
	case s.overflow || s.repeat && s.nDropped > 0:
		stripHopSlow(h, s.keep)
	case s.nDropped > 0:
		for _, k := range s.dropped[:s.nDropped] {
			h.DelBytes(k)
		}
	}
}

// stripHopSlow removes the hop-by-hop fields (and the fields the Connection
// header lists), keeping every other field line in its order: fasthttp's Del
// swaps the last field into the hole, and the order of repeated fields is
// significant (RFC 9110 §5.3), so the ordinary fields are re-added in order.
func stripHopSlow(h headerList, keepTE bool) {
	tokens := connectionTokens(h.Peek("Connection"))
	type kv struct{ k, v string }
	var kept []kv
	var dropped []string
	h.VisitAll(func(k, v []byte) {
		switch {
		case isDropped(k, keepTE, tokens):
			dropped = append(dropped, string(k))
		case !isSpecial(k):
			kept = append(kept, kv{string(k), string(v)})
		}
	})
	for _, k := range dropped {
		h.Del(k)
	}
	for _, f := range kept {
		h.Del(f.k)
	}
	for _, f := range kept {
		h.Add(f.k, f.v)
	}
}

// isDropped reports whether field k is hop-by-hop (Transfer-Encoding
// excepted when keepTE) or listed in the Connection header's tokens.
func isDropped(k []byte, keepTE bool, tokens []string) bool {
	for _, name := range hopHeaders {
		if equalFold(k, name) {
			return !(keepTE && name == "Transfer-Encoding")
		}
	}
	for _, t := range tokens {
		if equalFold(k, t) {
			return true
		}
	}
	return false
}

// stripRequestHopHeaders removes the hop-by-hop fields of a request about
// to go upstream.
func stripRequestHopHeaders(h *fasthttp.RequestHeader) {
	var s hopScan
	s.connection(h.Peek("Connection"))
	for k := range h.All() {
		s.visit(k)
	}
	s.apply(h)
	h.ResetConnectionClose()
}

// stripResponseHopHeaders removes the hop-by-hop fields of a response about
// to go to the client; Transfer-Encoding is framing, which fasthttp sets
// from the body.
func stripResponseHopHeaders(h *fasthttp.ResponseHeader) {
	s := hopScan{keep: true}
	s.connection(h.Peek("Connection"))
	for k := range h.All() {
		s.visit(k)
	}
	s.apply(h)
	h.ResetConnectionClose()
}

// setForwardedFor appends the client's address to X-Forwarded-For (or sets
// it), without allocating: net.IP.String would.
func setForwardedFor(h *fasthttp.RequestHeader, ip net.IP) {
	if ip == nil || ip.IsUnspecified() {
		return
	}
	addr, ok := netip.AddrFromSlice(ip)
	if !ok {
		return
	}
	var buf [128]byte
	xff := buf[:0]
	if prior := h.Peek("X-Forwarded-For"); len(prior) > 0 {
		xff = append(append(xff, prior...), ", "...)
	}
	xff = addr.Unmap().AppendTo(xff)
	h.SetBytesV("X-Forwarded-For", xff)
}

// idleConn applies idle read and write timeouts: each Read (Write) must make
// progress within read (write) of the previous one. fasthttp's own deadlines
// are whole-exchange deadlines, which would cut long SSE streams, so they are
// replaced by these. Deadlines are refreshed at most every slack to keep the
// cost off the hot path; the effective timeout is within [d - slack, d].
type idleConn struct {
	net.Conn
	read, write         time.Duration
	lastRead, lastWrite time.Time
	answerDeadline      time.Time // set by answerBy: a fixed read deadline
}

// answerBy fixes the read deadline at t, for reading the answer to a request
// whose write failed (see roundTripOn); the zero t returns to idle timeouts.
func (c *idleConn) answerBy(t time.Time) {
	c.answerDeadline, c.lastRead = t, time.Time{}
	if !t.IsZero() {
		_ = c.Conn.SetReadDeadline(t)
	}
}

func deadlineSlack(d time.Duration) time.Duration {
	return min(d/10, time.Second)
}

func (c *idleConn) Read(b []byte) (int, error) {
	if c.read > 0 && c.answerDeadline.IsZero() {
		if now := time.Now(); now.Sub(c.lastRead) > deadlineSlack(c.read) {
			c.lastRead = now
			if err := c.Conn.SetReadDeadline(now.Add(c.read)); err != nil {
				return 0, err
			}
		}
	}
	return c.Conn.Read(b)
}

func (c *idleConn) Write(b []byte) (int, error) {
	if c.write > 0 {
		if now := time.Now(); now.Sub(c.lastWrite) > deadlineSlack(c.write) {
			c.lastWrite = now
			if err := c.Conn.SetWriteDeadline(now.Add(c.write)); err != nil {
				return 0, err
			}
		}
	}
	return c.Conn.Write(b)
}

// SetReadDeadline and SetWriteDeadline ignore fasthttp's exchange deadlines
// (the client sets no timeouts of its own; see newUpstreamClient).
func (c *idleConn) SetReadDeadline(time.Time) error  { return nil }
func (c *idleConn) SetWriteDeadline(time.Time) error { return nil }
func (c *idleConn) SetDeadline(time.Time) error      { return nil }

// DialError is a failure to connect to the engine.
type DialError struct{ Err error }

func (e *DialError) Error() string { return "proxy: connecting to upstream: " + e.Err.Error() }
func (e *DialError) Unwrap() error { return e.Err }

func newUpstreamClient(cfg Config) (*fasthttp.HostClient, error) {
	addr, err := upstreamAddr(cfg.Upstream)
	if err != nil {
		return nil, err
	}
	t := cfg.Timeouts
	d := net.Dialer{Timeout: t.Connect, KeepAlive: 30 * time.Second}
	c := &fasthttp.HostClient{
		Addr: addr,
		Dial: func(a string) (net.Conn, error) {
			c, err := d.Dial("tcp", a)
			if err != nil {
				return nil, &DialError{Err: err}
			}
			return &idleConn{Conn: c, read: t.Read, write: t.Write}, nil
		},
		Transport:                     engineTransport{},
		MaxConns:                      cfg.Limits.MaxUpstreamConn,
		MaxConnWaitTimeout:            t.Connect,
		MaxIdleConnDuration:           t.Idle,
		StreamResponseBody:            true,
		NoDefaultUserAgentHeader:      true,
		DisablePathNormalizing:        true,
		DisableHeaderNamesNormalizing: false,
		MaxIdemponentCallAttempts:     3,
	}
	// A stale keep-alive connection closed by the engine fails before the
	// engine has seen the request: safe to retry whatever the method.
	// Streamed bodies are never retried (fasthttp cannot rewind them).
	// fasthttp does not watch idle connections, so when one turns out stale
	// the others that sat idle as long are most likely stale too (the engine
	// restarted, or its keep-alive timeout is shorter than timeouts.idle):
	// they are dropped, and the retry dials, instead of spending its
	// attempts on more of them.
	//
	// A stale connection shows as io.EOF or fasthttp.ErrConnectionClosed
	// when the request fits the socket buffer, but a body larger than that
	// (a fused prompt of thousands of tokens) meets the engine's reset while
	// it is still being written: EPIPE or ECONNRESET. Seen in front of
	// llama-server, whose keep-alive is 5 s, when the fusion path held a
	// request for longer than that.
	c.RetryIfErr = func(_ *fasthttp.Request, attempts int, err error) (bool, bool) {
		if !errors.Is(err, fasthttp.ErrConnectionClosed) && !errors.Is(err, io.EOF) &&
			!errors.Is(err, syscall.EPIPE) && !errors.Is(err, syscall.ECONNRESET) {
			return false, false
		}
		c.CloseIdleConnections()
		return false, attempts < 3
	}
	return c, nil
}

// limitReader fails with errBodyTooLarge once more than n bytes were read.
type limitReader struct {
	r io.Reader
	n int64
}

var errBodyTooLarge = errors.New("proxy: request body too large")

func (l *limitReader) Read(b []byte) (int, error) {
	if l.n < 0 {
		return 0, errBodyTooLarge
	}
	if int64(len(b)) > l.n+1 {
		b = b[:l.n+1]
	}
	n, err := l.r.Read(b)
	l.n -= int64(n)
	if l.n < 0 {
		return n, errBodyTooLarge
	}
	return n, err
}

// errClientGone marks a response that could not be delivered because the
// client went away; it is a client cancel, never an engine failure.
var errClientGone = errors.New("proxy: client disconnected")

// isClientCancel reports whether err is a cancel caused by the client.
func isClientCancel(err error) bool {
	return errors.Is(err, errClientGone) || errors.Is(err, context.Canceled)
}

// relay is the response body handed to fasthttp: it reads the engine's
// stream, notes the first byte (TTFT) and ends the exchange exactly once when
// the stream ends, fails, or the client goes away. fasthttp writes each Read
// of a chunked body as one chunk and flushes it, so SSE events reach the
// client as they come.
type relay struct {
	x      *exchange
	resp   *fasthttp.Response
	stream io.Reader
	first  bool
	once   sync.Once
	err    atomic.Value
}

func (r *relay) Read(b []byte) (int, error) {
	n, err := r.stream.Read(b)
	if n > 0 && !r.first {
		r.first = true
		r.x.firstByte()
	}
	if err != nil && err != io.EOF {
		r.err.Store(err)
	}
	return n, err
}

// CloseWithError is called by fasthttp once the body has been written (err
// nil) or writing it failed (err: the client is gone).
func (r *relay) CloseWithError(werr error) error {
	r.once.Do(func() {
		var end error
		if e, ok := r.err.Load().(error); ok {
			end = e // the engine's stream failed
		} else if werr != nil {
			end = errors.Join(errClientGone, werr)
		}
		closeEngineBody(r.resp, end) // end non-nil drops the engine connection: the engine sees the cancel
		fasthttp.ReleaseResponse(r.resp)
		r.x.finish(end)
	})
	return nil
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
		p.fail(ctx, x, err)
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
