package kvstore

import (
	"bytes"
	"errors"
	"io/fs"
	"math/rand/v2"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

// TestBudgetUnderZipf runs a concurrent read-through workload with Zipf
// key popularity (run it with -race) and checks after every operation that
// the tier's accounted bytes stay within its budget, then that the
// accounting matches what is really held.
func TestBudgetUnderZipf(t *testing.T) {
	const budget = 1 << 20
	nKeys, workers, ops := 200, 4, 1500
	if testing.Short() {
		ops = 400
	}
	blobs := make([]*Blob, nKeys)
	for i := range blobs {
		// 2..16 KiB payloads: ~1.8 MiB in all, well over the budget.
		blobs[i] = testBlob(t, Float16, shape{layers: 2, kvHeads: 2, headDim: 16, tokens: 8 + i%8*8}, i)
	}
	cases := []struct {
		name string
		open func(t *testing.T) Store
	}{
		{"mem-lru", func(t *testing.T) Store { m, _ := NewMem(MemConfig{MaxBytes: budget}); return m }},
		{"mem-heat", func(t *testing.T) Store { m, _ := NewMem(MemConfig{MaxBytes: budget, Policy: "heat"}); return m }},
		{"disk", func(t *testing.T) Store {
			d, err := OpenDisk(DiskConfig{Dir: t.TempDir(), MaxBytes: budget})
			if err != nil {
				t.Fatal(err)
			}
			return d
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx := ctxT(t)
			runtime.GC()
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			heapBefore := ms.HeapAlloc
			s := tc.open(t)
			defer s.Close()
			var over atomic.Int64
			var wg sync.WaitGroup
			for w := range workers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					r := rand.New(rand.NewPCG(uint64(w), 7))
					z := rand.NewZipf(r, 1.2, 1, uint64(nKeys-1))
					for range ops {
						b := blobs[z.Uint64()]
						got, err := s.Get(ctx, b.Key, b.Check)
						switch {
						case err == nil:
							if !bytes.Equal(got.Payload(), b.Payload()) {
								t.Error("wrong KV")
							}
							got.Release()
						case errors.Is(err, ErrNotFound):
							if err := s.Put(ctx, b); err != nil && !strings.Contains(err.Error(), "in flight") {
								t.Error(err)
							}
						default:
							t.Error(err)
						}
						if st := stat1(s); st.Bytes > st.MaxBytes {
							over.Add(1)
						}
					}
				}()
			}
			wg.Wait()
			if n := over.Load(); n > 0 {
				t.Errorf("accounted bytes over budget after %d operations", n)
			}
			st := stat1(s)
			t.Logf("hits %d misses %d evictions %d entries %d bytes %d/%d",
				st.Hits, st.Misses, st.Evictions, st.Entries, st.Bytes, st.MaxBytes)
			if st.Evictions == 0 || st.Hits == 0 {
				t.Errorf("workload did not exercise eviction and hits: %+v", st)
			}
			switch s := s.(type) {
			case *Mem:
				var sum int64
				for _, e := range s.items {
					sum += e.cost
				}
				if sum != s.used || int64(s.lru.Len()) != int64(len(s.items)) {
					t.Errorf("mem accounting: entries cost %d, used %d", sum, s.used)
				}
				// The heap really held stays near the budget: the overhead
				// estimate is not wildly off. Slack: 1 MiB for the runtime,
				// the test's goroutines and its counters.
				runtime.GC()
				runtime.ReadMemStats(&ms)
				if grown := int64(ms.HeapAlloc) - int64(heapBefore); grown > budget+1<<20 {
					t.Errorf("heap grew %d bytes for a %d byte budget", grown, budget)
				}
			case *Disk:
				var files, onDisk int64
				filepath.WalkDir(s.cfg.Dir, func(p string, de fs.DirEntry, err error) error {
					if err == nil && !de.IsDir() && strings.HasSuffix(p, ".kv") {
						info, _ := de.Info()
						files++
						onDisk += diskAccount(info.Size())
					}
					return nil
				})
				if onDisk > budget || onDisk != s.used || files != int64(len(s.index)) {
					t.Errorf("disk: %d files, %d bytes on disk; index %d entries, %d bytes; budget %d",
						files, onDisk, len(s.index), s.used, budget)
				}
			}
		})
	}
}

// TestEvictionPolicies: LRU evicts the least recently used; heat keeps a
// frequently read entry over one-off entries.
func TestEvictionPolicies(t *testing.T) {
	ctx := ctxT(t)
	blob := func(i int) *Blob { return testBlob(t, Float16, small, i) }
	cost := memAccount(blob(0).Size())

	lru, _ := NewMem(MemConfig{MaxBytes: 3 * cost})
	for i := range 3 {
		lru.Put(ctx, blob(i))
	}
	b0 := blob(0)
	lru.Get(ctx, b0.Key, b0.Check) // 1 is now the least recent
	lru.Put(ctx, blob(3))
	for i, want := range []bool{true, false, true, true} {
		if ok, _ := lru.Has(ctx, blob(i).Key); ok != want {
			t.Errorf("lru: entry %d present=%v, want %v", i, ok, want)
		}
	}

	heat, _ := NewMem(MemConfig{MaxBytes: 4 * cost, Policy: "heat"})
	hot := blob(100)
	heat.Put(ctx, hot)
	for range 50 {
		heat.Get(ctx, hot.Key, hot.Check)
	}
	for i := range 40 { // one-off entries stream through
		heat.Put(ctx, blob(i))
	}
	if ok, _ := heat.Has(ctx, hot.Key); !ok {
		t.Error("heat evicted the hot entry")
	}
	if st := stat1(heat); st.Bytes > st.MaxBytes || st.Evictions != 37 {
		t.Errorf("heat stats %+v", st)
	}
}
