package proxy

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/valyala/fasthttp"
)

// rawEngine answers each request with the raw HTTP bytes answers[path]
// (written as is: framing errors included; the header alone to a HEAD) and
// counts its connections. A response that ends the connection ("close" in
// the path) is followed by a close.
type rawEngine struct {
	ln      net.Listener
	answers map[string]string
	conns   atomic.Int64
	wg      sync.WaitGroup
}

func newRawEngine(t *testing.T, answers map[string]string) *rawEngine {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e := &rawEngine{ln: ln, answers: answers}
	e.wg.Add(1)
	go e.serve()
	t.Cleanup(func() { ln.Close(); e.wg.Wait() })
	return e
}

func (e *rawEngine) serve() {
	defer e.wg.Done()
	for {
		c, err := e.ln.Accept()
		if err != nil {
			return
		}
		e.conns.Add(1)
		e.wg.Add(1)
		go func() {
			defer e.wg.Done()
			defer c.Close()
			br := bufio.NewReader(c)
			for {
				req, err := http.ReadRequest(br)
				if err != nil {
					return
				}
				_, _ = io.Copy(io.Discard, req.Body)
				a, ok := e.answers[req.URL.Path]
				if !ok {
					a = "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
				}
				if req.Method == "HEAD" {
					a = a[:strings.Index(a, "\r\n\r\n")+4]
				}
				if _, err := io.WriteString(c, a); err != nil || strings.Contains(req.URL.Path, "close") {
					return
				}
			}
		}()
	}
}

// TestEngineTransportFraming sends each answer shape through the proxy and
// checks what the client gets and whether the engine connection was kept
// (a second request on the same shape reuses it) or dropped.
func TestEngineTransportFraming(t *testing.T) {
	big := strings.Repeat("x", smallBody+1)
	answers := map[string]string{
		"/small":       "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"ok\":true}",
		"/empty":       "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
		"/no-content":  "HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n",
		"/not-mod":     "HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\nETag: \"e\"\r\n\r\n",
		"/interim":     "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi",
		"/chunked":     "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
		"/trailers":    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-T\r\n\r\n3\r\nabc\r\n0\r\nX-T: v\r\n\r\n",
		"/big":         "HTTP/1.1 200 OK\r\nContent-Length: " + fmt.Sprint(len(big)) + "\r\n\r\n" + big,
		"/until-close": "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end",
		"/error":       "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy",
	}
	tests := []struct {
		path     string
		method   string
		status   int
		body     string
		header   string // a response field to check, "name: value"
		newConns int64  // engine connections the two requests open
	}{
		{"/small", "GET", 200, `{"ok":true}`, "Content-Type: application/json", 1},
		{"/empty", "GET", 200, "", "", 1},
		{"/no-content", "GET", 204, "", "X-A: 1", 1},
		{"/not-mod", "GET", 304, "", "Etag: \"e\"", 1},
		{"/interim", "GET", 200, "hi", "", 1},
		{"/chunked", "GET", 200, "hello world", "", 1},
		{"/trailers", "GET", 200, "abc", "", 1},
		{"/big", "GET", 200, big, "", 1},
		{"/big", "HEAD", 200, "", "Content-Length: 65537", 1},
		{"/until-close", "GET", 200, "until the end", "", 2},
		{"/error", "POST", 503, "busy", "", 1},
	}
	for _, tt := range tests {
		t.Run(tt.method+tt.path, func(t *testing.T) {
			e := newRawEngine(t, answers)
			_, base := startProxy(t, upstreamConfig("http://"+e.ln.Addr().String()))
			for i := range 2 {
				req, _ := http.NewRequest(tt.method, base+tt.path, nil)
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Fatalf("request %d: %v", i, err)
				}
				b, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if err != nil {
					t.Fatalf("request %d: reading body: %v", i, err)
				}
				got := fmt.Sprintf("%d %q", resp.StatusCode, b)
				if want := fmt.Sprintf("%d %q", tt.status, tt.body); got != want {
					t.Fatalf("request %d: got %.200s, want %.200s", i, got, want)
				}
				if tt.header != "" {
					k, v, _ := strings.Cut(tt.header, ": ")
					if resp.Header.Get(k) != v {
						t.Errorf("request %d: %s = %q, want %q", i, k, resp.Header.Get(k), v)
					}
				}
			}
			if n := e.conns.Load(); n != tt.newConns {
				t.Errorf("two requests opened %d engine connections, want %d", n, tt.newConns)
			}
		})
	}
}

// TestEngineTransportTruncated: an engine that dies inside a body. A small
// body is read before answering, so the client gets a 502; a streamed one
// has its header out already, so the client sees the stream cut. Either
// way the next request works on a fresh connection.
func TestEngineTransportTruncated(t *testing.T) {
	answers := map[string]string{
		"/close-small":   "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
		"/close-chunked": "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n",
		"/ok":            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
	}
	e := newRawEngine(t, answers)
	cfg := upstreamConfig("http://" + e.ln.Addr().String())
	cfg.Timeouts.Read = 2 * time.Second
	_, base := startProxy(t, cfg)

	resp, err := http.Get(base + "/close-small")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 502 || !strings.Contains(string(b), "upstream_error") {
		t.Errorf("truncated small body: %d %s, want 502 upstream_error", resp.StatusCode, b)
	}

	resp, err = http.Get(base + "/close-chunked")
	if err != nil {
		t.Fatal(err)
	}
	b, err = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || err == nil {
		t.Errorf("truncated stream: %d %q, err %v; want 200 and a cut stream", resp.StatusCode, b, err)
	}

	var got []string
	for range 3 {
		resp, err := http.Get(base + "/ok")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		got = append(got, fmt.Sprintf("%d %s", resp.StatusCode, b))
	}
	if d := cmp.Diff([]string{"200 ok", "200 ok", "200 ok"}, got); d != "" {
		t.Errorf("after the failures (-want +got):\n%s", d)
	}
}

// FuzzEngineTransport feeds arbitrary engine answers to engineTransport
// (over an in-memory connection the engine closes after answering): it
// must return an error or a response whose body reads to an end, and give
// the connection back or drop it, never panic or hang.
func FuzzEngineTransport(f *testing.F) {
	for _, a := range []string{
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
		"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
		"HTTP/1.1 200 OK\r\n\r\nuntil close",
		"HTTP/1.1 200 OK\r\nContent-Length: 70000\r\n\r\nshort",
		"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\n",
		"garbage\r\n\r\n",
		"",
	} {
		f.Add(a, false)
		f.Add(a, true)
	}
	f.Fuzz(func(t *testing.T, answer string, head bool) {
		hc := &fasthttp.HostClient{
			Addr:               "engine",
			Transport:          engineTransport{},
			StreamResponseBody: true,
			Dial: func(string) (net.Conn, error) {
				c, s := net.Pipe()
				go func() {
					defer s.Close()
					_ = s.SetDeadline(time.Now().Add(2 * time.Second))
					br := bufio.NewReader(s)
					if _, err := http.ReadRequest(br); err != nil {
						return
					}
					_, _ = io.WriteString(s, answer)
				}()
				return c, nil
			},
		}
		req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
		defer fasthttp.ReleaseRequest(req)
		defer fasthttp.ReleaseResponse(resp)
		req.SetRequestURI("http://engine/v1/models")
		if head {
			req.Header.SetMethod("HEAD")
		}
		if err := hc.DoTimeout(req, resp, 3*time.Second); err != nil {
			return
		}
		if bs := resp.BodyStream(); bs != nil {
			_, _ = io.Copy(io.Discard, io.LimitReader(bs, 1<<20))
		}
		closeEngineBody(resp, nil)
		if n := hc.ConnsCount(); n > 1 {
			t.Errorf("%d connections held after the exchange, want at most 1", n)
		}
	})
}

// TestEngineTransportMix runs clients in parallel over every body shape the
// transport handles, with some clients hanging up mid-stream, and checks
// each answer byte for byte against its request's id: pooled bodies,
// decoders, exchange records and buffers must never carry one request's
// bytes into another's answer. Run it with -race too.
func TestEngineTransportMix(t *testing.T) {
	body := func(kind, id string, n int) string {
		return strings.Repeat(kind+":"+id+";", n)
	}
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		kind, id, _ := strings.Cut(strings.TrimPrefix(r.URL.Path, "/"), "/")
		switch kind {
		case "small": // Content-Length, read at once
			_, _ = io.WriteString(w, body(kind, id, 10))
		case "large": // Content-Length over smallBody: streamed
			b := body(kind, id, smallBody/8)
			w.Header().Set("Content-Length", fmt.Sprint(len(b)))
			_, _ = io.WriteString(w, b)
		case "chunked", "hangup": // chunked, event by event
			w.Header().Set("Content-Type", "text/event-stream")
			for i := range 20 {
				if _, err := fmt.Fprintf(w, "data: %s %d\n\n", body(kind, id, 3), i); err != nil {
					return
				}
				w.(http.Flusher).Flush()
				if kind == "hangup" {
					time.Sleep(5 * time.Millisecond)
				}
			}
		}
	}))
	defer up.Close()
	_, base := startProxy(t, upstreamConfig(up.URL))

	const clients, rounds = 6, 100
	errs := make(chan error, clients)
	for c := range clients {
		go func() {
			client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 2}}
			defer client.CloseIdleConnections()
			for i := range rounds {
				kind := []string{"small", "large", "chunked", "hangup"}[(c+i)%4]
				id := fmt.Sprintf("c%dr%d", c, i)
				if kind == "hangup" {
					if err := hangUp(base, "/hangup/"+id); err != nil {
						errs <- err
						return
					}
					continue
				}
				resp, err := client.Get(base + "/" + kind + "/" + id)
				if err != nil {
					errs <- err
					return
				}
				b, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				var want string
				switch kind {
				case "small":
					want = body(kind, id, 10)
				case "large":
					want = body(kind, id, smallBody/8)
				case "chunked":
					var sb strings.Builder
					for j := range 20 {
						fmt.Fprintf(&sb, "data: %s %d\n\n", body(kind, id, 3), j)
					}
					want = sb.String()
				}
				if err != nil || string(b) != want {
					errs <- fmt.Errorf("%s/%s: %d bytes, err %v; want %d bytes (first 80 got %.80q)", kind, id, len(b), err, len(want), b)
					return
				}
			}
			errs <- nil
		}()
	}
	for range clients {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
}

// hangUp sends GET path on a connection of its own, reads the answer until
// its first event and closes the connection, as a client that goes away.
func hangUp(base, path string) error {
	conn, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
	if err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", path); err != nil {
		return err
	}
	br := bufio.NewReader(conn)
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return fmt.Errorf("%s: no event before hanging up: %w", path, err)
		}
		if strings.HasPrefix(line, "data: ") {
			return nil
		}
	}
}

// TestEngineRestartNoErrors: when the engine restarts, every connection in
// the sidecar's pool is stale. Requests that meet one must be retried on a
// fresh connection, however many stale ones the pool holds, and no client
// sees an error.
func TestEngineRestartNoErrors(t *testing.T) {
	const conns = 16
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		time.Sleep(20 * time.Millisecond) // holds the connection: the burst opens conns of them
		_, _ = io.WriteString(w, "ok")
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	engine := &http.Server{Handler: handler}
	go func() { _ = engine.Serve(ln) }()
	_, base := startProxy(t, upstreamConfig("http://"+addr))

	burst := func() []string {
		var wg sync.WaitGroup
		got := make([]string, conns)
		for i := range conns {
			wg.Add(1)
			go func() {
				defer wg.Done()
				client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
				resp, err := client.Post(base+"/v1/completions", "application/json", strings.NewReader(`{"model":"m","prompt":"x"}`))
				if err != nil {
					got[i] = err.Error()
					return
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				got[i] = fmt.Sprintf("%d %s", resp.StatusCode, b)
			}()
		}
		wg.Wait()
		return got
	}
	want := slices.Repeat([]string{"200 ok"}, conns)
	if d := cmp.Diff(want, burst()); d != "" {
		t.Fatalf("before the restart (-want +got):\n%s", d)
	}

	// Restart: the old engine closes every connection, a new one listens
	// on the same address.
	_ = engine.Close()
	ln, err = net.Listen("tcp", addr)
	if err != nil {
		t.Skipf("cannot listen again on %s: %v", addr, err)
	}
	engine = &http.Server{Handler: handler}
	go func() { _ = engine.Serve(ln) }()
	defer engine.Close()
	time.Sleep(50 * time.Millisecond) // the sidecar's side of the old connections has seen the FIN
	if d := cmp.Diff(want, burst()); d != "" {
		t.Errorf("after the restart (-want +got):\n%s", d)
	}
}

// TestStaleConnectionLargeBody: an engine that closed an idle keep-alive
// connection (llama-server's is 5 s; the fusion path can keep a request
// away from the engine that long) makes the next large request's write fail
// with a broken pipe or a reset rather than io.EOF; the request never
// reached the engine, so it is sent again on a new connection, not
// answered 502.
func TestStaleConnectionLargeBody(t *testing.T) {
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.Copy(io.Discard, r.Body)
		fmt.Fprintf(w, "ok %d", n)
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	engine := &http.Server{Handler: handler, IdleTimeout: 30 * time.Millisecond}
	go func() { _ = engine.Serve(ln) }()
	defer engine.Close()
	_, base := startProxy(t, upstreamConfig("http://"+ln.Addr().String()))
	body := `{"model":"m","prompt":"` + strings.Repeat("x", 4<<20) + `"}`
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	for i := range 4 {
		resp, err := client.Post(base+"/v1/completions", "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if got, want := fmt.Sprintf("%d %s", resp.StatusCode, b), fmt.Sprintf("200 ok %d", len(body)); got != want {
			t.Fatalf("request %d: got %q, want %q", i, got, want)
		}
		time.Sleep(150 * time.Millisecond) // the engine closes the idle connection
	}
}
