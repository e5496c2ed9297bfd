package rag

import (
	"context"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fusionrag/fusionrag/adapters"
	"github.com/fusionrag/fusionrag/adapters/native"
	"github.com/fusionrag/fusionrag/internal/proxytest"
	"github.com/fusionrag/fusionrag/model"
	"github.com/fusionrag/fusionrag/proxy"
)

func TestBudgetReserve(t *testing.T) {
	b := NewBudget(100)
	for _, tc := range []struct {
		n    int64
		ok   bool
		used int64
	}{{60, true, 60}, {41, false, 60}, {40, true, 100}, {0, true, 100}, {1, false, 100}, {101, false, 100}} {
		if got := b.Reserve(tc.n); got != tc.ok || b.InUse() != tc.used {
			t.Errorf("Reserve(%d): got %v, in use %d; want %v, %d", tc.n, got, b.InUse(), tc.ok, tc.used)
		}
	}
	b.Release(100)
	if b.InUse() != 0 {
		t.Errorf("in use %d after releasing everything", b.InUse())
	}
	if u := NewBudget(-1); !u.Reserve(1<<62) || !u.Reserve(1<<61) {
		t.Error("a negative limit refused a reservation")
	}
	if d := NewBudget(0).Limit(); d <= 0 {
		t.Errorf("default budget %d, want > 0", d)
	}
	t.Logf("default limits.fusion_memory on this machine: %d MiB", DefaultFusionMemory()>>20)
}

// TestFusionBytesEstimate states what the estimate counts: three times the
// KV of the whole prompt dominates; full recomputes every row, reuse only Q.
func TestFusionBytesEstimate(t *testing.T) {
	c := model.Config{Layers: 32, Dim: 4096, Heads: 32, KVHeads: 8, HeadDim: 128, HiddenDim: 14336, Vocab: 128256}
	kv := int64(4096) * 32 * 2 * 1024 * 4 // 4096 tokens of Llama-3-8B-shaped KV: 1 GiB
	got := fusionBytes(c, 4096, 16, 64, "fusionrag", 0.15)
	if got < 3*kv || got > 3*kv+kv/4 {
		t.Errorf("fusionrag estimate %d MiB, want 3 x %d MiB of KV plus a little", got>>20, kv>>20)
	}
	if f, r := fusionBytes(c, 4096, 16, 64, "full", 0.15), fusionBytes(c, 4096, 16, 64, "reuse", 0.15); !(r < got && got < f) {
		t.Errorf("estimates reuse %d < fusionrag %d < full %d do not hold", r, got, f)
	}
}

// gatedEngine holds every Publish until gate is closed, reporting each on
// entered, so that runs hold their reservations at once.
type gatedEngine struct {
	adapters.Engine
	entered chan struct{}
	gate    chan struct{}
}

func (g *gatedEngine) Publish(ctx context.Context, p adapters.Publication) (adapters.Lease, error) {
	g.entered <- struct{}{}
	<-g.gate
	return g.Engine.Publish(ctx, p)
}

// TestFusionBudget (issue 18 finding 2, memory amplification): a budget
// smaller than one request's estimate skips it with over_budget, and the
// proxy forwards it untouched (the answer is the engine's own);
// concurrent requests whose estimates sum past the budget: the ones that
// do not fit skip, none fails, and every reservation is released.
func TestFusionBudget(t *testing.T) {
	body := storiesBody(`"max_tokens":8,"temperature":0`)

	t.Run("smaller than one request", func(t *testing.T) {
		fe := newFuserEnv(t, func(c *proxy.Config) { c.Limits.FusionMemory = 1 })
		if l := fe.f.budget.Limit(); l != 1 {
			t.Fatalf("limits.fusion_memory 1 gave a budget of %d", l)
		}
		_, err := fe.f.Fuse(context.Background(), fe.request(t, proxy.RouteChat, body, "t"))
		if got := skipReason(err); got != proxy.SkipOverBudget {
			t.Fatalf("skip reason %q (err %v), want %q", got, err, proxy.SkipOverBudget)
		}
		cfg := upstreamConfig(fe.engine)
		cfg.Limits.FusionMemory = 1
		p, base := proxytest.Start(t, cfg, proxy.WithFuser(fe.f))
		code, got := post(t, base+"/v1/chat/completions", body)
		want, _, _ := fe.engineAnswer(t, "/v1/chat/completions", []byte(body))
		if w := jsonString(want); code != 200 || want == "" || !strings.Contains(got, w[1:len(w)-1]) {
			t.Errorf("through the proxy: %d %s, want the engine's answer %q", code, got, want)
		}
		skips := 0.0
		for k, v := range scrape(t, p) {
			if strings.Contains(k, "skips") && strings.Contains(k, `reason="over_budget"`) {
				skips += v
			}
		}
		if skips != 1 {
			t.Errorf("over_budget skips counted: %v, want 1", skips)
		}
		if fe.f.budget.InUse() != 0 {
			t.Errorf("budget in use %d after the request", fe.f.budget.InUse())
		}
	})

	t.Run("concurrent", func(t *testing.T) {
		fe := newFuserEnv(t, nil)
		req := fe.request(t, proxy.RouteChat, body, "t")
		sg, err := fe.f.segment(req)
		if err != nil {
			t.Fatal(err)
		}
		need := fusionBytes(fe.f.m.Config, len(sg.ids), sg.seg.Prefix.End, sg.seg.Question.Len(), fe.f.cfg.Fusion.Strategy, fe.f.cfg.Fusion.Ratio)
		ad, err := native.Open(adapters.Config{URL: fe.engine, Transport: adapters.TransportPush})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ad.Close() })
		const runs, fit = 5, 2
		g := &gatedEngine{Engine: ad, entered: make(chan struct{}, runs), gate: make(chan struct{})}
		cfg := fe.f.cfg
		cfg.Limits.FusionMemory = fit*need + need/2
		f, err := New(Config{Proxy: cfg, Model: fe.f.m, Store: fe.store, Engine: g})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		type result struct {
			p   *proxy.Plan
			err error
		}
		results := make(chan result, runs)
		var wg sync.WaitGroup
		for range runs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				p, err := f.Fuse(context.Background(), fe.request(t, proxy.RouteChat, body, "t"))
				results <- result{p, err}
			}()
		}
		var got []result
		for range runs - fit { // the runs that do not fit return while the others wait to publish
			select {
			case r := <-results:
				got = append(got, r)
			case <-time.After(60 * time.Second):
				t.Fatal("runs over the budget did not return in 60 s")
			}
		}
		if u := f.budget.InUse(); u != fit*need {
			t.Errorf("budget in use %d while %d runs publish, want %d", u, fit, fit*need)
		}
		close(g.gate)
		wg.Wait()
		close(results)
		for r := range results {
			got = append(got, r)
		}
		fused, skipped := 0, 0
		for _, r := range got {
			switch {
			case r.err == nil:
				fused++
				r.p.Lease.Release()
			case skipReason(r.err) == proxy.SkipOverBudget:
				skipped++
			default:
				t.Errorf("a run failed: %v", r.err)
			}
		}
		if fused != fit || skipped != runs-fit {
			t.Errorf("%d fused, %d skipped over budget; want %d and %d", fused, skipped, fit, runs-fit)
		}
		if u := f.budget.InUse(); u != 0 {
			t.Errorf("budget in use %d after every run returned, want 0", u)
		}
		t.Logf("estimate %d KiB per request, budget %d KiB: %d fused, %d skipped", need>>10, cfg.Limits.FusionMemory>>10, fused, skipped)
	})
}

// TestFusionBytesMeasured logs the estimate next to the bytes one Fuse
// allocates (runtime TotalAlloc, warm store, stories260K): a figure to
// read, not a threshold (allocations are not the peak, and the tiny model's
// fixed costs weigh more than a real one's).
func TestFusionBytesMeasured(t *testing.T) {
	fe := newFuserEnv(t, nil)
	body := storiesBody(`"max_tokens":2`)
	req := fe.request(t, proxy.RouteChat, body, "t")
	if p, err := fe.f.Fuse(context.Background(), req); err != nil {
		t.Fatal(err)
	} else {
		p.Lease.Release()
	}
	sg, err := fe.f.segment(req)
	if err != nil {
		t.Fatal(err)
	}
	need := fusionBytes(fe.f.m.Config, len(sg.ids), sg.seg.Prefix.End, sg.seg.Question.Len(), fe.f.cfg.Fusion.Strategy, fe.f.cfg.Fusion.Ratio)
	var a, b runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&a)
	p, err := fe.f.Fuse(context.Background(), req)
	runtime.ReadMemStats(&b)
	if err != nil {
		t.Fatal(err)
	}
	p.Lease.Release()
	alloc := int64(b.TotalAlloc - a.TotalAlloc)
	t.Logf("%d tokens: estimate %d KiB, one warm Fuse allocated %d KiB (estimate/allocated %.2f)", len(sg.ids), need>>10, alloc>>10, float64(need)/float64(alloc))
}
