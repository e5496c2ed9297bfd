package proxy

import (
	"io"
	"log/slog"
	"net"
	"testing"

	"github.com/valyala/fasthttp"
)

// BenchmarkHandlerPassthrough is the sidecar's own per-request work on the
// pass-through path, without the client side's sockets: the handler runs on
// a prepared RequestCtx (a GET as wrk or an SDK sends it, Connection:
// keep-alive included) and forwards to a trivial engine over loopback whose
// answer carries a hop-by-hop field, as nginx's and most servers' do. Its
// allocs/op is the figure to watch (TestPassthroughNoAlloc holds it at
// zero); ns/op includes the upstream round trip. Run:
//
//	go test ./proxy -run '^$' -bench HandlerPassthrough -benchmem
func BenchmarkHandlerPassthrough(b *testing.B) {
	for _, bc := range passthroughCases {
		b.Run(bc.name, func(b *testing.B) {
			serve := passthroughServe(b, bc.method, bc.body)
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				serve()
			}
		})
	}
}

// TestPassthroughNoAlloc pins what engineTransport and the exchange pool
// are for: a forwarded request with a small answer allocates nothing, so
// pass-through traffic gives the collector no work (see transport.go).
func TestPassthroughNoAlloc(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector makes sync.Pool drop items at random")
	}
	for _, bc := range passthroughCases {
		t.Run(bc.name, func(t *testing.T) {
			serve := passthroughServe(t, bc.method, bc.body)
			if allocs := testing.AllocsPerRun(200, serve); allocs != 0 {
				t.Errorf("a forwarded %s allocates %v times, want 0", bc.method, allocs)
			}
		})
	}
}

var passthroughCases = []struct {
	name   string
	method string
	body   string
}{
	{"GET", "GET", ""},
	{"POST", "POST", `{"model":"m","input":"hello world"}`},
}

// passthroughServe builds a proxy in front of keepAliveUpstream and returns
// a function that runs its handler on one prepared request; the engine is
// dialed once before it returns.
func passthroughServe(tb testing.TB, method, body string) func() {
	up := keepAliveUpstream(tb)
	cfg := DefaultConfig()
	cfg.Upstream = "http://" + up
	p, err := New(cfg, WithTelemetry(testTelemetry(tb)), WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(p.client.CloseIdleConnections)
	var req fasthttp.Request
	req.Header.SetMethod(method)
	req.SetRequestURI("/v1/embeddings")
	req.Header.SetHost("127.0.0.1:8000")
	req.Header.Set("User-Agent", "bench/1.0")
	req.Header.Set("Accept", "*/*")
	req.Header.Set("Connection", "keep-alive")
	if body != "" {
		req.Header.SetContentType("application/json")
		req.SetBodyString(body)
	}
	remote := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000}
	// Init once: it allocates the context's connection stand-in, which the
	// real server does not. The handler leaves the request as it found it.
	var ctx fasthttp.RequestCtx
	ctx.Init(&req, remote, nil)
	serve := func() {
		ctx.Response.Reset()
		p.Handler(&ctx)
		if ctx.Response.StatusCode() != fasthttp.StatusOK || len(ctx.Response.Body()) == 0 {
			tb.Fatalf("status %d, body %q", ctx.Response.StatusCode(), ctx.Response.Body())
		}
	}
	serve()
	return serve
}

// keepAliveUpstream is trivialUpstream whose answers carry "Connection:
// keep-alive", a hop-by-hop field the proxy must drop.
func keepAliveUpstream(tb testing.TB) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	resp := []byte(`{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.1,0.2]}]}`)
	s := &fasthttp.Server{Handler: func(ctx *fasthttp.RequestCtx) {
		ctx.SetContentType("application/json")
		ctx.Response.Header.Set("Connection", "keep-alive")
		ctx.SetBody(resp)
	}}
	go func() { _ = s.Serve(ln) }()
	tb.Cleanup(func() { _ = s.Shutdown() })
	return ln.Addr().String()
}
