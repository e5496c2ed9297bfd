package kvstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fusionrag/fusionrag/internal/redisproc"
	"github.com/fusionrag/fusionrag/internal/redistest"
	"github.com/redis/go-redis/v9"
)

func TestClusterURLs(t *testing.T) {
	good := []struct {
		spec  string
		tiers []string
		addrs string // the cluster client's seeds
	}{
		{"redis-cluster://127.0.0.1:7000/", []string{"redis-cluster"}, "127.0.0.1:7000"},
		{"redis-cluster://127.0.0.1:7000,127.0.0.1:7001,127.0.0.1:7002/?ttl=1h&part=1MiB&spread=1&max_redirects=5",
			[]string{"redis-cluster"}, "127.0.0.1:7000,127.0.0.1:7001,127.0.0.1:7002"},
		{"redis-cluster://a:1?addr=b:2", []string{"redis-cluster"}, "a:1,b:2"},
		{"mem://?max=1MiB, redis-cluster://a:1, b:2/?ttl=0", []string{"mem", "redis-cluster"}, "a:1,b:2"},
		{"redis-cluster://a:1,b:2,redis://c:3/0", []string{"redis-cluster", "redis"}, "a:1,b:2"},
	}
	for _, tc := range good {
		t.Run(tc.spec, func(t *testing.T) {
			s, err := Open(tc.spec)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			st := s.Stats()
			var tiers []string
			for _, x := range st {
				tiers = append(tiers, x.Tier)
			}
			if strings.Join(tiers, ",") != strings.Join(tc.tiers, ",") {
				t.Fatalf("tiers %v, want %v", tiers, tc.tiers)
			}
			var r *Redis
			if tt, ok := s.(*Tiered); ok {
				r = tt.Tiers()[map[bool]int{true: 1, false: 0}[tc.tiers[0] == "mem"]].(*Redis)
			} else {
				r = s.(*Redis)
			}
			if got := strings.Join(r.cfg.ClusterOptions.Addrs, ","); got != tc.addrs {
				t.Errorf("seeds %q, want %q", got, tc.addrs)
			}
			if !strings.Contains(tc.spec, "part=") && (r.cfg.PartSize != 2<<20 || r.cfg.SingleSlot) {
				t.Errorf("defaults: part %d single slot %v, want 2 MiB spread", r.cfg.PartSize, r.cfg.SingleSlot)
			}
		})
	}
	bad := []struct{ spec, says string }{
		{"redis-cluster://a:1/0", "no databases"},
		{"redis-cluster://a:1/?spread=maybe", "not a boolean"},
		{"redis-cluster://a:1/?part=10", "below 1 KiB"},
		{"redis-cluster://a:1/?bogus=1", "bogus"},
		{"redis://a:1/0?spread=1", "spread"},
	}
	for _, tc := range bad {
		s, err := Open(tc.spec)
		if err == nil {
			s.Close()
			t.Errorf("%s: no error", tc.spec)
			continue
		}
		if !errors.Is(err, ErrBadURL) || !strings.Contains(err.Error(), tc.says) {
			t.Errorf("%s: %v, want ErrBadURL saying %q", tc.spec, err, tc.says)
		}
	}
}

func openCluster(t testing.TB, c *redistest.Cluster, query string) *Redis {
	t.Helper()
	s, err := Open(c.URL() + "?" + query)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s.(*Redis)
}

func encoded(t testing.TB, b *Blob) []byte {
	t.Helper()
	raw, err := b.Encode()
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// TestCluster runs round trips across slots (small blobs, blobs in parts in
// their slot and spread over shards) and the lease on one real 3-master,
// 3-replica cluster.
func TestCluster(t *testing.T) {
	c := redistest.StartCluster(t)
	ctx := ctxT(t)
	for _, spread := range []string{"0", "1"} {
		t.Run("roundtrip-spread="+spread, func(t *testing.T) {
			r := openCluster(t, c, "part=4KiB&timeout=2s&spread="+spread)
			var blobs []*Blob
			for i := range 24 {
				// 1..12 KiB payloads: a third fit one key, the rest are
				// up to 4 parts of 4 KiB.
				blobs = append(blobs, testBlob(t, Float16, shape{layers: 2, kvHeads: 2, headDim: 16, tokens: 8 * (1 + i%12)}, 1000+i))
			}
			for _, b := range blobs {
				if err := r.Put(ctx, b); err != nil {
					t.Fatal(err)
				}
			}
			for _, b := range blobs {
				got, err := r.Get(ctx, b.Key, b.Check)
				if err != nil {
					t.Fatalf("%s: %v", b.Key, err)
				}
				if !bytes.Equal(encoded(t, got), encoded(t, b)) {
					t.Fatalf("%s: blob differs after the round trip", b.Key)
				}
				if ok, err := r.Has(ctx, b.Key); !ok || err != nil {
					t.Fatalf("Has %s: %v, %v", b.Key, ok, err)
				}
			}
			// The keys are spread over every master.
			m, err := c.Masters()
			if err != nil || len(m) != 3 {
				t.Fatalf("masters %v, %v", m, err)
			}
			for _, i := range m {
				n, err := redisproc.Command(c.Nodes[i].Addr, "DBSIZE", time.Second)
				if err != nil || n == "0" {
					t.Errorf("master %s holds %s keys (%v), want some", c.Nodes[i].Addr, n, err)
				}
			}
			// Where the parts of a 4-part blob live: spread, on more than
			// one master; in one slot, on the blob's master.
			big := blobs[11]
			owners := map[int]bool{}
			for i := range 4 {
				m, err := c.MasterOf(r.partKey(big.Key, i))
				if err != nil {
					t.Fatal(err)
				}
				owners[m] = true
			}
			if home, _ := c.MasterOf(r.key(big.Key)); spread == "0" && (len(owners) != 1 || !owners[home]) {
				t.Errorf("spread=0: parts on masters %v, want only the blob's (%d)", owners, home)
			} else if spread == "1" && len(owners) < 2 {
				t.Errorf("spread=1: parts on masters %v, want several", owners)
			}
			// A corrupt part is a miss, dropped.
			if err := r.c.Set(ctx, r.partKey(big.Key, 1), bytes.Repeat([]byte{7}, 4096), 0).Err(); err != nil {
				t.Fatal(err)
			}
			if _, err := r.Get(ctx, big.Key, big.Check); !errors.Is(err, ErrNotFound) {
				t.Fatalf("corrupt part: %v, want a miss", err)
			}
			if ok, _ := r.Has(ctx, big.Key); ok {
				t.Error("corrupt blob not dropped")
			}
			for _, b := range blobs {
				if err := r.Delete(ctx, b.Key); err != nil {
					t.Fatal(err)
				}
				if _, err := r.Get(ctx, b.Key, b.Check); !errors.Is(err, ErrNotFound) {
					t.Fatalf("after Delete: %v", err)
				}
			}
			for _, i := range m {
				if n, _ := redisproc.Command(c.Nodes[i].Addr, "DBSIZE", time.Second); n != "0" {
					t.Errorf("master %s still holds %s keys after Delete", c.Nodes[i].Addr, n)
				}
			}
			st := r.Stats()[0]
			if st.Tier != "redis-cluster" || st.Errors != 0 || st.Corruptions != 1 {
				t.Errorf("stats %+v", st)
			}
		})
	}

	t.Run("lease", func(t *testing.T) {
		const n = 8
		stores := make([]*Redis, n)
		for i := range stores {
			stores[i] = openCluster(t, c, "timeout=2s")
		}
		key := testBlob(t, Float16, shape{layers: 1, kvHeads: 1, headDim: 8, tokens: 4}, 7).Key
		var won atomic.Int32
		var rels [n]func()
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i, s := range stores {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				rel, ok, err := s.TryLease(ctx, key, 5*time.Second)
				if err != nil {
					t.Error(err)
				}
				if ok {
					won.Add(1)
				}
				rels[i] = rel
			}()
		}
		close(start)
		wg.Wait()
		if won.Load() != 1 {
			t.Fatalf("%d of %d sidecars got the lease, want 1", won.Load(), n)
		}
		for _, rel := range rels {
			rel() // the losers' releases are no-ops, the winner's frees it
		}
		rel, ok, err := stores[1].TryLease(ctx, key, 50*time.Millisecond)
		if !ok || err != nil {
			t.Fatalf("after release: %v, %v; want the lease", ok, err)
		}
		// It expires; someone else takes it; the first holder's late
		// release must not free the new holder's lease.
		time.Sleep(120 * time.Millisecond)
		rel2, ok, err := stores[2].TryLease(ctx, key, 5*time.Second)
		if !ok || err != nil {
			t.Fatalf("after expiry: %v, %v; want the lease", ok, err)
		}
		rel()
		if _, ok, _ := stores[3].TryLease(ctx, key, time.Second); ok {
			t.Fatal("an expired holder's release freed the new holder's lease")
		}
		rel2()
		if _, ok, _ := stores[3].TryLease(ctx, key, time.Second); !ok {
			t.Fatal("lease not free after its holder released it")
		}
		if _, _, err := stores[0].TryLease(ctx, key, 0); err == nil {
			t.Error("ttl 0: no error")
		}
	})
}

// TestClusterFailover kills the master holding some of the keys while two
// sidecars (two stores over the same cluster URL) run 1,000 requests: get
// the chunk, on a miss compute (here: the known blob) and put it back. No
// request may fail; reads of the lost slots are misses
// (*UnavailableError) until the replica is promoted; the last 200
// requests, after the cluster reports every slot served again, see no
// unavailable shard, and keys of the lost slots that were written before
// the kill are hits again (their replica had them).
func TestClusterFailover(t *testing.T) {
	c := redistest.StartCluster(t, redistest.NodeTimeout(time.Second))
	ctx := ctxT(t)
	const keys, requests, sidecars = 48, 1000, 2
	blobs := make([]*Blob, keys)
	for i := range blobs {
		// 2..8 KiB: the larger ones are 2 parts of 4 KiB.
		blobs[i] = testBlob(t, Float16, shape{layers: 2, kvHeads: 2, headDim: 8, tokens: 16 * (1 + i%4)}, 2000+i)
	}
	stores := []*Redis{openCluster(t, c, "part=4KiB&timeout=500ms"), openCluster(t, c, "part=4KiB&timeout=500ms")}
	for _, b := range blobs {
		if err := stores[0].Put(ctx, b); err != nil {
			t.Fatal(err)
		}
	}
	// The victim: the master of blob 0's slot; lost are the keys it serves.
	victim, err := c.MasterOf(stores[0].key(blobs[0].Key))
	if err != nil {
		t.Fatal(err)
	}
	lost := map[int]bool{}
	for i, b := range blobs {
		if m, err := c.MasterOf(stores[0].key(b.Key)); err == nil && m == victim {
			lost[i] = true
		}
	}
	// Let the replicas catch up with the puts before killing their master
	// (replication is asynchronous: a write acknowledged just before a
	// crash may be lost, which would be a miss, not an error): WAIT for one
	// replica on every master.
	err = stores[0].c.(*redis.ClusterClient).ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error {
		return m.Wait(ctx, 1, 5*time.Second).Err()
	})
	if err != nil {
		t.Fatal(err)
	}

	var (
		next                          atomic.Int64
		failed, misses, unavail, hits atomic.Int64
		lateUnavail, lostHitsAfter    atomic.Int64
		putFails, unavailNs           atomic.Int64
		firstFail                     atomic.Value
	)
	t0 := time.Now()
	// Kill after a quarter of the requests, then wait for the replica.
	fo := c.KillWhen(victim, func() bool { return next.Load() >= requests/4 })
	recovered := fo.Recovered
	var wg sync.WaitGroup
	for s := range sidecars {
		wg.Add(1)
		go func() {
			defer wg.Done()
			st := stores[s]
			for {
				n := next.Add(1)
				if n > requests {
					return
				}
				if n > requests-200 {
					<-recovered // the tail runs on the recovered cluster
				} else if n > requests/4 {
					time.Sleep(4 * time.Millisecond) // spread the middle over the failover
				}
				i := int(n) % keys
				b := blobs[i]
				g0 := time.Now()
				got, err := st.Get(ctx, b.Key, b.Check)
				var ue *UnavailableError
				switch {
				case err == nil:
					hits.Add(1)
					if !bytes.Equal(encoded(t, got), encoded(t, b)) {
						failed.Add(1)
						firstFail.CompareAndSwap(nil, fmt.Sprintf("request %d: wrong blob", n))
					}
					if n > requests-200 && lost[i] {
						lostHitsAfter.Add(1)
					}
				case errors.As(err, &ue):
					misses.Add(1)
					unavail.Add(1)
					unavailNs.Add(int64(time.Since(g0)))
					if n > requests-200 {
						lateUnavail.Add(1)
					}
					if st.Put(ctx, b) != nil { // the "computed" chunk
						putFails.Add(1)
					}
				case errors.Is(err, ErrNotFound):
					misses.Add(1)
					if st.Put(ctx, b) != nil {
						putFails.Add(1)
					}
				default:
					failed.Add(1)
					firstFail.CompareAndSwap(nil, fmt.Sprintf("request %d: %v", n, err))
				}
			}
		}()
	}
	wg.Wait()
	<-recovered
	t.Logf("%d requests from %d sidecars in %v: %d hits, %d misses (%d unavailable shard, %d after recovery), %d puts failed, %d failed; %d of %d keys on the killed master; failover took %v; lost-slot hits after recovery %d; an unavailable read took %v on average",
		requests, sidecars, time.Since(t0).Round(time.Millisecond), hits.Load(), misses.Load(), unavail.Load(), lateUnavail.Load(),
		putFails.Load(), failed.Load(), len(lost), keys, fo.Took.Round(time.Millisecond), lostHitsAfter.Load(),
		time.Duration(unavailNs.Load()/max(1, unavail.Load())).Round(time.Millisecond))
	if failed.Load() != 0 {
		t.Fatalf("%d failed requests, first: %v", failed.Load(), firstFail.Load())
	}
	if unavail.Load() == 0 {
		t.Error("no miss counted for the lost slots: the kill was not observed")
	}
	if plain := misses.Load() - unavail.Load(); plain != 0 {
		// Every key was stored and replicated before the kill, and a
		// failed put must not delete a stored blob's spread parts.
		t.Errorf("%d misses other than unavailable shards, want 0", plain)
	}
	if lateUnavail.Load() != 0 {
		t.Errorf("%d unavailable reads after the replica was promoted", lateUnavail.Load())
	}
	if lostHitsAfter.Load() == 0 {
		t.Error("no hit on the lost slots after recovery")
	}
	var statMisses int64
	for _, s := range stores {
		statMisses += s.Stats()[0].Misses
	}
	if statMisses != misses.Load() {
		t.Errorf("stats count %d misses, the requests saw %d", statMisses, misses.Load())
	}
}
