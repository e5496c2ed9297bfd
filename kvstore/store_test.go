package kvstore

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/fusionrag/fusionrag/fingerprint"
	"github.com/fusionrag/fusionrag/internal/redistest"
	"github.com/google/go-cmp/cmp"
)

// tierCase opens one kind of tier and can flip a byte of what it stores.
type tierCase struct {
	name string
	open func(t *testing.T) Store
	// flip flips byte i of key's stored form; false when i is past its end.
	flip func(t *testing.T, s Store, key fingerprint.Key, i int) bool
}

func memFlip(t *testing.T, s Store, key fingerprint.Key, i int) bool {
	m := s.(*Mem)
	m.mu.Lock()
	defer m.mu.Unlock()
	e, ok := m.items[key]
	if !ok {
		t.Fatalf("mem: key %s not stored", key)
	}
	if i >= len(e.raw) {
		return false
	}
	e.raw[i] ^= 0x01
	return true
}

func diskFlip(t *testing.T, s Store, key fingerprint.Key, i int) bool {
	p := s.(*Disk).path(key)
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if i >= len(data) {
		return false
	}
	data[i] ^= 0x01
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return true
}

// redisFlip flips byte i of the concatenation manifest-or-value, part 0,
// part 1, ...
func redisFlip(t *testing.T, s Store, key fingerprint.Key, i int) bool {
	r := s.(*Redis)
	ctx := context.Background()
	keys := []string{r.key(key)}
	v, err := r.c.Get(ctx, keys[0]).Bytes()
	if err != nil {
		t.Fatal(err)
	}
	if m, err := decodeManifest(v); err == nil {
		for p := range m.parts {
			keys = append(keys, r.partKey(key, p))
		}
	}
	for _, k := range keys {
		v, err := r.c.Get(ctx, k).Bytes()
		if err != nil {
			t.Fatal(err)
		}
		if i < len(v) {
			if err := r.c.SetRange(ctx, k, int64(i), string([]byte{v[i] ^ 0x01})).Err(); err != nil {
				t.Fatal(err)
			}
			return true
		}
		i -= len(v)
	}
	return false
}

func tierCases() []tierCase {
	return []tierCase{
		{"mem", func(t *testing.T) Store {
			s, err := Open("mem://?max=64MiB")
			if err != nil {
				t.Fatal(err)
			}
			return s
		}, memFlip},
		{"disk", func(t *testing.T) Store {
			s, err := Open("disk://" + t.TempDir() + "?max=64MiB")
			if err != nil {
				t.Fatal(err)
			}
			return s
		}, diskFlip},
		{"disk-mmap", func(t *testing.T) Store {
			s, err := Open("disk://" + t.TempDir() + "?max=64MiB&mmap=true")
			if err != nil {
				t.Fatal(err)
			}
			return s
		}, diskFlip},
		{"redis", func(t *testing.T) Store {
			return openRedisTier(t, redistest.Start(t), "ttl=1h&timeout=5s")
		}, redisFlip},
		{"redis-parts", func(t *testing.T) Store {
			return openRedisTier(t, redistest.Start(t), "ttl=1h&part=1KiB&streams=3")
		}, redisFlip},
	}
}

func checkBlob(t *testing.T, got, want *Blob) {
	t.Helper()
	if diff := cmp.Diff(want.Meta, got.Meta); diff != "" {
		t.Fatalf("meta (-want +got):\n%s", diff)
	}
	if !bytes.Equal(got.Payload(), want.Payload()) {
		t.Fatal("payload differs")
	}
}

func stat1(s Store) TierStats { return s.Stats()[0] }

func TestTiers(t *testing.T) {
	for _, tc := range tierCases() {
		t.Run(tc.name, func(t *testing.T) {
			s := tc.open(t)
			defer s.Close()
			ctx := ctxT(t)
			shp := shape{layers: 2, kvHeads: 2, headDim: 8, tokens: 20} // 1408..2688 bytes: several redis parts

			t.Run("round trip", func(t *testing.T) {
				for i, dt := range allDTypes {
					want := testBlob(t, dt, shp, 100+i)
					if err := s.Put(ctx, want); err != nil {
						t.Fatal(err)
					}
					if ok, err := s.Has(ctx, want.Key); !ok || err != nil {
						t.Fatalf("Has = %v, %v", ok, err)
					}
					got, err := s.Get(ctx, want.Key, want.Check)
					if err != nil {
						t.Fatal(err)
					}
					checkBlob(t, got, want)
					k, _ := got.Float32()
					wk, _ := testFloats(shp, uint64(100+i))
					if diff := cmp.Diff(roundTrip(wk[1], dt), k[1]); diff != "" {
						t.Fatalf("%s K[1] (-want +got):\n%s", dt, diff)
					}
					if err := got.Release(); err != nil {
						t.Fatal(err)
					}
				}
			})

			t.Run("miss", func(t *testing.T) {
				key, check := wantOf(999, 4)
				_, err := s.Get(ctx, key, check)
				var ce *CorruptError
				if !errors.Is(err, ErrNotFound) || errors.As(err, &ce) {
					t.Fatalf("got %v, want plain ErrNotFound", err)
				}
			})

			t.Run("collision", func(t *testing.T) {
				b := testBlob(t, Float16, shp, 200)
				if err := s.Put(ctx, b); err != nil {
					t.Fatal(err)
				}
				before := stat1(s).Collisions
				other := fingerprint.CheckOf(testTokens(201, shp.tokens))
				_, err := s.Get(ctx, b.Key, other)
				var ce *fingerprint.CollisionError
				if !errors.Is(err, ErrCollision) || !errors.Is(err, ErrNotFound) || !errors.As(err, &ce) {
					t.Fatalf("got %v, want a collision", err)
				}
				if got := stat1(s).Collisions - before; got != 1 {
					t.Errorf("collisions counted %d, want 1", got)
				}
			})

			t.Run("delete", func(t *testing.T) {
				b := testBlob(t, Float32, shp, 300)
				if err := s.Put(ctx, b); err != nil {
					t.Fatal(err)
				}
				if err := s.Delete(ctx, b.Key); err != nil {
					t.Fatal(err)
				}
				if ok, _ := s.Has(ctx, b.Key); ok {
					t.Error("Has after Delete")
				}
				if _, err := s.Get(ctx, b.Key, b.Check); !errors.Is(err, ErrNotFound) {
					t.Errorf("Get after Delete: %v", err)
				}
				if err := s.Delete(ctx, b.Key); err != nil {
					t.Errorf("deleting a missing key: %v", err)
				}
			})

			t.Run("every byte flipped", func(t *testing.T) {
				fs := small
				if tc.name == "redis-parts" {
					fs = shp // manifest plus parts
				}
				b := testBlob(t, Float16, fs, 400)
				before := stat1(s)
				n := 0
				for i := 0; ; i++ {
					if err := s.Put(ctx, b); err != nil {
						t.Fatal(err)
					}
					if !tc.flip(t, s, b.Key, i) {
						break
					}
					n++
					got, err := s.Get(ctx, b.Key, b.Check)
					var ce *CorruptError
					if got != nil || !errors.As(err, &ce) || !errors.Is(err, ErrNotFound) {
						t.Fatalf("byte %d flipped: got blob=%v err=%v, want *CorruptError", i, got != nil, err)
					}
					if ok, _ := s.Has(ctx, b.Key); ok {
						t.Fatalf("byte %d: corrupt entry not dropped", i)
					}
				}
				if want := b.Size(); tc.name != "redis-parts" && n != want {
					t.Errorf("flipped %d bytes, blob has %d", n, want)
				}
				after := stat1(s)
				if got := after.Corruptions - before.Corruptions; got != int64(n) {
					t.Errorf("corruptions counted %d, want %d", got, n)
				}
				if after.Hits != before.Hits {
					t.Errorf("a corrupt read counted as a hit")
				}
				t.Logf("%d flipped bytes all detected", n)
			})

			t.Run("stats", func(t *testing.T) {
				st := stat1(s)
				if st.Hits < 3 || st.Misses < 1 || st.Puts < 3 || st.Errors != 0 {
					t.Errorf("stats %+v", st)
				}
			})
		})
	}
}

func TestDiskSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	ctx := ctxT(t)
	d, err := OpenDisk(DiskConfig{Dir: dir, MaxBytes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	var blobs []*Blob
	for i := range 5 {
		b := testBlob(t, BFloat16, small, i)
		if err := d.Put(ctx, b); err != nil {
			t.Fatal(err)
		}
		blobs = append(blobs, b)
	}
	d.Close()
	// A stale temporary file from a crash (old, unlocked) is cleaned on open.
	stale := filepath.Join(dir, "tmp", "stale.1")
	os.WriteFile(stale, []byte("x"), 0o644)
	old := time.Now().Add(-2 * staleTempAge)
	os.Chtimes(stale, old, old)
	d2, err := OpenDisk(DiskConfig{Dir: dir, MaxBytes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer d2.Close()
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Errorf("stale temp file kept: %v", err)
	}
	st := stat1(d2)
	if st.Entries != 5 || st.Bytes != 5*diskBlock {
		t.Errorf("reopened with %d entries, %d bytes; want 5, %d", st.Entries, st.Bytes, 5*diskBlock)
	}
	for _, b := range blobs {
		got, err := d2.Get(ctx, b.Key, b.Check)
		if err != nil {
			t.Fatal(err)
		}
		checkBlob(t, got, b)
		got.Release()
	}
	// Reopening with a smaller budget evicts down to it, oldest first.
	d2.Close()
	d3, err := OpenDisk(DiskConfig{Dir: dir, MaxBytes: 2 * diskBlock})
	if err != nil {
		t.Fatal(err)
	}
	defer d3.Close()
	if st := stat1(d3); st.Entries != 2 || st.Evictions != 3 {
		t.Errorf("after shrinking: %+v", st)
	}
}

// TestDiskMappingOutlivesEviction: a blob read from disk stays valid after its
// file is evicted or deleted.
func TestDiskMappingOutlivesEviction(t *testing.T) {
	ctx := ctxT(t)
	d, err := OpenDisk(DiskConfig{Dir: t.TempDir(), MaxBytes: diskBlock})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	a, b := testBlob(t, Float16, small, 1), testBlob(t, Float16, small, 2)
	d.Put(ctx, a)
	got, err := d.Get(ctx, a.Key, a.Check)
	if err != nil {
		t.Fatal(err)
	}
	d.Put(ctx, b) // evicts a
	if ok, _ := d.Has(ctx, a.Key); ok {
		t.Fatal("a not evicted")
	}
	checkBlob(t, got, a)
	got.Release()
	got.Release() // idempotent
}

func TestTooLarge(t *testing.T) {
	ctx := ctxT(t)
	m, _ := NewMem(MemConfig{MaxBytes: 100})
	if err := m.Put(ctx, testBlob(t, Float32, small, 1)); !errors.Is(err, ErrTooLarge) {
		t.Errorf("mem: %v", err)
	}
	d, _ := OpenDisk(DiskConfig{Dir: t.TempDir(), MaxBytes: 100})
	if err := d.Put(ctx, testBlob(t, Float32, small, 1)); !errors.Is(err, ErrTooLarge) {
		t.Errorf("disk: %v", err)
	}
}

func TestClosed(t *testing.T) {
	ctx := ctxT(t)
	m, _ := NewMem(MemConfig{})
	m.Close()
	b := testBlob(t, Float16, small, 1)
	if err := m.Put(ctx, b); !errors.Is(err, ErrClosed) {
		t.Errorf("mem put: %v", err)
	}
	if _, err := m.Get(ctx, b.Key, b.Check); !errors.Is(err, ErrClosed) {
		t.Errorf("mem get: %v", err)
	}
	d, _ := OpenDisk(DiskConfig{Dir: t.TempDir()})
	d.Close()
	if err := d.Put(ctx, b); !errors.Is(err, ErrClosed) {
		t.Errorf("disk put: %v", err)
	}
}
