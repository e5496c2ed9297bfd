package proxy

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fusionrag/fusionrag/internal/redisproc"
	"github.com/fusionrag/fusionrag/internal/redistest"
)

// TestE2EClusterFailover: two `fusionrag serve` processes in front of one
// engine share a 3-master, 3-replica Redis Cluster as their chunk store.
// A master is killed (SIGKILL) a quarter of the way through 1,000 RAG
// requests sent to both sidecars: no request fails (every one gets its
// answer), and once the cluster is whole again the requests are fused
// from the store again. While the replica is not yet promoted, a chunk
// whose fused KV sat on the lost master is served from its raw KV when
// that sits on another shard (a hit), or computed (a miss): how many
// misses depends on where the keys hash, so they are logged here; the
// store-level TestClusterFailover (package kvstore) asserts the misses of
// the lost slots.
func TestE2EClusterFailover(t *testing.T) {
	if testing.Short() {
		t.Skip("SKIPPING: -short (two sidecars, an engine and a Redis Cluster)")
	}
	c := redistest.StartCluster(t, redistest.NodeTimeout(time.Second))
	s := startStack(t)
	store := "--store=" + c.URL() + "?timeout=500ms"
	sidecars := []string{s.startSidecar("sidecar-a", s.engineURL, store), s.startSidecar("sidecar-b", s.engineURL, store)}
	const tenant, requests = "cluster", 1000
	s.ingest(sidecars[0], tenant)
	ctx := context.Background()
	// Every chunk once through each sidecar (their known-chunk indexes),
	// then every master's writes on its replica before the kill.
	for _, base := range sidecars {
		client := sdkClient(base, tenant)
		for i := range e2eDocs {
			if _, err := client.Chat.Completions.New(ctx, chatParams(i, 3, 2, e2eQuestions[i%len(e2eQuestions)])); err != nil {
				t.Fatal(err)
			}
		}
	}
	masters, err := c.Masters()
	if err != nil || len(masters) == 0 {
		t.Fatalf("masters %v, %v", masters, err)
	}
	for _, i := range masters {
		if out, err := redisproc.Command(c.Nodes[i].Addr, "WAIT 1 5000", 6*time.Second); err != nil || out == "0" {
			t.Fatalf("WAIT on node %d: %q, %v", i, out, err)
		}
	}
	before := [2]map[string]float64{s.metrics(sidecars[0]), s.metrics(sidecars[1])}

	var next, failed atomic.Int64
	var firstErr atomic.Value
	var tailFused atomic.Int64
	fo := c.KillWhen(masters[0], func() bool { return next.Load() >= requests/4 })
	recovered := fo.Recovered
	var wg sync.WaitGroup
	t0 := time.Now()
	for w := range 4 {
		base := sidecars[w%2]
		client := sdkClient(base, tenant)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				n := next.Add(1)
				if n > requests {
					return
				}
				tail := n > requests-100
				if tail {
					<-recovered
				}
				i := int(n) % e2eDocs
				got, err := client.Chat.Completions.New(ctx, chatParams(i, 3, 2, e2eQuestions[i%len(e2eQuestions)]))
				if err == nil && (len(got.Choices) == 0 || got.Choices[0].Message.Content == "") {
					err = fmt.Errorf("no answer: %+v", got)
				}
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, fmt.Sprintf("request %d to %s: %v", n, base, err))
					continue
				}
				if tail && got.Usage.PromptTokensDetails.CachedTokens == got.Usage.PromptTokens-1 {
					tailFused.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	<-recovered
	var misses, fused, fallbacks float64
	for k, base := range sidecars {
		m := s.metrics(base)
		misses += m[`fusionrag_proxy_chunks_total{result="miss"}`] - before[k][`fusionrag_proxy_chunks_total{result="miss"}`]
		fused += m[`fusionrag_proxy_requests_total{path="fusion",route="chat"}`] - before[k][`fusionrag_proxy_requests_total{path="fusion",route="chat"}`]
		fallbacks += sumPrefix(m, "fusionrag_proxy_fallbacks_total") - sumPrefix(before[k], "fusionrag_proxy_fallbacks_total")
	}
	t.Logf("%d requests to 2 sidecars in %v: %d failed; %v fused, %v chunk misses, %v fallbacks; failover %v; fused in the last 100: %d",
		requests, time.Since(t0).Round(time.Millisecond), failed.Load(), fused, misses, fallbacks, fo.Took.Round(time.Millisecond), tailFused.Load())
	if failed.Load() != 0 {
		t.Fatalf("%d requests failed; first: %v", failed.Load(), firstErr.Load())
	}
	if tailFused.Load() < 90 {
		t.Errorf("after the failover only %d of the last 100 requests were fused from the store", tailFused.Load())
	}
}
