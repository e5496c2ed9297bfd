package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fusionrag/fusionrag/internal/streamtest"
	"github.com/google/go-cmp/cmp"
)

// testTelemetry builds providers without any exporter, whatever the
// environment of the test process says.
func testTelemetry(t testing.TB) *Telemetry {
	t.Helper()
	tel, err := NewTelemetry(context.Background(), func(string) (string, bool) { return "", false })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tel.Shutdown(context.Background()) })
	return tel
}

// startProxy serves a proxy for cfg (Upstream must be set) on a loopback
// port and returns it with its base URL.
func startProxy(t testing.TB, cfg Config, opts ...Option) (*Proxy, string) {
	t.Helper()
	cfg.Listen = "127.0.0.1:0"
	opts = append([]Option{WithTelemetry(testTelemetry(t)), WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil)))}, opts...)
	p, err := New(cfg, opts...)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = p.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = p.Shutdown(ctx)
	})
	return p, "http://" + ln.Addr().String()
}

func upstreamConfig(url string) Config {
	c := DefaultConfig()
	c.Upstream = url
	return c
}

// echo is what the echo upstream saw of a request.
type echo struct {
	Method   string              `json:"method"`
	URI      string              `json:"uri"`
	Host     string              `json:"host"`
	Header   map[string][]string `json:"header"`
	BodySHA  string              `json:"body_sha256"`
	BodyLen  int                 `json:"body_len"`
	Body     string              `json:"body"`
	Chunked  bool                `json:"chunked"`
	RemoteIP string              `json:"remote_ip"`
}

// echoHandler answers with what it saw; the query parameter status sets the
// status code, and it adds response headers (repeated Set-Cookie, a
// Connection-listed hop header) the proxy must treat correctly.
func echoHandler(w http.ResponseWriter, r *http.Request) {
	b, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), 500)
		return
	}
	sum := sha256.Sum256(b)
	e := echo{Method: r.Method, URI: r.RequestURI, Host: r.Host, Header: r.Header, BodySHA: hex.EncodeToString(sum[:]),
		BodyLen: len(b), Chunked: len(r.TransferEncoding) > 0}
	if len(b) <= 1<<16 {
		e.Body = string(b)
	}
	w.Header().Add("Set-Cookie", "a=1")
	w.Header().Add("Set-Cookie", "b=2")
	w.Header().Set("X-Upstream", "yes")
	w.Header().Set("Connection", "X-Hop-Resp")
	w.Header().Set("X-Hop-Resp", "must not pass")
	w.Header().Set("Content-Type", "application/json")
	status := 200
	if s := r.URL.Query().Get("status"); s != "" {
		fmt.Sscan(s, &status)
	}
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(e)
}

func TestForwardFaithful(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(echoHandler))
	defer up.Close()
	_, base := startProxy(t, upstreamConfig(up.URL))

	tests := []struct {
		name, method, uri, body string
		status                  int
	}{
		{"get", "GET", "/v1/models", "", 200},
		{"get query kept raw", "GET", "/v1/files?limit=2&order=desc&x=%2F%20", "", 200},
		{"post other route", "POST", "/v1/embeddings?status=201", `{"input":"hi"}`, 201},
		{"put", "PUT", "/anything/x", "payload", 200},
		{"delete 404", "DELETE", "/v1/files/f1?status=404", "", 404},
		{"patch teapot", "PATCH", "/p?status=418", "{}", 418},
		{"options", "OPTIONS", "/v1/chat/completions", "", 200},
		{"unnormalised path", "GET", "/a//b/../c", "", 200},
		{"chat no fuser", "POST", "/v1/chat/completions", `{"model":"m","messages":[{"role":"user","content":"hi"}]}`, 200},
		{"completions not json", "POST", "/v1/completions", `{"model":`, 200},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, _ := http.NewRequest(tt.method, base+tt.uri, strings.NewReader(tt.body))
			req.Header.Set("Authorization", "Bearer sk-secret")
			req.Header.Set("X-Custom", "v1")
			req.Header.Add("X-Multi", "m1")
			req.Header.Add("X-Multi", "m2")
			req.Header.Set("X-Forwarded-For", "203.0.113.7")
			req.Header.Set("Connection", "X-Hop-Req")
			req.Header.Set("X-Hop-Req", "must not pass")
			req.Header.Set("Proxy-Authorization", "Basic Zm9vOmJhcg==")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if resp.StatusCode != tt.status {
				t.Fatalf("status = %d, want %d", resp.StatusCode, tt.status)
			}
			var e echo
			if err := json.NewDecoder(resp.Body).Decode(&e); err != nil {
				t.Fatal(err)
			}
			got := map[string]any{
				"method": e.Method, "uri": e.URI, "body": e.Body,
				"auth": e.Header["Authorization"], "custom": e.Header["X-Custom"], "multi": e.Header["X-Multi"],
				"xff": e.Header["X-Forwarded-For"], "hopReq": e.Header["X-Hop-Req"], "proxyAuth": e.Header["Proxy-Authorization"],
				"setCookie": resp.Header.Values("Set-Cookie"), "xUpstream": resp.Header.Get("X-Upstream"),
				"hopResp": resp.Header.Get("X-Hop-Resp"),
			}
			want := map[string]any{
				"method": tt.method, "uri": tt.uri, "body": tt.body,
				"auth": []string{"Bearer sk-secret"}, "custom": []string{"v1"}, "multi": []string{"m1", "m2"},
				"xff": []string{"203.0.113.7, 127.0.0.1"}, "hopReq": []string(nil), "proxyAuth": []string(nil),
				"setCookie": []string{"a=1", "b=2"}, "xUpstream": "yes", "hopResp": "",
			}
			if d := cmp.Diff(want, got); d != "" {
				t.Errorf("forwarded request/response differ (-want +got):\n%s", d)
			}
		})
	}
}

func TestHead(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "1234")
		w.Header().Set("X-Method", r.Method)
	}))
	defer up.Close()
	_, base := startProxy(t, upstreamConfig(up.URL))
	resp, err := http.Head(base + "/file")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.ContentLength != 1234 || resp.Header.Get("X-Method") != "HEAD" {
		t.Fatalf("HEAD: status %d, length %d, method %q; want 200, 1234, HEAD", resp.StatusCode, resp.ContentLength, resp.Header.Get("X-Method"))
	}
}

// TestLargeBodies streams a request body far above the buffering threshold,
// with and without Content-Length, and a large response.
func TestLargeBodies(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/download" {
			w.Header().Set("Content-Length", fmt.Sprint(8<<20))
			_, _ = io.Copy(w, io.LimitReader(newPattern(), 8<<20))
			return
		}
		echoHandler(w, r)
	}))
	defer up.Close()
	cfg := upstreamConfig(up.URL)
	cfg.Limits.BufferBody = 64 << 10
	_, base := startProxy(t, cfg)

	const n = 6 << 20
	body := make([]byte, n)
	_, _ = io.ReadFull(newPattern(), body)
	sum := sha256.Sum256(body)
	for _, chunked := range []bool{false, true} {
		t.Run(fmt.Sprintf("chunked=%v", chunked), func(t *testing.T) {
			var r io.Reader = bytes.NewReader(body)
			if chunked {
				r = io.MultiReader(r) // hides the length: net/http sends it chunked
			}
			req, _ := http.NewRequest("POST", base+"/v1/files", r)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var e echo
			if err := json.NewDecoder(resp.Body).Decode(&e); err != nil {
				t.Fatal(err)
			}
			if e.BodyLen != n || e.BodySHA != hex.EncodeToString(sum[:]) || e.Chunked != chunked {
				t.Fatalf("upstream got %d bytes sha %s chunked %v; want %d bytes sha %x chunked %v", e.BodyLen, e.BodySHA, e.Chunked, n, sum, chunked)
			}
		})
	}
	resp, err := http.Get(base + "/download")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	h := sha256.New()
	m, _ := io.Copy(h, resp.Body)
	want := sha256.New()
	_, _ = io.Copy(want, io.LimitReader(newPattern(), 8<<20))
	if m != 8<<20 || !bytes.Equal(h.Sum(nil), want.Sum(nil)) || resp.ContentLength != 8<<20 {
		t.Fatalf("download: %d bytes (Content-Length %d), digest match %v", m, resp.ContentLength, bytes.Equal(h.Sum(nil), want.Sum(nil)))
	}
}

// patternReader yields a deterministic non-repeating-looking byte stream,
// the same however it is chunked.
type patternReader struct{ off *int }

func newPattern() patternReader { return patternReader{off: new(int)} }

func (r patternReader) Read(p []byte) (int, error) {
	for i := range p {
		o := *r.off + i
		p[i] = byte(o*7 + o>>8)
	}
	*r.off += len(p)
	return len(p), nil
}

func TestBodyLimit(t *testing.T) {
	var hits atomic.Int64
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		_, _ = io.Copy(io.Discard, r.Body)
	}))
	defer up.Close()
	cfg := upstreamConfig(up.URL)
	cfg.Limits.MaxRequestBody = 1 << 20
	cfg.Limits.BufferBody = 64 << 10
	_, base := startProxy(t, cfg)
	for _, chunked := range []bool{false, true} {
		t.Run(fmt.Sprintf("chunked=%v", chunked), func(t *testing.T) {
			var r io.Reader = io.LimitReader(newPattern(), 2<<20)
			req, _ := http.NewRequest("POST", base+"/v1/chat/completions", r)
			if !chunked {
				req.ContentLength = 2 << 20
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var e struct {
				Error struct{ Type, Code, Message string }
			}
			_ = json.NewDecoder(resp.Body).Decode(&e)
			if resp.StatusCode != 413 || e.Error.Code != "request_too_large" {
				t.Fatalf("got %d %+v, want 413 request_too_large", resp.StatusCode, e)
			}
		})
	}
	if !testing.Short() {
		// Only the chunked request may have reached the engine (its size is
		// only known once the limit is crossed mid-stream).
		if h := hits.Load(); h > 1 {
			t.Errorf("upstream contacted %d times for oversized bodies, want at most 1", h)
		}
	}
}

// TestSSEEventByEvent runs the engine and the client in lockstep: the engine
// writes event i and then waits until the client has received event i
// through the proxy. Any buffering in the proxy deadlocks (and fails on the
// timeout).
func TestSSEEventByEvent(t *testing.T) {
	const events = 5
	received := make(chan int, events)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		w.Header().Set("Cache-Control", "no-cache")
		fl := w.(http.Flusher)
		for i := 0; i < events; i++ {
			fmt.Fprintf(w, "data: {\"i\":%d}\n\n", i)
			fl.Flush()
			select {
			case got := <-received:
				if got != i {
					return
				}
			case <-time.After(5 * time.Second):
				return // buffered somewhere: the client never saw event i
			}
		}
		fmt.Fprint(w, "data: [DONE]\n\n")
	}))
	defer up.Close()
	_, base := startProxy(t, upstreamConfig(up.URL))
	resp, err := http.Post(base+"/v1/chat/completions", "application/json",
		strings.NewReader(`{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("Content-Type = %q", ct)
	}
	br := bufio.NewReader(resp.Body)
	var got []string
	for i := 0; i <= events; i++ {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("event %d: %v (got so far %q)", i, err, got)
		}
		if _, err := br.ReadString('\n'); err != nil { // blank line ending the event
			t.Fatal(err)
		}
		got = append(got, strings.TrimSpace(line))
		if i < events {
			received <- i
		}
	}
	want := []string{`data: {"i":0}`, `data: {"i":1}`, `data: {"i":2}`, `data: {"i":3}`, `data: {"i":4}`, `data: [DONE]`}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("events (-want +got):\n%s", d)
	}
}

// TestClientDisconnectPropagates: a client that hangs up mid-stream must
// make the proxy drop the engine's stream, so the engine stops generating.
func TestClientDisconnectPropagates(t *testing.T) {
	canceled := make(chan struct{})
	up := httptest.NewServer(streamtest.Counter(20*time.Millisecond, canceled))
	defer up.Close()
	_, base := startProxy(t, upstreamConfig(up.URL))
	conn := streamtest.ReadUntil(t, base, streamtest.Request{Method: "GET", Path: "/stream"}, "data: 1")
	conn.Close()
	select {
	case <-canceled:
	case <-time.After(5 * time.Second):
		t.Fatal("engine still streaming 5s after the client hung up")
	}
}

func TestUpstreamErrors(t *testing.T) {
	// A port with nothing listening: connection refused.
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := "http://" + ln.Addr().String()
	ln.Close()
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-time.After(3 * time.Second):
		case <-r.Context().Done():
		}
	}))
	defer slow.Close()

	tests := []struct {
		name     string
		upstream string
		status   int
		code     string
	}{
		{"refused", dead, 502, "bad_gateway"},
		{"read timeout", slow.URL, 504, "gateway_timeout"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := upstreamConfig(tt.upstream)
			cfg.Timeouts.Read = 300 * time.Millisecond
			_, base := startProxy(t, cfg)
			resp, err := http.Get(base + "/v1/models")
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var e struct {
				Error struct{ Type, Code, Message string }
			}
			if err := json.NewDecoder(resp.Body).Decode(&e); err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != tt.status || e.Error.Code != tt.code || e.Error.Type != "upstream_error" {
				t.Fatalf("got %d %+v; want %d %s", resp.StatusCode, e.Error, tt.status, tt.code)
			}
		})
	}
}

// TestSlowStreamOutlivesReadTimeout: the read timeout is an idle timeout, so
// a stream whose events come faster than it lives as long as it needs.
func TestSlowStreamOutlivesReadTimeout(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		for i := 0; i < 8; i++ {
			fmt.Fprintf(w, "data: %d\n\n", i)
			w.(http.Flusher).Flush()
			time.Sleep(100 * time.Millisecond)
		}
	}))
	defer up.Close()
	cfg := upstreamConfig(up.URL)
	cfg.Timeouts.Read = 400 * time.Millisecond // the stream lasts 800 ms
	_, base := startProxy(t, cfg)
	resp, err := http.Get(base + "/s")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || strings.Count(string(b), "data: ") != 8 {
		t.Fatalf("got %q, %v; want 8 events", b, err)
	}
}

func TestKeepAliveUpstreamPool(t *testing.T) {
	var mu sync.Mutex
	conns := map[string]bool{}
	up := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		conns[r.RemoteAddr] = true
		mu.Unlock()
		_, _ = io.WriteString(w, "ok")
	}))
	up.Start()
	defer up.Close()
	_, base := startProxy(t, upstreamConfig(up.URL))
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1}}
	for i := 0; i < 50; i++ {
		resp, err := client.Post(base+"/v1/x", "text/plain", strings.NewReader("b"))
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	mu.Lock()
	defer mu.Unlock()
	if len(conns) != 1 {
		t.Errorf("50 sequential requests used %d upstream connections, want 1 (keep-alive)", len(conns))
	}
}

// TestStaleUpstreamConnRetried: the engine closes idle keep-alive
// connections; a POST that lands on one must be retried, not failed.
func TestStaleUpstreamConnRetried(t *testing.T) {
	up := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		_, _ = io.WriteString(w, "ok")
	}))
	up.Config.IdleTimeout = 50 * time.Millisecond
	up.Start()
	defer up.Close()
	_, base := startProxy(t, upstreamConfig(up.URL))
	for i := 0; i < 5; i++ {
		resp, err := http.Post(base+"/v1/completions", "application/json", strings.NewReader(`not json`))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(b) != "ok" {
			t.Fatalf("request %d: %d %q", i, resp.StatusCode, b)
		}
		time.Sleep(120 * time.Millisecond) // the engine has closed the idle connection
	}
}

func TestHealthz(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(echoHandler))
	cfg := upstreamConfig(up.URL)
	_, base := startProxy(t, cfg)
	get := func() (int, map[string]string) {
		resp, err := http.Get(base + "/healthz")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var m map[string]string
		_ = json.NewDecoder(resp.Body).Decode(&m)
		return resp.StatusCode, m
	}
	if code, m := get(); code != 200 || m["upstream"] != "reachable" || m["breaker"] != "closed" {
		t.Fatalf("healthy: %d %v", code, m)
	}
	up.Close()
	if code, m := get(); code != 503 || !strings.HasPrefix(m["upstream"], "unreachable") {
		t.Fatalf("engine down: %d %v", code, m)
	}
}
