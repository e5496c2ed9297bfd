package recompute

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/fusionrag/fusionrag/chunkkv"
	"github.com/fusionrag/fusionrag/fingerprint"
	"github.com/fusionrag/fusionrag/internal/redistest"
	"github.com/fusionrag/fusionrag/kvstore"
)

// leasingStore is a shared store with in-process leases (what Redis gives
// sidecars on several machines), counting how often leases were taken.
type leasingStore struct {
	kvstore.Store
	mu     sync.Mutex
	held   map[fingerprint.Key]bool
	taken  int
	broken bool // TryLease fails, as a store that cannot lease
	stuck  bool // every lease is held by a sidecar that died holding it
}

func (s *leasingStore) TryLease(ctx context.Context, key fingerprint.Key, ttl time.Duration) (func(), bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.broken {
		return func() {}, false, errors.New("lease service down")
	}
	if s.stuck || s.held[key] {
		return func() {}, false, nil
	}
	s.held[key] = true
	s.taken++
	var once sync.Once
	return func() {
		once.Do(func() {
			s.mu.Lock()
			delete(s.held, key)
			s.mu.Unlock()
		})
	}, true, nil
}

// burst runs the same cold request on n sidecars at once (each its own
// Reprocessor and chunkkv.Store over the shared store) and returns their
// records and last-position logits.
func burst(t *testing.T, n int, sources func(i int) KVSource, req Request) ([]Record, [][]float32) {
	t.Helper()
	m := tinySynthetic(t)
	recs := make([]Record, n)
	logits := make([][]float32, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		r := newRep(t, m, sources(i))
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			req := req
			req.Strategy, req.Ratio = "reuse", 0
			res, err := r.Run(context.Background(), req)
			if err != nil {
				t.Error(err)
				return
			}
			recs[i], logits[i] = res.Record, slices.Clone(res.LastLogits)
		}()
	}
	close(start)
	wg.Wait()
	return recs, logits
}

func checkBurst(t *testing.T, recs []Record, logits [][]float32, chunks int) {
	t.Helper()
	var misses, leaseHits int
	for _, r := range recs {
		misses += r.Misses
		leaseHits += r.LeaseHits
		if r.RawHits+r.Misses != chunks {
			t.Errorf("record: %d hits + %d misses, want %d chunks", r.RawHits, r.Misses, chunks)
		}
	}
	t.Logf("%d sidecars, %d chunks: %d computed, %d served by another sidecar's lease", len(recs), chunks, misses, leaseHits)
	if misses != chunks {
		t.Errorf("%d chunk computations across the sidecars, want %d (one per chunk)", misses, chunks)
	}
	for i := 1; i < len(logits); i++ {
		if !slices.Equal(logits[i], logits[0]) {
			t.Fatalf("sidecar %d's logits differ from sidecar 0's", i)
		}
	}
}

// TestLeaseColdBurst: a burst of one cold request on 6 sidecars computes
// each chunk once; the others are served the stored KV, bit-identical
// results.
func TestLeaseColdBurst(t *testing.T) {
	m := tinySynthetic(t)
	req := randomRequest(m, 7, []int{12, 9, 15}, 4)
	shared := &leasingStore{Store: memStore(t), held: map[fingerprint.Key]bool{}}
	recs, logits := burst(t, 6, func(int) KVSource { return &chunkkv.Store{Store: shared} }, req)
	checkBurst(t, recs, logits, 3)
	if shared.taken < 3 {
		t.Errorf("%d leases taken, want at least one per chunk", shared.taken)
	}
}

// TestLeaseFallbacks: the lease never fails a request. A lease service that
// errors, and a holder that never stores its chunk (LeaseWait passes),
// both end in computing the chunk.
func TestLeaseFallbacks(t *testing.T) {
	m := tinySynthetic(t)
	req := randomRequest(m, 8, []int{10, 6}, 3)
	req.Strategy, req.Ratio = "reuse", 0

	broken := &leasingStore{Store: memStore(t), held: map[fingerprint.Key]bool{}, broken: true}
	res := run(t, newRep(t, m, &chunkkv.Store{Store: broken}), req, "reuse", 0)
	if res.Record.Misses != 2 {
		t.Errorf("broken lease service: %d computed, want 2", res.Record.Misses)
	}

	stuck := &leasingStore{Store: memStore(t), held: map[fingerprint.Key]bool{}, stuck: true}
	t0 := time.Now()
	res = run(t, newRep(t, m, &chunkkv.Store{Store: stuck, LeaseWait: 50 * time.Millisecond}), req, "reuse", 0)
	if res.Record.Misses != 2 || res.Record.LeaseHits != 0 {
		t.Errorf("stuck leases: %d computed, %d lease hits; want 2, 0", res.Record.Misses, res.Record.LeaseHits)
	}
	if d := time.Since(t0); d < 100*time.Millisecond {
		t.Errorf("stuck leases: returned after %v, want a wait of LeaseWait per chunk", d)
	}

	// A cancelled request stops waiting.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	src := &chunkkv.Store{Store: stuck}
	if _, _, err := src.LeaseKV(ctx, fingerprint.ChunkKeyAfter(fingerprint.Namespace{}, fingerprint.VariantRaw, req.Prefix, req.Chunks[0]), fingerprint.CheckOf(req.Chunks[0])); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled wait: %v", err)
	}
	// A store without leases: compute at once.
	if ld, rel, err := (&chunkkv.Store{Store: memStore(t)}).LeaseKV(context.Background(), fingerprint.Key{}, fingerprint.Check{}); ld.KV != nil || rel == nil || err != nil {
		t.Errorf("store without leases: KV %v, release nil %v, %v", ld.KV != nil, rel == nil, err)
	}
}

// TestLeaseColdBurstCluster: the same burst on 4 sidecars, each with its
// own client of a real 3-master, 3-replica Redis Cluster.
func TestLeaseColdBurstCluster(t *testing.T) {
	c := redistest.StartCluster(t)
	m := tinySynthetic(t)
	req := randomRequest(m, 9, []int{12, 9, 15, 7}, 4)
	recs, logits := burst(t, 4, func(int) KVSource {
		st, err := kvstore.Open(c.URL() + "?timeout=2s")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		return &chunkkv.Store{Store: st}
	}, req)
	checkBurst(t, recs, logits, 4)
}
