package proxy

import (
	"bufio"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"
)

// This file is the engine client's transport: fasthttp's HostClient keeps
// the connection pool, dialing, retries and limits; engineTransport does one
// request/response exchange on a pooled connection without allocating.
//
// fasthttp's default transport with StreamResponseBody allocates four
// objects per response (the stream wrapper and three closures), whatever
// the body's size. On the pass-through path those were most of the
// sidecar's garbage, and with one P a GC cycle every ~125 ms at 60k req/s
// held up the requests in flight: the pass-through p99 fell from ~1.5 ms
// to ~1.0 ms once the collector had nothing to do. Here a body whose
// Content-Length is at most smallBody is read at once into the response
// (and the connection goes back to the pool before the client is written
// to); any other body (chunked, SSE, large, until-close) is streamed
// through an engineBody taken from a pool.

// smallBody is the largest response body read whole before answering.
const smallBody = 64 << 10

// engineTransport is the fasthttp.RoundTripper of the engine client. It
// sets no deadlines: HostClient.ReadTimeout, WriteTimeout, MaxConnDuration
// and per-request timeouts (DoTimeout) are not applied, because the
// client's connections are idleConns, whose idle timeouts suit streams
// that last minutes (see newUpstreamClient).
type engineTransport struct{}

func (engineTransport) RoundTrip(hc *fasthttp.HostClient, req *fasthttp.Request, resp *fasthttp.Response) (retry bool, err error) {
	cc, err := hc.AcquireConn(0, req.ConnectionClose())
	if err != nil {
		return false, err
	}
	// The connection type is fasthttp's unexported *clientConn: the generic
	// function names it by inference, and the method expressions are plain
	// function values (no closure is made).
	return roundTripOn(hc, cc, (*fasthttp.HostClient).ReleaseConn, (*fasthttp.HostClient).CloseConn, req, resp)
}

// pooledConn is what roundTripOn needs of fasthttp's pooled connection.
type pooledConn interface{ Conn() net.Conn }

// roundTripOn writes req on cc and reads the answer into resp: the header
// always, the body at once when it is small, otherwise as resp's body
// stream (an *engineBody that gives cc back when closed). release returns
// cc to the pool, drop closes it. retry reports whether the request may be
// sent again (HostClient decides with RetryIfErr).
func roundTripOn[C pooledConn](hc *fasthttp.HostClient, cc C, release, drop func(*fasthttp.HostClient, C), req *fasthttp.Request, resp *fasthttp.Response) (retry bool, err error) {
	conn := cc.Conn()
	bw := hc.AcquireWriter(conn)
	err = req.Write(bw)
	if err == nil {
		err = bw.Flush()
	}
	hc.ReleaseWriter(bw)
	writeFailed := false
	if err != nil {
		if errors.Is(err, errBodyTooLarge) || !answerMayWait(conn) {
			drop(hc, cc)
			return true, err
		}
		// The engine may have answered before reading the whole body (a
		// 404 or 413 for a large upload) and closed the connection, which
		// is what failed the write: relay its answer as it gave it, not a
		// 502 (issue 18). Its answer is already in the socket, so the wait
		// is short; a stale pooled connection reads EOF at once, and then
		// the write's error (and its retry) stands.
		writeFailed = true
		defer answerBy(conn, time.Time{})
		answerBy(conn, time.Now().Add(earlyAnswerWait))
	}
	writeErr := err

	br := hc.AcquireReader(conn)
	b := acquireEngineBody[C]()
	// end gives back what the exchange holds when no body is streamed:
	// keep returns cc to the pool, otherwise it is closed.
	end := func(keep bool) {
		hc.ReleaseReader(br)
		if keep {
			release(hc, cc)
		} else {
			drop(hc, cc)
		}
		b.put()
	}
	h := &b.head
	// Header only (interim 1xx answers skipped); the body is read below,
	// once its size is known.
	h.SkipBody = true
	if err := h.ReadLimitBody(br, 0); err != nil {
		end(false)
		if writeFailed {
			return true, writeErr
		}
		return true, err
	}
	if writeFailed {
		answerBy(conn, time.Time{})
	}
	h.Header.CopyTo(&resp.Header)
	cl := h.Header.ContentLength()
	// After a failed write the request was cut short: the connection ends.
	closeConn := writeFailed || req.ConnectionClose() || h.Header.ConnectionClose()
	status := h.StatusCode()
	if resp.SkipBody || req.Header.IsHead() || cl == 0 || status == fasthttp.StatusNoContent || status == fasthttp.StatusNotModified {
		// No body on the wire, whatever the header says (RFC 9112 §6.3).
		end(!closeConn)
		return false, nil
	}
	if cl > 0 && cl <= smallBody {
		resp.StreamBody = false
		err := resp.ReadBody(br, hc.MaxResponseBodySize)
		end(err == nil && !closeConn)
		if err != nil {
			return !errors.Is(err, fasthttp.ErrBodyTooLarge), err
		}
		return false, nil
	}
	// An until-close body (no Content-Length, not chunked) ends with the
	// connection: it cannot go back to the pool.
	closeConn = closeConn || cl == -2
	h.SkipBody = false
	h.StreamBody = true
	if err := h.ReadBody(br, 0); err != nil { // sets up the stream, reads nothing
		end(false)
		return true, err
	}
	b.start(hc, cc, release, drop, br, closeConn)
	resp.SetBodyStream(b, cl)
	return false, nil
}

// earlyAnswerWait bounds the wait for an answer the engine gave before it
// read the whole request (it is normally in the socket already).
const earlyAnswerWait = time.Second

// answerBy sets a fixed read deadline on conn (zero t: back to the idle
// timeouts of an idleConn).
func answerBy(conn net.Conn, t time.Time) {
	if ic, ok := conn.(*idleConn); ok {
		ic.answerBy(t)
		return
	}
	_ = conn.SetReadDeadline(t)
}

// answerMayWait reports whether conn's reads can be bounded by answerBy.
func answerMayWait(conn net.Conn) bool {
	_, ok := conn.(*idleConn)
	return ok
}

// engineBody is the streamed body of an engine response: it reads through
// fasthttp's decoder (Content-Length, chunked, until-close) and, when
// closed, gives the connection back to the pool if the body was read to
// its end, or closes it otherwise (the engine then sees the cancel).
//
// It is pooled: it must be closed exactly once, through the Response that
// holds it (resp.CloseBodyStream, ReleaseResponse), never by calling
// CloseWithError directly; closeEngineBody with an error marks it first
// (abort) so that the close drops the connection.
type engineBody[C pooledConn] struct {
	mu      sync.Mutex // held by Read; Close waits for a Read in flight
	closed  atomic.Bool
	aborted atomic.Bool
	head    fasthttp.Response // the engine's header and the body decoder's state
	stream  io.Reader         // head's body stream
	eof     bool

	hc            *fasthttp.HostClient
	cc            C
	release, drop func(*fasthttp.HostClient, C)
	br            *bufio.Reader
	closeConn     bool
}

// engineBodies holds *engineBody[C] for the one C in use.
var engineBodies sync.Pool

func acquireEngineBody[C pooledConn]() *engineBody[C] {
	if b, ok := engineBodies.Get().(*engineBody[C]); ok {
		return b
	}
	return new(engineBody[C])
}

func (b *engineBody[C]) start(hc *fasthttp.HostClient, cc C, release, drop func(*fasthttp.HostClient, C), br *bufio.Reader, closeConn bool) {
	b.hc, b.cc, b.release, b.drop, b.br, b.closeConn = hc, cc, release, drop, br, closeConn
	b.stream = b.head.BodyStream()
	b.eof = false
	b.closed.Store(false)
	b.aborted.Store(false)
}

// put resets b (the decoder, if any, goes back to its pool) and returns it
// to the pool.
func (b *engineBody[C]) put() {
	b.head.Reset()
	var zero C
	b.hc, b.cc, b.release, b.drop, b.br, b.stream = nil, zero, nil, nil, nil, nil
	engineBodies.Put(b)
}

func (b *engineBody[C]) Read(p []byte) (int, error) {
	if b.closed.Load() {
		return 0, io.ErrClosedPipe
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed.Load() {
		return 0, io.ErrClosedPipe
	}
	n, err := b.stream.Read(p)
	if err == io.EOF {
		b.eof = true
	}
	return n, err
}

// abort makes the coming close drop the connection.
func (b *engineBody[C]) abort() { b.aborted.Store(true) }

// CloseWithError ends the body: err nil and the body read to its end give
// the connection back to the pool; anything else closes it, interrupting a
// Read in flight.
func (b *engineBody[C]) CloseWithError(err error) error {
	if !b.closed.CompareAndSwap(false, true) {
		return nil
	}
	locked := b.mu.TryLock()
	discard := err != nil || !locked || b.aborted.Load() || !b.eof || b.closeConn
	if discard {
		_ = b.cc.Conn().Close() // unblocks a Read in flight
	}
	if !locked {
		b.mu.Lock()
	}
	hc, cc := b.hc, b.cc
	_ = b.head.CloseBodyStream() // the decoder goes back to its pool
	hc.ReleaseReader(b.br)
	if discard {
		b.drop(hc, cc)
	} else {
		b.release(hc, cc)
	}
	b.mu.Unlock()
	b.put()
	return nil
}

// aborter is an engine body that can be told to drop its connection.
type aborter interface{ abort() }

// closeEngineBody closes resp's body stream; err non-nil (the client went
// away, the relay failed) drops the engine connection, so the engine sees
// the cancel instead of writing into a pooled connection.
func closeEngineBody(resp *fasthttp.Response, err error) {
	if a, ok := resp.BodyStream().(aborter); ok && err != nil {
		a.abort()
	}
	_ = resp.CloseBodyStream()
}
