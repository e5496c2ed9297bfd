package kvstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fusionrag/fusionrag/fingerprint"
)

// Issue 19: one disk directory shared by several processes (fusionrag serve
// while fusionrag ingest writes, two serves). These tests run real separate
// processes (the test binary re-executed as TestHelperProcess) on one
// directory, and two stores of one process for the API-level cases.

const (
	helperRoleEnv = "FUSIONRAG_KVSTORE_HELPER"     // serve or ingest
	helperDirEnv  = "FUSIONRAG_KVSTORE_HELPER_DIR" // the shared directory
	helperSeedEnv = "FUSIONRAG_KVSTORE_HELPER_SEED"
	helperForEnv  = "FUSIONRAG_KVSTORE_HELPER_FOR" // how long to run
	sharedBudget  = 512 << 10                      // each process's MaxBytes
	sharedKeys    = 48
	sharedVers    = 2
)

// sharedBlob is version ver of chunk id: the same key and check for every
// version, a different payload (20-70 KiB), so that a reader can tell a
// whole blob of either version from a mix of two.
func sharedBlob(t testing.TB, id, ver int) *Blob {
	t.Helper()
	s := shape{layers: 2, kvHeads: 4, headDim: 16, tokens: 40 + id%4*20}
	toks := testTokens(5000+id, s.tokens)
	k, v := testFloats(s, uint64(id*1000+ver))
	b, err := FromFloat32(Meta{
		DType: Float16, Layers: s.layers, KVHeads: s.kvHeads, HeadDim: s.headDim, Tokens: s.tokens,
		PositionFree: true, Key: fingerprint.ChunkKey(testNS, toks), Check: fingerprint.CheckOf(toks),
	}, k, v)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Encode(); err != nil {
		t.Fatal(err)
	}
	return b
}

// sharedSet is every version of every chunk, with their encodings.
type sharedSet struct {
	blobs [sharedKeys][sharedVers]*Blob
	raws  [sharedKeys][sharedVers][]byte
}

func newSharedSet(t testing.TB) *sharedSet {
	s := &sharedSet{}
	for i := range sharedKeys {
		for v := range sharedVers {
			s.blobs[i][v] = sharedBlob(t, i, v)
			s.raws[i][v], _ = s.blobs[i][v].Encode()
		}
	}
	return s
}

// check reports whether got is exactly one version of chunk i.
func (s *sharedSet) check(i int, got *Blob) bool {
	raw := got.Clone().raw
	for v := range sharedVers {
		if bytes.Equal(raw, s.raws[i][v]) {
			return true
		}
	}
	return false
}

// TestHelperProcess is not a test: it is the body of the processes that
// TestDiskSharedProcesses starts, selected by FUSIONRAG_KVSTORE_HELPER.
//   - serve: 2 goroutines Get random chunks (through a Tiered mem+disk
//     store, as the sidecar reads) and Put what misses, as the sidecar
//     computes and stores a missing chunk;
//   - ingest: writes chunks in turn, alternating versions, deleting one now
//     and then.
//
// Every Get must miss or return one version of the chunk byte for byte; any
// other outcome fails the process. It prints one "HELPER ..." line of counts.
func TestHelperProcess(t *testing.T) {
	role := os.Getenv(helperRoleEnv)
	if role == "" {
		return // not a helper: nothing to do
	}
	dir := os.Getenv(helperDirEnv)
	seed, _ := strconv.Atoi(os.Getenv(helperSeedEnv))
	dur, err := time.ParseDuration(os.Getenv(helperForEnv))
	if err != nil {
		t.Fatal(err)
	}
	set := newSharedSet(t)
	d, err := OpenDisk(DiskConfig{Dir: dir, MaxBytes: sharedBudget, Rescan: 50 * time.Millisecond})
	if err != nil {
		t.Fatalf("open shared directory: %v", err)
	}
	m, _ := NewMem(MemConfig{MaxBytes: 128 << 10})
	var s Store = d
	if role == "serve" {
		s = NewTiered(m, d)
	}
	ctx := context.Background()
	deadline := time.Now().Add(dur)
	var mu sync.Mutex
	var hits, misses, puts, dels, wrong, failed int
	fail := func(format string, args ...any) {
		mu.Lock()
		failed++
		if failed <= 5 {
			t.Errorf(format, args...)
		}
		mu.Unlock()
	}
	var wg sync.WaitGroup
	for g := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(seed), uint64(g)))
			for n := 0; time.Now().Before(deadline); n++ {
				i := r.IntN(sharedKeys)
				b := set.blobs[i][n%sharedVers]
				if role == "ingest" {
					var err error
					if n%10 == 9 {
						err = s.Delete(ctx, b.Key)
						mu.Lock()
						dels++
						mu.Unlock()
					} else {
						err = s.Put(ctx, b)
						mu.Lock()
						puts++
						mu.Unlock()
					}
					if err != nil {
						fail("ingest: %v", err)
					}
					continue
				}
				got, err := s.Get(ctx, b.Key, b.Check)
				switch {
				case errors.Is(err, ErrNotFound):
					mu.Lock()
					misses++
					mu.Unlock()
					if err := s.Put(ctx, b); err != nil {
						fail("serve put: %v", err)
					}
					mu.Lock()
					puts++
					mu.Unlock()
				case err != nil:
					fail("serve get: %v", err)
				default:
					ok := set.check(i, got)
					got.Release()
					mu.Lock()
					hits++
					if !ok {
						wrong++
					}
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	st := stat1(d)
	fmt.Printf("HELPER role=%s hits=%d misses=%d puts=%d deletes=%d wrong=%d failed=%d corruptions=%d evictions=%d entries=%d bytes=%d\n",
		role, hits, misses, puts, dels, wrong, failed, st.Corruptions, st.Evictions, st.Entries, st.Bytes)
	if wrong != 0 {
		t.Errorf("%d reads returned bytes that are no version of the chunk", wrong)
	}
	if st.Corruptions != 0 {
		t.Errorf("%d corrupt files seen: a partial write was visible", st.Corruptions)
	}
	if err := s.Close(); err != nil {
		t.Errorf("close: %v", err)
	}
}

// dirBytes sums the accounted sizes of the blob files under dir, and counts
// the files under dir/tmp.
func dirBytes(t *testing.T, dir string) (blobs int64, files, temps int) {
	t.Helper()
	filepath.WalkDir(dir, func(p string, de fs.DirEntry, err error) error {
		if err != nil || de.IsDir() {
			return nil
		}
		info, err := de.Info()
		if err != nil {
			return nil
		}
		rel, _ := filepath.Rel(dir, p)
		switch {
		case filepath.Dir(rel) == "tmp":
			temps++
		case strings.HasSuffix(rel, ".kv"):
			blobs += diskAccount(info.Size())
			files++
		}
		return nil
	})
	return blobs, files, temps
}

// TestDiskSharedProcesses: two serve processes and one ingest process share
// one directory for a while, each with a budget that holds about a third of
// the chunks, so they evict each other's files all along. Every process
// ends cleanly; every read was a miss or a whole blob (byte for byte one of
// the versions written under its key); no temporary file is left; the
// directory holds at most processes x budget (each process holds what it
// knows of to its budget).
func TestDiskSharedProcesses(t *testing.T) {
	if os.Getenv(helperRoleEnv) != "" {
		t.Skip("in a helper process")
	}
	dir := t.TempDir()
	dur := 1500 * time.Millisecond
	if testing.Short() {
		dur = 500 * time.Millisecond
	}
	roles := []string{"serve", "serve", "ingest"}
	type result struct {
		out []byte
		err error
	}
	results := make([]result, len(roles))
	// Sample the directory's size while the processes run.
	var peak int64
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			if n, _, _ := dirBytes(t, dir); n > peak {
				peak = n
			}
			select {
			case <-stop:
				return
			case <-time.After(10 * time.Millisecond):
			}
		}
	}()
	var wg sync.WaitGroup
	for i, role := range roles {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$", "-test.v")
			cmd.Env = append(os.Environ(), helperRoleEnv+"="+role, helperDirEnv+"="+dir,
				helperSeedEnv+"="+strconv.Itoa(i+1), helperForEnv+"="+dur.String())
			done := make(chan struct{})
			time.AfterFunc(30*time.Second, func() { // hang guard
				select {
				case <-done:
				default:
					cmd.Process.Kill()
				}
			})
			out, err := cmd.CombinedOutput()
			close(done)
			results[i] = result{out, err}
		}()
	}
	wg.Wait()
	close(stop)
	<-sampled
	var hits, misses int
	for i, r := range results {
		if r.err != nil || !bytes.Contains(r.out, []byte("--- PASS: TestHelperProcess")) {
			t.Errorf("process %d (%s): %v\n%s", i, roles[i], r.err, r.out)
			continue
		}
		for _, line := range strings.Split(string(r.out), "\n") {
			if strings.HasPrefix(line, "HELPER ") {
				t.Log(line)
				var h, m int
				for _, f := range strings.Fields(line) {
					if v, ok := strings.CutPrefix(f, "hits="); ok {
						h, _ = strconv.Atoi(v)
					}
					if v, ok := strings.CutPrefix(f, "misses="); ok {
						m, _ = strconv.Atoi(v)
					}
				}
				hits, misses = hits+h, misses+m
			}
		}
	}
	if hits == 0 || misses == 0 {
		t.Errorf("serve processes saw %d hits, %d misses; want both (the test did not share anything)", hits, misses)
	}
	bytesOnDisk, files, temps := dirBytes(t, dir)
	t.Logf("after: %d blob files, %d KiB on disk (budget %d KiB per process, %d processes), %d temporary files",
		files, bytesOnDisk>>10, sharedBudget>>10, len(roles), temps)
	if temps != 0 {
		t.Errorf("%d temporary files left behind by processes that ended cleanly", temps)
	}
	t.Logf("peak while running: %d KiB of blob files (sampled every 10 ms)", peak>>10)
	if max(peak, bytesOnDisk) > int64(len(roles))*sharedBudget {
		t.Errorf("directory held %d bytes (peak %d), over %d processes x budget %d", bytesOnDisk, peak, len(roles), sharedBudget)
	}
	// A fresh store over the directory sees it all, within its budget.
	d, err := OpenDisk(DiskConfig{Dir: dir, MaxBytes: sharedBudget})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	set := newSharedSet(t)
	ctx := ctxT(t)
	found := 0
	for i := range sharedKeys {
		b := set.blobs[i][0]
		got, err := d.Get(ctx, b.Key, b.Check)
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if err != nil || !set.check(i, got) {
			t.Fatalf("chunk %d after the run: %v", i, err)
		}
		found++
	}
	if st := stat1(d); st.Bytes > sharedBudget || st.Corruptions != 0 {
		t.Errorf("reopened: %+v", st)
	}
	t.Logf("reopened: %d of %d chunks readable", found, sharedKeys)
}

// TestDiskIngestWhileServe is issue 19 at the API level: an ingest store
// and a serve store (mem+disk, as the sidecar) open one directory at once
// (this was ErrDirLocked); what ingest writes is a hit for serve at once, a
// delete by ingest is a miss for serve, and a rescan brings serve's Stats in
// line.
func TestDiskIngestWhileServe(t *testing.T) {
	ctx := ctxT(t)
	dir := t.TempDir()
	ingest, err := OpenDisk(DiskConfig{Dir: dir, MaxBytes: 4 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer ingest.Close()
	st, err := Open("mem://?max=1MiB,disk://" + dir + "?max=4MiB&rescan=1h")
	if err != nil {
		t.Fatalf("second store on the directory: %v", err)
	}
	defer st.Close()
	serve := st.(*Tiered)
	sd := serve.Tiers()[1].(*Disk)
	set := newSharedSet(t)
	b := set.blobs[0][0]
	if _, err := serve.Get(ctx, b.Key, b.Check); !errors.Is(err, ErrNotFound) {
		t.Fatalf("before ingest: %v, want a miss", err)
	}
	for i := range 8 {
		if err := ingest.Put(ctx, set.blobs[i][0]); err != nil {
			t.Fatal(err)
		}
	}
	if ok, err := sd.Has(ctx, set.blobs[1][0].Key); !ok || err != nil {
		t.Errorf("serve Has of an ingested chunk: %v, %v", ok, err)
	}
	got, err := serve.Get(ctx, b.Key, b.Check)
	if err != nil || !set.check(0, got) {
		t.Fatalf("serve Get of an ingested chunk: %v", err)
	}
	if s := stat1(sd); s.Entries != 2 {
		t.Errorf("serve indexed %d entries, want the 2 it looked up", s.Entries)
	}
	if err := sd.Rescan(); err != nil {
		t.Fatal(err)
	}
	if s, i := stat1(sd), stat1(ingest); s.Entries != 8 || s.Bytes != i.Bytes {
		t.Errorf("after a rescan serve sees %d entries, %d bytes; ingest %d, %d", s.Entries, s.Bytes, i.Entries, i.Bytes)
	}
	// Ingest replaces chunk 2 with another version and deletes chunk 3.
	if err := ingest.Put(ctx, set.blobs[2][1]); err != nil {
		t.Fatal(err)
	}
	if err := ingest.Delete(ctx, set.blobs[3][0].Key); err != nil {
		t.Fatal(err)
	}
	got, err = sd.Get(ctx, set.blobs[2][0].Key, set.blobs[2][0].Check)
	if err != nil || !bytes.Equal(got.Clone().raw, set.raws[2][1]) {
		t.Errorf("replaced chunk: %v, want the new version", err)
	}
	if _, err := sd.Get(ctx, set.blobs[3][0].Key, set.blobs[3][0].Check); !errors.Is(err, ErrNotFound) {
		t.Errorf("deleted chunk: %v, want a miss", err)
	}
	if s := stat1(sd); s.Entries != 7 || s.Errors != 0 || s.Corruptions != 0 {
		t.Errorf("serve after the delete: %+v, want 7 entries and no errors", s)
	}
}

// TestDiskSharedEviction: two stores over budget on one directory evict the
// oldest files, not a file the other one used since (its read advanced the
// file's time), and a file the other already removed is only forgotten.
func TestDiskSharedEviction(t *testing.T) {
	ctx := ctxT(t)
	dir := t.TempDir()
	set := newSharedSet(t)
	size := diskAccount(int64(len(set.raws[0][0]))) // chunks 0, 4, 8... are one size
	cfg := DiskConfig{Dir: dir, MaxBytes: 3 * size, Rescan: time.Hour}
	a, err := OpenDisk(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	ids := []int{0, 4, 8}
	for _, i := range ids {
		if err := a.Put(ctx, set.blobs[i][0]); err != nil {
			t.Fatal(err)
		}
	}
	// Make the files two hours old, so that a read advances their time.
	old := time.Now().Add(-2 * time.Hour)
	for _, i := range ids {
		os.Chtimes(a.path(set.blobs[i][0].Key), old, old)
	}
	a.Rescan() // a learns the old times
	b, err := OpenDisk(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	// b reads chunk 0, a's oldest: that marks it used for everyone.
	if _, err := b.Get(ctx, set.blobs[0][0].Key, set.blobs[0][0].Check); err != nil {
		t.Fatal(err)
	}
	// b removes chunk 4 behind a's back.
	if err := b.Delete(ctx, set.blobs[4][0].Key); err != nil {
		t.Fatal(err)
	}
	// a writes two more: it must evict two of its three, and 4 is gone
	// already, so it removes 8 and keeps 0 (used since by b).
	for _, i := range []int{12, 16} {
		if err := a.Put(ctx, set.blobs[i][0]); err != nil {
			t.Fatal(err)
		}
	}
	has := func(i int) bool { _, err := os.Stat(a.path(set.blobs[i][0].Key)); return err == nil }
	if !has(0) || has(8) || !has(12) || !has(16) {
		t.Errorf("after a's writes: 0:%v 8:%v 12:%v 16:%v, want 0 kept (read by b), 8 evicted, 12 and 16 written",
			has(0), has(8), has(12), has(16))
	}
	if s := stat1(a); s.Evictions != 1 || s.Bytes > cfg.MaxBytes {
		t.Errorf("a: %+v, want 1 eviction (chunk 4 was already gone) within budget", s)
	}
}

// TestDiskTempFiles: a temporary file is removed by a scan only when its
// writer is gone (no lock held) and it is old enough; a live writer's file,
// however old, is kept.
func TestDiskTempFiles(t *testing.T) {
	dir := t.TempDir()
	d, err := OpenDisk(DiskConfig{Dir: dir, Rescan: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	old := time.Now().Add(-2 * staleTempAge)
	mk := func(name string) (string, *os.File) {
		p := filepath.Join(dir, "tmp", name)
		f, err := os.Create(p)
		if err != nil {
			t.Fatal(err)
		}
		return p, f
	}
	live, lf := mk("live.1")
	if err := lockFile(lf); err != nil {
		t.Fatal(err)
	}
	dead, df := mk("dead.1")
	df.Close()
	fresh, ff := mk("fresh.1")
	ff.Close()
	os.Chtimes(live, old, old)
	os.Chtimes(dead, old, old)
	if err := d.Rescan(); err != nil {
		t.Fatal(err)
	}
	exists := func(p string) bool { _, err := os.Stat(p); return err == nil }
	if exists(dead) || !exists(fresh) || canMmap && !exists(live) {
		t.Errorf("after a scan: dead %v (want removed), fresh %v (want kept), live %v (want kept)",
			exists(dead), exists(fresh), exists(live))
	}
	lf.Close() // the writer dies
	d.Rescan()
	if exists(live) {
		t.Error("a dead writer's old temporary file kept")
	}
}

// BenchmarkDiskMerge: the part of a rescan that holds the store's lock
// (merging a directory listing into the index and re-sorting the eviction
// order), for an index of n files; Gets and Puts wait for it.
//
//	go test ./kvstore -run '^$' -bench DiskMerge -benchtime 5x
func BenchmarkDiskMerge(b *testing.B) {
	for _, n := range []int{10_000, 100_000} {
		b.Run(strconv.Itoa(n), func(b *testing.B) {
			d := &Disk{cfg: DiskConfig{Dir: b.TempDir(), MaxBytes: 1 << 50}, index: map[fingerprint.Key]*diskEntry{}}
			files := make([]diskFile, n)
			now := time.Now().UnixNano()
			for i := range files {
				files[i] = diskFile{key: fingerprint.ChunkKey(testNS, testTokens(i, 4)), size: 320 << 10, mtime: now - int64(i)*int64(time.Millisecond)}
			}
			d.merge(files, now)
			for b.Loop() {
				d.merge(files, time.Now().UnixNano())
			}
		})
	}
}
