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
// allocs/op is the figure to watch (zero is the aim); ns/op includes the
// upstream round trip. Run:
//
//	go test ./proxy -run '^$' -bench HandlerPassthrough -benchmem
func BenchmarkHandlerPassthrough(b *testing.B) {
	for _, bc := range []struct {
		name   string
		method string
		body   string
	}{
		{"GET", "GET", ""},
		{"POST", "POST", `{"model":"m","input":"hello world"}`},
	} {
		b.Run(bc.name, func(b *testing.B) {
			up := keepAliveUpstream(b)
			cfg := DefaultConfig()
			cfg.Upstream = "http://" + up
			p, err := New(cfg, WithTelemetry(testTelemetry(b)), WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(p.client.CloseIdleConnections)
			var req fasthttp.Request
			req.Header.SetMethod(bc.method)
			req.SetRequestURI("/v1/embeddings")
			req.Header.SetHost("127.0.0.1:8000")
			req.Header.Set("User-Agent", "bench/1.0")
			req.Header.Set("Accept", "*/*")
			req.Header.Set("Connection", "keep-alive")
			if bc.body != "" {
				req.Header.SetContentType("application/json")
				req.SetBodyString(bc.body)
			}
			remote := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000}
			var ctx fasthttp.RequestCtx
			serve := func() {
				ctx.Init(&req, remote, nil)
				p.Handler(&ctx)
				if ctx.Response.StatusCode() != fasthttp.StatusOK || len(ctx.Response.Body()) == 0 {
					b.Fatalf("status %d, body %q", ctx.Response.StatusCode(), ctx.Response.Body())
				}
			}
			serve() // dial the engine outside the measurement
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				serve()
			}
		})
	}
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
