package kvstore

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/fusionrag/fusionrag/internal/redistest"
)

// TestTieredRedisStalled is issue 18's "a store tier that is down is a
// miss" for a Redis that hangs instead of dying: the server is frozen with
// SIGSTOP (connections are accepted by the kernel or stay open, nothing
// answers) under concurrent Get and Put through mem+disk+redis. Every call
// returns, within the Redis tier's per-call deadline (plus scheduling), with
// a hit or a miss for Get (never another error); Redis is marked down and
// skipped; mem and disk keep serving their hits; after SIGCONT a probe finds
// Redis and it serves again. The bound is set by the URL: timeout= is
// go-redis's dial, read and write timeout, deadline= bounds one call of the
// tier as a whole (pool wait, dial, every round trip); without either,
// go-redis's defaults (5 s) and the deadline's (2 x read timeout + 1 s).
// The only timing assertion is a hang guard; the figures are logged.
func TestTieredRedisStalled(t *testing.T) {
	for _, tc := range []struct {
		name, query string
		deadline    time.Duration // the tier's per-call deadline for query
	}{
		{"timeout=300ms", "timeout=300ms", 1600 * time.Millisecond},
		{"deadline=500ms", "timeout=2s&deadline=500ms", 500 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) { redisStalled(t, tc.query, tc.deadline) })
	}
}

func redisStalled(t *testing.T, query string, deadline time.Duration) {
	const hangGuard = 15 * time.Second
	ctx := ctxT(t)
	srv := redistest.Start(t)
	s, err := Open("mem://?max=256KiB,disk://" + t.TempDir() + "?max=8MiB,redis://" + srv.Addr + "/0?" + query)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ts := s.(*Tiered)
	ts.SetBackoff(200*time.Millisecond, time.Second)
	r := ts.Tiers()[2].(*Redis)
	if got := r.cfg.CallTimeout; got != deadline {
		t.Fatalf("per-call deadline %v, want %v", got, deadline)
	}
	set := newSharedSet(t)
	// Chunks 0-7 in every tier (mem holds a few, disk all); 8-15 in Redis only.
	for i := range 8 {
		if err := s.Put(ctx, set.blobs[i][0]); err != nil {
			t.Fatal(err)
		}
	}
	for i := 8; i < 16; i++ {
		if err := r.Put(ctx, set.blobs[i][0]); err != nil {
			t.Fatal(err)
		}
	}
	redisStats := func() TierStats { return ts.Stats()[2] }

	srv.Stop()
	stopped := time.Now()
	var mu sync.Mutex
	var durs []time.Duration
	var hits, misses, redisHits, putErrs, fails int
	var slowest string
	record := func(op string, d time.Duration) {
		mu.Lock()
		defer mu.Unlock()
		durs = append(durs, d)
		if d > hangGuard {
			t.Errorf("%s took %v with Redis stalled (hang guard %v)", op, d, hangGuard)
		}
		if len(durs) == 1 || d > slices.Max(durs[:len(durs)-1]) {
			slowest = op
		}
	}
	var wg sync.WaitGroup
	runFor := 3 * deadline
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; time.Since(stopped) < runFor; n++ {
				i := (w + n) % 16
				b := set.blobs[i][0]
				t0 := time.Now()
				got, err := s.Get(ctx, b.Key, b.Check)
				record(fmt.Sprintf("get %d", i), time.Since(t0))
				mu.Lock()
				switch {
				case err == nil && set.check(i, got):
					hits++
					if i >= 8 {
						redisHits++ // promoted before the stall
					}
				case errors.Is(err, ErrNotFound):
					misses++
					if i < 8 {
						t.Errorf("chunk %d, held by disk, missed with Redis stalled: %v", i, err)
					}
				default:
					fails++
					t.Errorf("get %d with Redis stalled: %v (want a hit or a miss)", i, err)
				}
				mu.Unlock()
				if n%4 == 0 { // a write, as the sidecar stores a computed chunk
					nb := set.blobs[16+(w*7+n)%32][0]
					t0 := time.Now()
					err := s.Put(ctx, nb)
					record("put", time.Since(t0))
					if err != nil {
						mu.Lock()
						putErrs++
						mu.Unlock()
					}
					if ok, _ := ts.Tiers()[1].Has(ctx, nb.Key); !ok {
						t.Errorf("put with Redis stalled did not reach disk")
					}
				}
			}
		}()
	}
	wg.Wait()
	st := redisStats()
	slices.Sort(durs)
	p := func(q float64) time.Duration { return durs[min(len(durs)-1, int(q*float64(len(durs))))] }
	t.Logf("%s: %d calls in %v stalled: p50 %v, p99 %v, max %v (%s); get hits %d (%d from Redis-only chunks, promoted earlier), misses %d; puts that reported Redis %d",
		query, len(durs), runFor, p(0.5), p(0.99), durs[len(durs)-1], slowest, hits, redisHits, misses, putErrs)
	t.Logf("redis tier while stalled: down=%v downs=%d skips=%d errors=%d", st.Down, st.Downs, st.Skips, st.Errors)
	if !st.Down || st.Downs < 1 || st.Skips == 0 {
		t.Errorf("redis stalled: down=%v downs=%d skips=%d, want down and skipped", st.Down, st.Downs, st.Skips)
	}
	if fails != 0 || hits == 0 {
		t.Errorf("%d failed gets, %d hits", fails, hits)
	}

	srv.Cont()
	resumed := time.Now()
	probe := set.blobs[8][0]
	for {
		if time.Since(resumed) > hangGuard {
			t.Fatalf("Redis still not serving %v after SIGCONT: %+v", hangGuard, redisStats())
		}
		// Chunk 8 is in Redis only (unless promoted): a Redis hit shows it back.
		ts.Tiers()[0].Delete(ctx, probe.Key)
		ts.Tiers()[1].Delete(ctx, probe.Key)
		got, err := s.Get(ctx, probe.Key, probe.Check)
		if err == nil && set.check(8, got) && !redisStats().Down {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("redis serving again %v after SIGCONT: %+v", time.Since(resumed).Round(time.Millisecond), redisStats())
}
