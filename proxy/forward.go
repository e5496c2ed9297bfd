package proxy

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"
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
var fasthttpSpecial = map[string]bool{
	"host": true, "content-type": true, "content-length": true, "user-agent": true, "cookie": true,
	"set-cookie": true, "server": true, "date": true, "transfer-encoding": true, "connection": true,
	"trailer": true, "content-encoding": true,
}

// headerList is what stripHop needs of fasthttp's request and response headers.
type headerList interface {
	VisitAll(func(key, value []byte))
	Peek(key string) []byte
	Del(key string)
	Add(key, value string)
}

// stripHop removes the hop-by-hop fields (and the fields the Connection
// header lists), keeping every other field line in its order: fasthttp's Del
// swaps the last field into the hole, and the order of repeated fields is
// significant (RFC 9110 §5.3), so the ordinary fields are re-added in order.
func stripHop(h headerList, keep map[string]bool) {
	tokens := connectionTokens(h.Peek("Connection"))
	// Fast path, the common case: nothing to drop, nothing allocated.
	any := false
	h.VisitAll(func(k, _ []byte) {
		if !any && isDropped(k, keep, tokens) {
			any = true
		}
	})
	if !any {
		return
	}
	type kv struct{ k, v string }
	var kept []kv
	var dropped []string
	h.VisitAll(func(k, v []byte) {
		switch {
		case isDropped(k, keep, tokens):
			dropped = append(dropped, string(k))
		case !fasthttpSpecial[strings.ToLower(string(k))]:
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

// isDropped reports whether field k is hop-by-hop (and not in keep) or
// listed in the Connection header's tokens.
func isDropped(k []byte, keep map[string]bool, tokens []string) bool {
	for _, name := range hopHeaders {
		if len(k) == len(name) && bytes.EqualFold(k, []byte(name)) {
			return !keep[name]
		}
	}
	for _, t := range tokens {
		if len(k) == len(t) && bytes.EqualFold(k, []byte(t)) {
			return true
		}
	}
	return false
}

func stripRequestHopHeaders(h *fasthttp.RequestHeader) {
	stripHop(h, nil)
	h.ResetConnectionClose()
}

// responseKeep: Transfer-Encoding is framing, which fasthttp sets from the body.
var responseKeep = map[string]bool{"Transfer-Encoding": true}

func stripResponseHopHeaders(h *fasthttp.ResponseHeader) {
	stripHop(h, responseKeep)
	h.ResetConnectionClose()
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
}

func deadlineSlack(d time.Duration) time.Duration {
	return min(d/10, time.Second)
}

func (c *idleConn) Read(b []byte) (int, error) {
	if c.read > 0 {
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
	return &fasthttp.HostClient{
		Addr: addr,
		Dial: func(a string) (net.Conn, error) {
			c, err := d.Dial("tcp", a)
			if err != nil {
				return nil, &DialError{Err: err}
			}
			return &idleConn{Conn: c, read: t.Read, write: t.Write}, nil
		},
		MaxConns:                      cfg.Limits.MaxUpstreamConn,
		MaxConnWaitTimeout:            t.Connect,
		MaxIdleConnDuration:           t.Idle,
		StreamResponseBody:            true,
		NoDefaultUserAgentHeader:      true,
		DisablePathNormalizing:        true,
		DisableHeaderNamesNormalizing: false,
		MaxIdemponentCallAttempts:     3,
		// A stale keep-alive connection closed by the engine fails before the
		// engine has seen the request: safe to retry whatever the method.
		// Streamed bodies are never retried (fasthttp cannot rewind them).
		RetryIfErr: func(_ *fasthttp.Request, attempts int, err error) (bool, bool) {
			return false, attempts < 3 && (errors.Is(err, fasthttp.ErrConnectionClosed) || errors.Is(err, io.EOF))
		},
	}, nil
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
		if bs, ok := r.resp.BodyStream().(fasthttp.ReadCloserWithError); ok && end != nil {
			_ = bs.CloseWithError(end) // drops the upstream connection: the engine sees the cancel
		} else {
			_ = r.resp.CloseBodyStream()
		}
		fasthttp.ReleaseResponse(r.resp)
		r.x.finish(end)
	})
	return nil
}
