package rag

import (
	"context"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/fusionrag/fusionrag/adapters"
	"github.com/fusionrag/fusionrag/adapters/native"
	"github.com/fusionrag/fusionrag/engine"
	"github.com/fusionrag/fusionrag/internal/proxytest"
	"github.com/fusionrag/fusionrag/internal/redistest"
	"github.com/fusionrag/fusionrag/kvstore"
	"github.com/fusionrag/fusionrag/proxy"
	"github.com/sony/gobreaker/v2"
)

// TestRedisDownIsAMiss (issue 18 finding 4): a real redis-server killed
// under a tiered mem+disk+redis store behind the Fuser. Chunks held on
// disk still hit; chunks that were only in Redis are misses (computed and
// fused), never fuser errors; the breaker stays closed with no failure
// counted; Redis is skipped while down instead of being asked by every
// request. Before, a chunk held only in Redis failed the request's fusion
// (*TierError, not a miss) and five of them opened the breaker for everyone.
func TestRedisDownIsAMiss(t *testing.T) {
	m := storiesModel(t)
	srv := redistest.Start(t)
	e, err := engine.NewFromModel(engine.Config{}, m)
	if err != nil {
		t.Fatal(err)
	}
	up := httptest.NewServer(e.Handler())
	t.Cleanup(func() { up.Close(); e.Close() })
	ad, err := native.Open(adapters.Config{URL: up.URL, Transport: adapters.TransportPush})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ad.Close() })
	cfg := proxy.DefaultConfig()
	cfg.Upstream = up.URL
	cfg.Fusion.MaxMissingFraction = 1 // compute what misses: fusion goes on during the outage
	redisURL := "redis://" + srv.Addr + "/0?timeout=500ms"
	dir := t.TempDir()
	ctx := context.Background()

	const (
		storyC = "Sam found a small cat. The cat was hungry so Sam gave it some milk."
		storyD = "Mia made a cake. She shared the cake with her mom and her dad."
	)
	chat := func(a, b, q string) string {
		return `{"messages":[{"role":"system","content":"You tell stories."},{"role":"user","content":[{"type":"text","text":` +
			jsonString(a) + `},{"type":"text","text":` + jsonString(b) + `},{"type":"text","text":` + jsonString(q) + `}]}],"max_tokens":2}`
	}
	onDisk := chat("Document: A\n"+storyA, "Document: B\n"+storyB, "Once upon a time")
	inRedis := chat("Document: C\n"+storyC, "Document: D\n"+storyD, "Once upon a time")

	fuseOnce := func(spec, body string) {
		t.Helper()
		st, err := kvstore.Open(spec)
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		f, err := New(Config{Proxy: cfg, Model: m, Store: st, Engine: ad})
		if err != nil {
			t.Fatal(err)
		}
		r, err := proxy.ParseRequest(proxy.RouteChat, []byte(body))
		if err != nil {
			t.Fatal(err)
		}
		r.Tenant, r.TenantSource = proxy.TenantOf("", "")
		p, err := f.Fuse(ctx, r)
		if err != nil {
			t.Fatal(err)
		}
		p.Lease.Release()
	}
	// A and B on disk (and in Redis); C and D only in Redis.
	fuseOnce("disk://"+dir+"?max=256MiB,"+redisURL, onDisk)
	fuseOnce(redisURL, inRedis)

	st, err := kvstore.Open("mem://?max=64MiB,disk://" + dir + "?max=256MiB," + redisURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	ts := st.(*kvstore.Tiered)
	ts.SetBackoff(time.Minute, time.Minute) // not retried within the test
	f, err := New(Config{Proxy: cfg, Model: m, Store: st, Engine: ad})
	if err != nil {
		t.Fatal(err)
	}
	p, base := proxytest.Start(t, cfg, proxy.WithFuser(f))

	srv.Kill()
	const rounds = 8 // more than breaker.consecutive_failures
	for i := range rounds {
		for _, body := range []string{inRedis, onDisk} {
			if code, resp := post(t, base+"/v1/chat/completions", body); code != 200 {
				t.Fatalf("round %d: %d %s", i, code, resp)
			}
		}
	}
	if s, c := p.BreakerState(), p.BreakerCounts(); s != gobreaker.StateClosed || c.TotalFailures != 0 || c.TotalSuccesses != 2*rounds {
		t.Errorf("breaker %v, %d failures, %d successes with Redis down; want closed, 0, %d", s, c.TotalFailures, c.TotalSuccesses, 2*rounds)
	}
	stats := st.Stats()
	mem, disk, rd := stats[0], stats[1], stats[2]
	if disk.Hits < 2 {
		t.Errorf("disk tier %d hits, want the 2 chunks it holds (and their fused KV) to hit", disk.Hits)
	}
	// Only the calls already in flight when it failed (one request's
	// concurrent chunk loads) reach the dead server; the rest are skipped.
	if !rd.Down || rd.Downs != 1 || rd.Errors > 4 || rd.Skips < 2*rounds {
		t.Errorf("redis tier: down %v, went down %d times, %d errors, %d skips; want down once, at most 4 calls failed, the other requests skipped it",
			rd.Down, rd.Downs, rd.Errors, rd.Skips)
	}
	t.Logf("with redis down: mem %d hits, disk %d hits, redis %d errors %d skips; breaker %d successes",
		mem.Hits, disk.Hits, rd.Errors, rd.Skips, p.BreakerCounts().TotalSuccesses)

	// The chunks that were only in Redis were computed and are held by the
	// faster tiers now: they hit.
	r, err := proxy.ParseRequest(proxy.RouteChat, []byte(inRedis))
	if err != nil {
		t.Fatal(err)
	}
	r.Tenant, r.TenantSource = proxy.TenantOf("", "")
	plan, err := f.Fuse(ctx, r)
	if err != nil {
		t.Fatalf("Fuse with redis down: %v", err)
	}
	defer plan.Lease.Release()
	if plan.Stats.Hits != 2 {
		t.Errorf("chunks computed during the outage: %+v, want 2 hits from mem/disk", plan.Stats)
	}
}

// TestRedisAloneDownIsAMiss: a store of one Redis URL (the compose
// default) is put behind a tiered store by the fuser, so that Redis killed
// is a miss too: the chunks are computed, Fuse does not fail.
func TestRedisAloneDownIsAMiss(t *testing.T) {
	fe := newFuserEnv(t, nil)
	srv := redistest.Start(t)
	st, err := kvstore.Open("redis://" + srv.Addr + "/0?timeout=500ms")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	cfg := proxy.DefaultConfig()
	cfg.Upstream = fe.engine
	cfg.Fusion.MaxMissingFraction = 1
	f, err := New(Config{Proxy: cfg, Model: fe.f.m, Store: st, Engine: fe.f.eng.Engine})
	if err != nil {
		t.Fatal(err)
	}
	srv.Kill()
	body := `{"messages":[{"role":"system","content":"You tell stories."},{"role":"user","content":[{"type":"text","text":` +
		jsonString("Document: A\n"+storyA) + `},{"type":"text","text":"Once upon a time"}]}],"max_tokens":2}`
	for i := range 3 {
		p, err := f.Fuse(context.Background(), fe.request(t, proxy.RouteChat, body, "t"))
		if err != nil {
			t.Fatalf("Fuse %d with the only store down: %v, want the chunk computed", i, err)
		}
		p.Lease.Release()
	}
}
