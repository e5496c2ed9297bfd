package kvstore

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fusionrag/fusionrag/fingerprint"
	"github.com/fusionrag/fusionrag/internal/redistest"
)

func memDisk(t *testing.T) (*Tiered, *Mem, *Disk) {
	t.Helper()
	s, err := Open("mem://?max=8MiB, disk://" + t.TempDir() + "?max=8MiB")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	ts := s.(*Tiered)
	return ts, ts.Tiers()[0].(*Mem), ts.Tiers()[1].(*Disk)
}

func TestTieredPromotion(t *testing.T) {
	ctx := ctxT(t)
	ts, m, d := memDisk(t)
	b := testBlob(t, Float16, small, 1)
	if err := d.Put(ctx, b); err != nil { // only the slow tier has it
		t.Fatal(err)
	}
	got, err := ts.Get(ctx, b.Key, b.Check)
	if err != nil {
		t.Fatal(err)
	}
	checkBlob(t, got, b)
	if got.release != nil {
		t.Error("tiered Get returned a mapped blob")
	}
	if ok, _ := m.Has(ctx, b.Key); !ok {
		t.Fatal("not promoted into mem")
	}
	if _, err := ts.Get(ctx, b.Key, b.Check); err != nil {
		t.Fatal(err)
	}
	ms, ds := stat1(m), stat1(d)
	if ms.Hits != 1 || ms.Misses != 1 || ds.Hits != 1 || ds.Misses != 0 {
		t.Errorf("mem %+v\ndisk %+v", ms, ds)
	}
	if n := len(ts.Stats()); n != 2 {
		t.Errorf("%d stats entries", n)
	}
}

// TestTieredCorruptFallsThrough: a corrupt copy in a fast tier is dropped
// and the good copy below is served.
func TestTieredCorruptFallsThrough(t *testing.T) {
	ctx := ctxT(t)
	ts, m, _ := memDisk(t)
	b := testBlob(t, BFloat16, small, 2)
	if err := ts.Put(ctx, b); err != nil {
		t.Fatal(err)
	}
	memFlip(t, m, b.Key, HeaderSize+3)
	got, err := ts.Get(ctx, b.Key, b.Check)
	if err != nil {
		t.Fatal(err)
	}
	checkBlob(t, got, b)
	if st := stat1(m); st.Corruptions != 1 {
		t.Errorf("mem corruptions %d", st.Corruptions)
	}
	// Re-promoted: the next read is a clean mem hit.
	if _, err := m.Get(ctx, b.Key, b.Check); err != nil {
		t.Errorf("not re-promoted: %v", err)
	}
	// A collision is a miss, whatever the lower tiers hold.
	if _, err := ts.Get(ctx, b.Key, fingerprint.Check{}); !errors.Is(err, ErrCollision) {
		t.Errorf("collision: %v", err)
	}
	if err := ts.Delete(ctx, b.Key); err != nil {
		t.Fatal(err)
	}
	if ok, _ := ts.Has(ctx, b.Key); ok {
		t.Error("Has after Delete")
	}
}

// blockingStore wraps a real tier and holds every Get until released: it
// makes "concurrent misses" deterministic.
type blockingStore struct {
	Store
	gets    atomic.Int64
	release chan struct{}
}

func (s *blockingStore) Get(ctx context.Context, k fingerprint.Key, c fingerprint.Check) (*Blob, error) {
	s.gets.Add(1)
	<-s.release
	return s.Store.Get(ctx, k, c)
}

func TestTieredSingleflight(t *testing.T) {
	ctx := ctxT(t)
	m, _ := NewMem(MemConfig{MaxBytes: 1 << 20})
	d, err := OpenDisk(DiskConfig{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	slow := &blockingStore{Store: d, release: make(chan struct{})}
	ts := NewTiered(m, slow)
	defer ts.Close()
	b := testBlob(t, Float32, small, 3)
	d.Put(ctx, b)

	const callers = 16
	var wg sync.WaitGroup
	var joined sync.WaitGroup
	joined.Add(callers)
	errs := make(chan error, callers)
	for range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			joined.Done()
			got, err := ts.Get(ctx, b.Key, b.Check)
			if err == nil && got.Key != b.Key {
				err = errors.New("wrong blob")
			}
			errs <- err
		}()
	}
	joined.Wait()
	time.Sleep(300 * time.Millisecond) // let every caller reach the flight
	close(slow.release)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if n := slow.gets.Load(); n != 1 {
		t.Errorf("slow tier read %d times for %d concurrent misses, want 1", n, callers)
	}
	// A caller that gives up returns at once with its own context's error.
	slow2 := &blockingStore{Store: d, release: make(chan struct{})}
	ts2 := NewTiered(m, slow2)
	cctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	k2, c2 := wantOf(77, 3)
	if _, err := ts2.Get(cctx, k2, c2); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("cancelled caller: %v", err)
	}
	close(slow2.release)
}

func TestTieredPutTooLarge(t *testing.T) {
	ctx := ctxT(t)
	m, _ := NewMem(MemConfig{MaxBytes: 256}) // too small for any blob here
	d, _ := OpenDisk(DiskConfig{Dir: t.TempDir()})
	ts := NewTiered(m, d)
	defer ts.Close()
	b := testBlob(t, Float16, small, 4)
	if err := ts.Put(ctx, b); err != nil {
		t.Fatalf("a tier too small must be skipped: %v", err)
	}
	if ok, _ := d.Has(ctx, b.Key); !ok {
		t.Error("disk does not have it")
	}
	if err := NewTiered(m).Put(ctx, b); !errors.Is(err, ErrTooLarge) {
		t.Errorf("no tier fits: %v", err)
	}
}

// TestTieredRedisDown: with Redis gone, the memory tier still serves its
// hits and a full miss is a miss (it matches ErrNotFound, so that the caller
// computes the chunk) that still names Redis and its cause. Redis is then
// marked down and skipped without a call until its backoff passes; once it
// is back, a probe finds it and it is used again (issue 18 finding 4).
func TestTieredRedisDown(t *testing.T) {
	ctx := ctxT(t)
	srv := redistest.Start(t)
	s, err := Open("mem://?max=1MiB,redis://" + srv.Addr + "/0?timeout=500ms")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ts := s.(*Tiered)
	ts.SetBackoff(200*time.Millisecond, time.Second)
	b := testBlob(t, Float16, small, 5)
	if err := s.Put(ctx, b); err != nil {
		t.Fatal(err)
	}
	srv.Kill()
	if _, err := s.Get(ctx, b.Key, b.Check); err != nil {
		t.Errorf("mem hit failed with redis down: %v", err)
	}
	k, c := wantOf(6, 3)
	_, err = s.Get(ctx, k, c)
	var te *TierError
	var ue *UnavailableError
	if !errors.Is(err, ErrNotFound) || !errors.As(err, &ue) || !errors.As(err, &te) || te.Tier != "redis" {
		t.Fatalf("got %v, want a miss (*UnavailableError) naming a redis TierError", err)
	}
	t.Logf("surfaced as: %v", err)
	redisStats := func() TierStats { return ts.Stats()[1] }
	if st := redisStats(); !st.Down || st.Downs != 1 {
		t.Fatalf("redis stats after a failure: %+v, want down once", st)
	}
	errsBefore := redisStats().Errors
	for i := range 20 {
		k, c := wantOf(100+i, 3)
		if _, err := s.Get(ctx, k, c); !errors.Is(err, ErrNotFound) || !errors.Is(err, ErrTierDown) {
			t.Fatalf("get %d with redis down: %v, want a miss wrapping ErrTierDown", i, err)
		}
	}
	err = s.Put(ctx, testBlob(t, Float16, small, 7))
	if !errors.Is(err, ErrTierDown) || !strings.Contains(err.Error(), "redis") {
		t.Errorf("put with redis down: %v, want ErrTierDown naming redis", err)
	}
	if st := redisStats(); st.Errors != errsBefore || st.Skips < 21 {
		t.Errorf("redis down: %d new errors and %d skips, want 0 calls made (all 21 skipped)", st.Errors-errsBefore, st.Skips)
	}
	// Back: after the backoff one probe finds it and it is used again.
	srv.Restart()
	time.Sleep(1100 * time.Millisecond)
	b8 := testBlob(t, Float16, small, 8)
	deadline := time.Now().Add(5 * time.Second)
	for s.Put(ctx, b8) != nil {
		if time.Now().After(deadline) {
			t.Fatalf("redis still skipped after its restart: %+v", redisStats())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if st := redisStats(); st.Down {
		t.Errorf("redis still down after a put succeeded: %+v", st)
	}
}

// TestTieredHealthBackoff: a failed tier is skipped for the backoff, one
// caller probes it when it passes (others keep skipping), a failed probe
// doubles the backoff up to the maximum and a good one clears it.
func TestTieredHealthBackoff(t *testing.T) {
	const lo, hi = 30 * time.Millisecond, 50 * time.Millisecond
	var h health
	if ok, _ := h.allow(); !ok {
		t.Fatal("healthy tier not allowed")
	}
	h.fail(false, lo, hi)
	// Calls in flight when it went down fail too: no doubling.
	for range 5 {
		h.fail(false, lo, hi)
	}
	if ok, _ := h.allow(); ok || !h.down() {
		t.Fatal("failed tier allowed within its backoff")
	}
	time.Sleep(40 * time.Millisecond)
	ok, probe := h.allow()
	if !ok || !probe {
		t.Fatal("no probe after the backoff (in-flight failures doubled it?)")
	}
	if ok, _ := h.allow(); ok {
		t.Fatal("a second probe while one is in flight")
	}
	h.fail(true, lo, hi)
	h.mu.Lock()
	got := h.backoff
	h.mu.Unlock()
	if got != hi {
		t.Errorf("backoff after a failed probe %v, want %v (doubled, capped)", got, hi)
	}
	time.Sleep(60 * time.Millisecond)
	if ok, _ := h.allow(); !ok {
		t.Fatal("no probe after the second backoff")
	}
	h.ok()
	ok1, _ := h.allow()
	ok2, _ := h.allow()
	if h.down() || !ok1 || !ok2 {
		t.Error("tier not healthy after a good probe")
	}
	if h.downs.Load() != 1 || h.skips.Load() != 2 {
		t.Errorf("downs %d skips %d, want 1 and 2", h.downs.Load(), h.skips.Load())
	}
}

// failingTier fails every call; sharded says whether its failures are one
// shard's (a Redis Cluster's).
type failingTier struct {
	Store
	shard bool
}

var errTierBroken = errors.New("tier broken")

func (f *failingTier) Get(context.Context, fingerprint.Key, fingerprint.Check) (*Blob, error) {
	return nil, errTierBroken
}
func (f *failingTier) sharded() bool { return f.shard }

// TestTieredShardedNotDown: a failing tier is marked down, unless its
// failures are one shard's (a cluster): then the live shards stay in use.
func TestTieredShardedNotDown(t *testing.T) {
	ctx := ctxT(t)
	for _, shard := range []bool{false, true} {
		m, _ := NewMem(MemConfig{MaxBytes: 1 << 20})
		ts := NewTiered(m, &failingTier{Store: m, shard: shard})
		k, c := wantOf(9, 3)
		if _, err := ts.Get(ctx, k, c); !errors.Is(err, ErrNotFound) || !errors.Is(err, errTierBroken) {
			t.Errorf("sharded %v: got %v, want a miss carrying the cause", shard, err)
		}
		if down := ts.health[1].down(); down == shard {
			t.Errorf("sharded %v: tier down = %v", shard, down)
		}
	}
}
