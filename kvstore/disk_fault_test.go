package kvstore

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Issue 18, finding 1: a blob file truncated while mapped killed the process
// with SIGBUS (fatal, not recoverable) in Blob.Clone. These tests run their
// body in a child process, so that a regression reports "child died: signal:
// bus error" instead of taking the whole test binary down with it.

const faultChildEnv = "FUSIONRAG_KVSTORE_FAULT_CHILD"

// inChild runs the calling test again in a child process with body enabled;
// in the child it runs body.
func inChild(t *testing.T, body func(t *testing.T)) {
	t.Helper()
	if os.Getenv(faultChildEnv) == t.Name() {
		body(t)
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run=^"+t.Name()+"$", "-test.v")
	cmd.Env = append(os.Environ(), faultChildEnv+"="+t.Name())
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child died: %v\n%s", err, out)
	}
	if !bytes.Contains(out, []byte("--- PASS: "+t.Name())) {
		t.Fatalf("child did not pass:\n%s", out)
	}
	t.Logf("child:\n%s", out)
}

// diskShape makes blobs of ~40 KiB, so that truncating to one 4 KiB page
// leaves mapped pages past the end of the file.
var diskShape = shape{layers: 2, kvHeads: 4, headDim: 16, tokens: 80}

// TestDiskTruncatedAfterGet: a blob returned by Get stays readable after its
// file is truncated (it used to be a live mapping: SIGBUS on access).
func TestDiskTruncatedAfterGet(t *testing.T) {
	inChild(t, func(t *testing.T) {
		for _, nommap := range []bool{false, true} {
			d, err := OpenDisk(DiskConfig{Dir: t.TempDir(), MaxBytes: 1 << 20, Mmap: !nommap})
			if err != nil {
				t.Fatal(err)
			}
			ctx := context.Background()
			b := testBlob(t, Float16, diskShape, 1)
			if err := d.Put(ctx, b); err != nil {
				t.Fatal(err)
			}
			got, err := d.Get(ctx, b.Key, b.Check)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.Truncate(d.path(b.Key), diskBlock); err != nil {
				t.Fatal(err)
			}
			checkBlob(t, got.Clone(), b) // read every byte
			got.Release()
			// The truncated file is now a miss, counted, and dropped.
			if _, err := d.Get(ctx, b.Key, b.Check); !errors.Is(err, ErrNotFound) {
				t.Fatalf("nommap=%v: get of truncated file: got %v, want a miss", nommap, err)
			}
			if st := stat1(d); st.Corruptions != 1 || st.Entries != 0 {
				t.Errorf("nommap=%v: got %+v, want 1 corruption, 0 entries", nommap, st)
			}
			d.Close()
		}
	})
}

// TestDiskTruncatedUnderLoad is the reproduction: readers at
// concurrency 8 (through a Tiered disk-only store, as the sidecar reads)
// while another goroutine truncates blob files to 4 KiB and writes them back
// in place. The process survives, misses are counted, and every hit is the
// stored blob byte for byte.
func TestDiskTruncatedUnderLoad(t *testing.T) {
	inChild(t, func(t *testing.T) {
		for _, nommap := range []bool{false, true} {
			truncatedUnderLoad(t, nommap)
		}
	})
}

func truncatedUnderLoad(t *testing.T, nommap bool) {
	d, err := OpenDisk(DiskConfig{Dir: t.TempDir(), MaxBytes: 16 << 20, Mmap: !nommap})
	if err != nil {
		t.Fatal(err)
	}
	ts := NewTiered(d)
	defer ts.Close()
	ctx := context.Background()
	const nBlobs = 8
	blobs := make([]*Blob, nBlobs)
	raws := make([][]byte, nBlobs)
	for i := range blobs {
		blobs[i] = testBlob(t, Float16, diskShape, 100+i)
		raws[i], _ = blobs[i].Encode()
		if err := ts.Put(ctx, blobs[i]); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(400 * time.Millisecond)
	var hits, misses, wrong, failed atomic.Int64
	var wg sync.WaitGroup
	for r := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := r; time.Now().Before(deadline); i++ {
				b := blobs[i%nBlobs]
				got, err := ts.Get(ctx, b.Key, b.Check)
				switch {
				case errors.Is(err, ErrNotFound):
					misses.Add(1)
					ts.Put(ctx, b) // as the sidecar would recompute and store it
				case err != nil:
					failed.Add(1)
				default:
					hits.Add(1)
					if !bytes.Equal(got.Clone().raw, raws[i%nBlobs]) {
						wrong.Add(1)
					}
				}
			}
		}()
	}
	wg.Add(1)
	var cuts atomic.Int64
	go func() { // the operator's truncate-and-write-back
		defer wg.Done()
		for i := 0; time.Now().Before(deadline); i++ {
			p := d.path(blobs[i%nBlobs].Key)
			f, err := os.OpenFile(p, os.O_WRONLY, 0)
			if err != nil {
				continue // dropped meanwhile
			}
			f.Truncate(diskBlock)
			cuts.Add(1)
			time.Sleep(50 * time.Microsecond)
			f.WriteAt(raws[i%nBlobs][diskBlock:], diskBlock)
			f.Close()
		}
	}()
	wg.Wait()
	st := stat1(d)
	t.Logf("nommap=%v: %d truncations, %d hits, %d misses (%d corruptions counted by the tier), %d failed, %d wrong",
		nommap, cuts.Load(), hits.Load(), misses.Load(), st.Corruptions, failed.Load(), wrong.Load())
	if wrong.Load() != 0 || failed.Load() != 0 {
		t.Errorf("nommap=%v: %d wrong, %d failed; want 0 and 0", nommap, wrong.Load(), failed.Load())
	}
	if hits.Load() == 0 || misses.Load() == 0 || st.Corruptions == 0 || cuts.Load() == 0 {
		t.Errorf("nommap=%v: want hits, misses and counted corruptions, got %d/%d/%d after %d truncations",
			nommap, hits.Load(), misses.Load(), st.Corruptions, cuts.Load())
	}
}
