package rag

// Test helpers of the proxy's own tests, copied: the end-to-end tests of the
// fusion path through a real proxy moved here from package proxy with the
// fuser, and a package proxy test file cannot be imported.

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"

	"github.com/fusionrag/fusionrag/internal/promexport"
	"github.com/fusionrag/fusionrag/internal/streamtest"
	"github.com/fusionrag/fusionrag/proxy"
)

// post is streamtest.Post.
var post = streamtest.Post

// scrape reads the proxy's /metrics page into series -> value.
func scrape(t *testing.T, p *proxy.Proxy) promexport.Series {
	t.Helper()
	var b strings.Builder
	if err := p.Telemetry().WritePrometheus(context.Background(), &b); err != nil {
		t.Fatal(err)
	}
	m, err := promexport.ParseText(strings.NewReader(b.String()))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func upstreamConfig(url string) proxy.Config {
	c := proxy.DefaultConfig()
	c.Upstream = url
	return c
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
