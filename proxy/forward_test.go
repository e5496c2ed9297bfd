package proxy

import (
	"bufio"
	"fmt"
	"net"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/valyala/fasthttp"
)

// parseRequestHeader parses a request head: lines joined by CRLF, without
// the final empty line.
func parseRequestHeader(tb testing.TB, lines ...string) *fasthttp.RequestHeader {
	tb.Helper()
	var h fasthttp.RequestHeader
	raw := strings.Join(lines, "\r\n") + "\r\n\r\n"
	if err := h.Read(bufio.NewReader(strings.NewReader(raw))); err != nil {
		tb.Fatalf("parsing %q: %v", raw, err)
	}
	return &h
}

func parseResponseHeader(tb testing.TB, lines ...string) *fasthttp.ResponseHeader {
	tb.Helper()
	var h fasthttp.ResponseHeader
	raw := strings.Join(lines, "\r\n") + "\r\n\r\n"
	if err := h.Read(bufio.NewReader(strings.NewReader(raw))); err != nil {
		tb.Fatalf("parsing %q: %v", raw, err)
	}
	return &h
}

// fields lists a header's field lines, "Name: value", in fasthttp's order.
func fields(all func(yield func(k, v []byte) bool)) []string {
	var out []string
	for k, v := range all {
		out = append(out, string(k)+": "+string(v))
	}
	return out
}

// byName groups a header's values by lower-cased name, in order: what a
// recipient may rely on (RFC 9110 §5.3: the order of lines of one name is
// significant, across names it is not).
func byName(all func(yield func(k, v []byte) bool)) map[string][]string {
	out := map[string][]string{}
	for k, v := range all {
		n := strings.ToLower(string(k))
		out[n] = append(out[n], string(v))
	}
	return out
}

func TestStripRequestHopHeaders(t *testing.T) {
	many := []string{"GET / HTTP/1.1", "Host: h", "Connection: X-1, X-2, X-3, X-4, X-5, X-6, X-7, X-8, X-9, X-10"}
	for i := 1; i <= 10; i++ {
		many = append(many, fmt.Sprintf("X-%d: v", i))
	}
	tests := []struct {
		name string
		head []string
		want map[string][]string
	}{
		{"nothing to drop", []string{"GET / HTTP/1.1", "Host: h", "Accept: */*", "X-A: 1", "X-A: 2"},
			map[string][]string{"host": {"h"}, "accept": {"*/*"}, "x-a": {"1", "2"}}},
		{"keep-alive", []string{"GET / HTTP/1.1", "Host: h", "Connection: keep-alive", "Accept: */*"},
			map[string][]string{"host": {"h"}, "accept": {"*/*"}}},
		{"close", []string{"GET / HTTP/1.1", "Host: h", "Connection: close", "Accept: */*"},
			map[string][]string{"host": {"h"}, "accept": {"*/*"}}},
		{"hop fields and listed fields", []string{"GET / HTTP/1.1", "Host: h", "Connection: X-Hop, close", "X-Hop: 1",
			"Keep-Alive: timeout=5", "Te: trailers", "Proxy-Authorization: Basic x", "Upgrade: websocket", "X-A: 1"},
			map[string][]string{"host": {"h"}, "x-a": {"1"}}},
		{"listed field in another case", []string{"GET / HTTP/1.1", "Host: h", "connection: x-HOP", "X-Hop: 1", "X-A: 1"},
			map[string][]string{"host": {"h"}, "x-a": {"1"}}},
		{"repeated fields keep their order", []string{"GET / HTTP/1.1", "Host: h", "X-A: 1", "Proxy-Authorization: p",
			"X-A: 2", "X-B: b", "X-A: 3", "Connection: keep-alive"},
			map[string][]string{"host": {"h"}, "x-a": {"1", "2", "3"}, "x-b": {"b"}}},
		{"repeated field last", []string{"GET / HTTP/1.1", "Host: h", "Keep-Alive: 1", "X-A: 1", "X-A: 2"},
			map[string][]string{"host": {"h"}, "x-a": {"1", "2"}}},
		{"more listed fields than the fast path holds", many, map[string][]string{"host": {"h"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := parseRequestHeader(t, tt.head...)
			stripRequestHopHeaders(h)
			if diff := cmp.Diff(tt.want, byName(h.All())); diff != "" {
				t.Errorf("fields after stripping (-want +got):\n%s\nall: %q", diff, fields(h.All()))
			}
			if h.ConnectionClose() {
				t.Error("ConnectionClose set after stripping")
			}
		})
	}
}

func TestStripResponseHopHeaders(t *testing.T) {
	tests := []struct {
		name string
		head []string
		want map[string][]string
	}{
		{"nginx", []string{"HTTP/1.1 200 OK", "Server: nginx", "Content-Type: text/plain", "Content-Length: 2", "Connection: keep-alive"},
			map[string][]string{"server": {"nginx"}, "content-type": {"text/plain"}, "content-length": {"2"}}},
		{"listed and hop fields, cookies", []string{"HTTP/1.1 200 OK", "Content-Length: 0", "Content-Type: a/b", "Connection: X-Hop-Resp",
			"X-Hop-Resp: no", "Keep-Alive: timeout=5", "Set-Cookie: a=1", "Set-Cookie: b=2", "Proxy-Authenticate: Basic", "X-Up: yes"},
			map[string][]string{"content-length": {"0"}, "content-type": {"a/b"}, "set-cookie": {"a=1", "b=2"}, "x-up": {"yes"}}},
		{"repeated fields keep their order", []string{"HTTP/1.1 200 OK", "Content-Length: 0", "Content-Type: a/b", "Vary: a", "Keep-Alive: 1",
			"Vary: b", "Link: <x>", "Vary: c"},
			map[string][]string{"content-length": {"0"}, "content-type": {"a/b"}, "vary": {"a", "b", "c"}, "link": {"<x>"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := parseResponseHeader(t, tt.head...)
			stripResponseHopHeaders(h)
			if diff := cmp.Diff(tt.want, byName(h.All())); diff != "" {
				t.Errorf("fields after stripping (-want +got):\n%s\nall: %q", diff, fields(h.All()))
			}
		})
	}
}

// TestStripHopNoAlloc pins the point of hopScan: the common cases (nothing
// to drop; Connection: keep-alive) allocate nothing.
func TestStripHopNoAlloc(t *testing.T) {
	req := parseRequestHeader(t, "GET /v1/models HTTP/1.1", "Host: h", "User-Agent: u", "Accept: */*", "Connection: keep-alive")
	resp := parseResponseHeader(t, "HTTP/1.1 200 OK", "Server: nginx", "Content-Type: text/plain", "Content-Length: 2", "Connection: keep-alive")
	var r fasthttp.RequestHeader
	var s fasthttp.ResponseHeader
	allocs := testing.AllocsPerRun(100, func() {
		req.CopyTo(&r)
		stripRequestHopHeaders(&r)
		resp.CopyTo(&s)
		stripResponseHopHeaders(&s)
	})
	if allocs != 0 {
		t.Errorf("stripping allocates %v times per request and response, want 0", allocs)
	}
}

// FuzzStripHop checks the fast path against stripHopSlow, which re-adds
// every ordinary field in order: both must leave the same lines of each
// name, in the same order, and no hop-by-hop or Connection-listed field.
func FuzzStripHop(f *testing.F) {
	f.Add("Host: h\r\nConnection: keep-alive\r\nAccept: */*")
	f.Add("Host: h\r\nX-A: 1\r\nKeep-Alive: 5\r\nX-A: 2\r\nConnection: X-B, close\r\nX-B: 3")
	f.Add("Host: h\r\nConnection: a, b, c, d, e, f, g, h, i, j\r\nA: 1\r\nJ: 2\r\nTe: x")
	f.Add("Host: h\r\nCookie: a=1\r\nTransfer-Encoding: chunked\r\nX: 1\r\nX: 2\r\nUpgrade: h2c")
	f.Fuzz(func(t *testing.T, head string) {
		var orig fasthttp.RequestHeader
		raw := "GET / HTTP/1.1\r\n" + head + "\r\n\r\n"
		if orig.Read(bufio.NewReader(strings.NewReader(raw))) != nil {
			return
		}
		var fast, slow fasthttp.RequestHeader
		orig.CopyTo(&fast)
		orig.CopyTo(&slow)
		listed := connectionTokens(orig.Peek("Connection"))
		stripRequestHopHeaders(&fast)
		stripHopSlow(&slow, false)
		slow.ResetConnectionClose()
		if diff := cmp.Diff(byName(slow.All()), byName(fast.All())); diff != "" {
			t.Fatalf("fast path differs from stripHopSlow on %q (-slow +fast):\n%s", raw, diff)
		}
		for k := range fast.All() {
			if isDropped(k, false, listed) {
				t.Fatalf("%s survived stripping of %q", k, raw)
			}
		}
	})
}

func TestSetForwardedFor(t *testing.T) {
	tests := []struct {
		name  string
		ip    net.IP
		prior string
		want  string
	}{
		{"v4", net.IPv4(127, 0, 0, 1).To4(), "", "127.0.0.1"},
		{"v4 in 16 bytes", net.IPv4(10, 1, 2, 3), "", "10.1.2.3"},
		{"v6 loopback", net.IPv6loopback, "", "::1"},
		{"v6", net.ParseIP("2001:db8::1:0:0:1"), "", "2001:db8::1:0:0:1"},
		{"appended", net.IPv4(127, 0, 0, 1), "203.0.113.7", "203.0.113.7, 127.0.0.1"},
		{"unspecified", net.IPv4zero, "203.0.113.7", "203.0.113.7"},
		{"none", nil, "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var h fasthttp.RequestHeader
			if tt.prior != "" {
				h.Set("X-Forwarded-For", tt.prior)
			}
			setForwardedFor(&h, tt.ip)
			if got := string(h.Peek("X-Forwarded-For")); got != tt.want {
				t.Errorf("X-Forwarded-For = %q, want %q", got, tt.want)
			}
			if tt.ip != nil && !tt.ip.IsUnspecified() && tt.prior == "" && tt.want != tt.ip.String() {
				t.Errorf("want %q differs from net.IP.String %q", tt.want, tt.ip.String())
			}
		})
	}
}
