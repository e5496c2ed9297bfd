package rag

// Test helpers of the proxy's own tests, copied: the end-to-end tests of the
// fusion path through a real proxy moved here from package proxy with the
// fuser, and a package proxy test file cannot be imported.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"

	"github.com/fusionrag/fusionrag/proxy"
)

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

func post(t *testing.T, url, body string, hdr ...string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest("POST", url, strings.NewReader(body))
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

// scrape reads the proxy's /metrics page into series -> value.
func scrape(t *testing.T, p *proxy.Proxy) map[string]float64 {
	t.Helper()
	var b strings.Builder
	if err := p.Telemetry().WritePrometheus(context.Background(), &b); err != nil {
		t.Fatal(err)
	}
	return parseExposition(t, b.String())
}

func parseExposition(t *testing.T, text string) map[string]float64 {
	t.Helper()
	m := map[string]float64{}
	for _, line := range strings.Split(text, "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			t.Fatalf("bad exposition line %q", line)
		}
		var v float64
		if _, err := fmt.Sscan(line[i+1:], &v); err != nil {
			t.Fatalf("bad value in %q: %v", line, err)
		}
		m[line[:i]] = v
	}
	return m
}

func dumpMetrics(m map[string]float64) string {
	var b strings.Builder
	for k, v := range m {
		if !strings.Contains(k, "_bucket") {
			fmt.Fprintf(&b, "  %s %v\n", k, v)
		}
	}
	return b.String()
}

// testTelemetry builds providers without any exporter, whatever the
// environment of the test process says.
func testTelemetry(t testing.TB) *proxy.Telemetry {
	t.Helper()
	tel, err := proxy.NewTelemetry(context.Background(), func(string) (string, bool) { return "", false })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tel.Shutdown(context.Background()) })
	return tel
}

// startProxy serves a proxy for cfg (Upstream must be set) on a loopback
// port and returns it with its base URL.
func startProxy(t testing.TB, cfg proxy.Config, opts ...proxy.Option) (*proxy.Proxy, string) {
	t.Helper()
	cfg.Listen = "127.0.0.1:0"
	opts = append([]proxy.Option{proxy.WithTelemetry(testTelemetry(t)), proxy.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil)))}, opts...)
	p, err := proxy.New(cfg, opts...)
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

func upstreamConfig(url string) proxy.Config {
	c := proxy.DefaultConfig()
	c.Upstream = url
	return c
}

func attrs(s *tracepb.Span) map[string]any {
	m := map[string]any{}
	for _, kv := range s.Attributes {
		switch v := kv.Value.Value.(type) {
		case *commonpb.AnyValue_StringValue:
			m[kv.Key] = v.StringValue
		case *commonpb.AnyValue_IntValue:
			m[kv.Key] = v.IntValue
		case *commonpb.AnyValue_DoubleValue:
			m[kv.Key] = v.DoubleValue
		case *commonpb.AnyValue_BoolValue:
			m[kv.Key] = v.BoolValue
		}
	}
	return m
}

// statsFuser runs a real Fuser and records, per request, the tenant the
// sidecar derived and the chunk hits and misses of its plan.
type statsFuser struct {
	f     proxy.Fuser
	mu    sync.Mutex
	plans []tenantStats
}

type tenantStats struct {
	Source       string
	Tenant       string
	Hits, Misses int
}

func (sf *statsFuser) Fuse(ctx context.Context, r *proxy.Request) (*proxy.Plan, error) {
	p, err := sf.f.Fuse(ctx, r)
	if err != nil {
		return p, err
	}
	sf.mu.Lock()
	sf.plans = append(sf.plans, tenantStats{r.TenantSource, r.Tenant, p.Stats.Hits, p.Stats.Misses})
	sf.mu.Unlock()
	return p, nil
}

// applyPlan is the body the engine receives on the fused path, as the
// proxy builds it: proxy.LeaseBody, then the plan's lease rewrites it.
func applyPlan(body []byte, p *proxy.Plan) ([]byte, error) {
	if p == nil || p.Lease == nil {
		return nil, errors.New("plan without a lease")
	}
	body, err := proxy.LeaseBody(body)
	if err != nil {
		return nil, err
	}
	return p.Lease.Rewrite(body)
}
