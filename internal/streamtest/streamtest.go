// Package streamtest drives streaming HTTP responses at the connection level
// for tests: it sends a raw request on a connection of its own, reads the
// response until a given line, and hands the connection back so that the
// test can hang up mid-stream, as a client that goes away does. Counter is
// the other side: an upstream that streams until its client is gone.
package streamtest

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// Request is a raw HTTP/1.1 request. A non-empty Body is sent as JSON with
// its Content-Length; an empty one sends no body and no content headers.
type Request struct {
	Method, Path, Body string
}

// bytes renders r as it goes on the wire.
func (r Request) bytes() string {
	if r.Body == "" {
		return fmt.Sprintf("%s %s HTTP/1.1\r\nHost: x\r\n\r\n", r.Method, r.Path)
	}
	return fmt.Sprintf("%s %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s",
		r.Method, r.Path, len(r.Body), r.Body)
}

// ReadUntil sends req to base ("http://host:port") on a new connection and
// reads the response line by line (headers included) until one starts with
// prefix. It returns the connection still open; the caller closes it. A
// connection or read error, or a response that ends first, fails the test.
func ReadUntil(tb testing.TB, base string, req Request, prefix string) net.Conn {
	tb.Helper()
	conn, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
	if err != nil {
		tb.Fatal(err)
	}
	if _, err := fmt.Fprint(conn, req.bytes()); err != nil {
		conn.Close()
		tb.Fatal(err)
	}
	br := bufio.NewReader(conn)
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			conn.Close()
			tb.Fatalf("%s %s: no line starting with %q: %v", req.Method, req.Path, prefix, err)
		}
		if strings.HasPrefix(line, prefix) {
			return conn
		}
	}
}

// Counter is an upstream that streams server-sent events "data: 0",
// "data: 1", ... one every interval, until its client is gone (the request's
// context ends or a write fails); then it closes gone. It drains the request
// body first.
func Counter(every time.Duration, gone chan<- struct{}) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "text/event-stream")
		fl := w.(http.Flusher)
		for i := 0; ; i++ {
			if _, err := fmt.Fprintf(w, "data: %d\n\n", i); err != nil {
				close(gone)
				return
			}
			fl.Flush()
			select {
			case <-r.Context().Done():
				close(gone)
				return
			case <-time.After(every):
			}
		}
	})
}

// Post is the plain counterpart of the raw requests: a JSON POST of body to
// url through http.DefaultClient with the headers hdr (name, value pairs;
// an empty name is skipped), read whole. A transport error fails the test.
func Post(t testing.TB, url, body string, hdr ...string) (int, string) {
	t.Helper()
	req, err := http.NewRequest("POST", url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	for i := 0; i+1 < len(hdr); i += 2 {
		if hdr[i] == "" {
			continue
		}
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}
