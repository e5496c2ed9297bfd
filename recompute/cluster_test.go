package recompute

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fusionrag/fusionrag/chunkkv"
	"github.com/fusionrag/fusionrag/internal/redisproc"
	"github.com/fusionrag/fusionrag/internal/redistest"
	"github.com/fusionrag/fusionrag/kvstore"
)

// TestClusterFailoverRecompute: two sidecars (two Reprocessors, each with
// its own client of one Redis Cluster) run 1,000 fusion-path requests over
// 24 warm prompts; a master is SIGKILLed after a quarter of them. No request
// fails: chunks on the lost slots are misses, computed on the fly, until the
// replica is promoted; the last 200 requests, run once the cluster serves
// every slot again, hit every chunk (the replica had them).
func TestClusterFailoverRecompute(t *testing.T) {
	c := redistest.StartCluster(t, redistest.NodeTimeout(time.Second))
	m := tinySynthetic(t)
	const prompts, requests = 24, 1000
	reqs := make([]Request, prompts)
	for i := range reqs {
		reqs[i] = randomRequest(m, uint64(100+i), []int{12, 9, 15}, 4)
		reqs[i].Strategy = "reuse"
	}
	var reps [2]*Reprocessor
	for i := range reps {
		st, err := kvstore.Open(c.URL() + "?timeout=500ms")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		reps[i] = newRep(t, m, &chunkkv.Store{Store: st})
	}
	ctx := context.Background()
	for _, r := range reqs { // warm the store
		if _, err := reps[0].Run(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	// Every master's writes reach its replica before the kill.
	for _, i := range mustMasters(t, c) {
		if out, err := redisproc.Command(c.Nodes[i].Addr, "WAIT 1 5000", 6*time.Second); err != nil || out == "0" {
			t.Fatalf("WAIT on %s: %q, %v", c.Nodes[i].Addr, out, err)
		}
	}
	victim := mustMasters(t, c)[0]

	var next, failed, outageMisses, tailMisses atomic.Int64
	var firstErr atomic.Value
	fo := c.KillWhen(victim, func() bool { return next.Load() >= requests/4 })
	killed, recovered := fo.Killed, fo.Recovered
	var wg sync.WaitGroup
	t0 := time.Now()
	for s := range reps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				n := next.Add(1)
				if n > requests {
					return
				}
				tail := n > requests-200
				if tail {
					<-recovered
				} else if n > requests/4 {
					time.Sleep(4 * time.Millisecond)
				}
				res, err := reps[s].Run(ctx, reqs[n%prompts])
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, fmt.Sprintf("request %d: %v", n, err))
					continue
				}
				if tail {
					tailMisses.Add(int64(res.Record.Misses))
				} else {
					select {
					case <-killed:
						outageMisses.Add(int64(res.Record.Misses))
					default:
					}
				}
			}
		}()
	}
	wg.Wait()
	<-recovered
	t.Logf("%d requests from 2 sidecars in %v: %d failed, %d chunks computed after the kill (lost slots), %d in the last 200; failover %v",
		requests, time.Since(t0).Round(time.Millisecond), failed.Load(), outageMisses.Load(), tailMisses.Load(), fo.Took.Round(time.Millisecond))
	if failed.Load() != 0 {
		t.Fatalf("%d failed requests, first: %v", failed.Load(), firstErr.Load())
	}
	if outageMisses.Load() == 0 {
		t.Error("no chunk computed during the outage: the kill was not observed")
	}
	if tailMisses.Load() != 0 {
		t.Errorf("%d chunks computed after recovery, want 0 (the replica holds them)", tailMisses.Load())
	}
}

func mustMasters(t *testing.T, c *redistest.Cluster) []int {
	t.Helper()
	m, err := c.Masters()
	if err != nil || len(m) == 0 {
		t.Fatalf("masters %v, %v", m, err)
	}
	return m
}
