package proxy

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
)

// Issue 18, finding 6: what a careful operator found at the edges of the
// request path.

// rawRequest sends one request with uri written as is and returns the status.
func rawRequest(t *testing.T, base, method, uri, body string) int {
	t.Helper()
	c, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "%s %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", method, uri, len(body), body)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("%s %s: %v", method, uri, err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// TestEngineEarlyRejectionRelayed: an engine that answers a large streamed
// body before reading it (404 for an unknown route, then closing) has its
// answer relayed, not a 502 from the failed write of the rest of the body.
func TestEngineEarlyRejectionRelayed(t *testing.T) {
	for _, tt := range []struct {
		name string
		up   func(t *testing.T) string
	}{
		{"net/http", func(t *testing.T) string {
			up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				http.Error(w, "no such route", http.StatusNotFound)
			}))
			t.Cleanup(up.Close)
			return up.URL
		}},
		{"answer-and-close", func(t *testing.T) string {
			return earlyAnswerServer(t, "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 13\r\nConnection: close\r\n\r\nno such route")
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, base := startProxy(t, upstreamConfig(tt.up(t)))
			// The client reads the answer while it writes, as an engine's
			// direct client would see it (the write of the rest then fails).
			c, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			go func() {
				fmt.Fprintf(c, "POST /v1/unknown HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n", 20<<20)
				c.Write(bytes.Repeat([]byte("x"), 20<<20))
			}()
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				t.Fatal(err)
			}
			got, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusNotFound || !strings.Contains(string(got), "no such route") {
				t.Errorf("got %d %q, want the engine's 404 \"no such route\"", resp.StatusCode, got)
			}
		})
	}
}

// earlyAnswerServer answers every connection with answer as soon as it has
// read the request header, then closes it with the body unread.
func earlyAnswerServer(t *testing.T, answer string) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				for {
					line, err := br.ReadString('\n')
					if err != nil {
						return
					}
					if line == "\r\n" {
						break
					}
				}
				io.WriteString(c, answer)
			}()
		}
	}()
	return "http://" + ln.Addr().String()
}

// TestNullMembersRefused: a null model, or a null content outside an
// assistant message, is refused with a 400 that says so (they were read as
// ""); a null stream is the API's default (false), and an assistant's null
// content (tool calls) stays valid.
func TestNullMembersRefused(t *testing.T) {
	rc := &recorder{}
	up := httptest.NewServer(rc)
	defer up.Close()
	var fused atomic.Int64
	_, base := startProxy(t, upstreamConfig(up.URL), WithFuser(FuserFunc(func(_ context.Context, r *Request) (*Plan, error) {
		fused.Add(1)
		return nil, Skip("test")
	})))
	for _, tt := range []struct {
		body string
		want int
		msg  string
	}{
		{`{"model":null,"messages":[{"role":"user","content":"x"}]}`, 400, "model is null"},
		{`{"model":"m","messages":[{"role":"user","content":null}]}`, 400, `message 0 (role \"user\") has null content`},
		{`{"model":"m","messages":[{"role":"system","content":"s"},{"role":"user","content": null }]}`, 400, "message 1"},
		{`{"model":"m","stream":null,"messages":[{"role":"user","content":"x"}]}`, 200, ""},
		{`{"model":"m","messages":[{"role":"assistant","content":null,"tool_calls":[]},{"role":"user","content":"x"}]}`, 200, ""},
	} {
		rc.reset()
		code, resp := post(t, base+"/v1/chat/completions", tt.body)
		if code != tt.want || !strings.Contains(resp, tt.msg) {
			t.Errorf("%s: got %d %s, want %d with %q", tt.body, code, resp, tt.want, tt.msg)
		}
		if tt.want == 400 && (len(rc.got()) != 0 || !strings.Contains(resp, "invalid_request")) {
			t.Errorf("%s: engine saw %d requests, answer %s; want none and invalid_request", tt.body, len(rc.got()), resp)
		}
	}
}
