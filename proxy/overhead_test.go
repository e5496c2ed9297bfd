package proxy

import (
	"fmt"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
)

// loadResult is one closed-loop load run: requests completed and their
// latencies.
type loadResult struct {
	n       int
	elapsed time.Duration
	lat     []time.Duration
	errs    int
}

func (r loadResult) rps() float64 { return float64(r.n) / r.elapsed.Seconds() }

func (r loadResult) pct(p float64) time.Duration {
	if len(r.lat) == 0 {
		return 0
	}
	return r.lat[min(len(r.lat)-1, int(p*float64(len(r.lat))))]
}

// load runs conns keep-alive clients in a closed loop against addr for d,
// each sending POST /v1/embeddings with a small JSON body.
func load(addr string, conns int, d time.Duration) loadResult {
	c := &fasthttp.HostClient{Addr: addr, MaxConns: conns, NoDefaultUserAgentHeader: true}
	body := []byte(`{"model":"m","input":"hello world"}`)
	var mu sync.Mutex
	var res loadResult
	var wg sync.WaitGroup
	start := time.Now()
	stop := start.Add(d)
	for i := 0; i < conns; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
			defer fasthttp.ReleaseRequest(req)
			defer fasthttp.ReleaseResponse(resp)
			req.SetRequestURI("http://" + addr + "/v1/embeddings")
			req.Header.SetMethod("POST")
			req.Header.SetContentType("application/json")
			var lat []time.Duration
			errs := 0
			for time.Now().Before(stop) {
				req.SetBody(body)
				t0 := time.Now()
				if err := c.Do(req, resp); err != nil || resp.StatusCode() != 200 {
					errs++
					continue
				}
				lat = append(lat, time.Since(t0))
			}
			mu.Lock()
			res.lat = append(res.lat, lat...)
			res.errs += errs
			mu.Unlock()
		}()
	}
	wg.Wait()
	res.elapsed = time.Since(start)
	res.n = len(res.lat)
	slices.Sort(res.lat)
	return res
}

// trivialUpstream is a fasthttp server answering a fixed small JSON body, so
// that the proxy's own cost dominates what the comparison sees.
func trivialUpstream(tb testing.TB) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	resp := []byte(`{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.1,0.2]}]}`)
	s := &fasthttp.Server{Handler: func(ctx *fasthttp.RequestCtx) {
		ctx.SetContentType("application/json")
		ctx.SetBody(resp)
	}}
	go func() { _ = s.Serve(ln) }()
	tb.Cleanup(func() { _ = s.Shutdown() })
	return ln.Addr().String()
}

// BenchmarkPassthroughOverhead measures, in one run, a trivial engine
// directly and through the proxy, alternating direct/proxy rounds so that
// drift of a shared machine hits both alike. It reports the throughput ratio
// (proxy/direct) and the latency the proxy adds at p50 and p99. Run:
//
//	go test ./proxy -run '^$' -bench PassthroughOverhead -benchtime 1x
//
// Figures on a machine whose cores are shared by client, proxy and engine
// understate the proxy (it competes with the load generator for CPU).
func BenchmarkPassthroughOverhead(b *testing.B) {
	up := trivialUpstream(b)
	cfg := DefaultConfig()
	cfg.Upstream = "http://" + up
	_, base := startProxy(b, cfg)
	proxyAddr := base[len("http://"):]
	const conns = 16
	round := 2 * time.Second
	if testing.Short() {
		round = 500 * time.Millisecond
	}
	load(up, conns, 200*time.Millisecond) // warm both paths' connections
	load(proxyAddr, conns, 200*time.Millisecond)
	var direct, proxied loadResult
	for i := 0; i < b.N*3; i++ {
		d := load(up, conns, round)
		p := load(proxyAddr, conns, round)
		direct.lat, proxied.lat = append(direct.lat, d.lat...), append(proxied.lat, p.lat...)
		direct.n, proxied.n = direct.n+d.n, proxied.n+p.n
		direct.elapsed, proxied.elapsed = direct.elapsed+d.elapsed, proxied.elapsed+p.elapsed
		direct.errs, proxied.errs = direct.errs+d.errs, proxied.errs+p.errs
	}
	slices.Sort(direct.lat)
	slices.Sort(proxied.lat)
	if direct.errs+proxied.errs > 0 {
		b.Errorf("errors: direct %d, proxy %d", direct.errs, proxied.errs)
	}
	b.ReportMetric(proxied.rps()/direct.rps(), "throughput_ratio")
	b.ReportMetric(direct.rps(), "direct_rps")
	b.ReportMetric(proxied.rps(), "proxy_rps")
	b.ReportMetric(float64(proxied.pct(0.5)-direct.pct(0.5))/1e3, "added_p50_us")
	b.ReportMetric(float64(proxied.pct(0.99)-direct.pct(0.99))/1e3, "added_p99_us")
	b.Log(fmt.Sprintf("direct: %.0f req/s p50 %v p99 %v; proxy: %.0f req/s p50 %v p99 %v",
		direct.rps(), direct.pct(0.5), direct.pct(0.99), proxied.rps(), proxied.pct(0.5), proxied.pct(0.99)))
}
