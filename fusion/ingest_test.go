package fusion

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"testing"

	"github.com/fusionrag/fusionrag/chunkkv"
	"github.com/fusionrag/fusionrag/fingerprint"
	"github.com/fusionrag/fusionrag/internal/modeltest"
	"github.com/fusionrag/fusionrag/internal/redistest"
	"github.com/fusionrag/fusionrag/internal/shareddata"
	"github.com/fusionrag/fusionrag/kvstore"
	"github.com/fusionrag/fusionrag/model"
)

// payloads returns the stored bytes of every chunk's raw and fused KV
// (nil for a missing one).
func payloads(t *testing.T, in *Ingester, st kvstore.Store, chunks []Chunk) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	for _, c := range chunks {
		for _, v := range []fingerprint.Variant{fingerprint.VariantRaw, fingerprint.VariantFused} {
			b, err := st.Get(context.Background(), in.Key(v, c.Tokens), fingerprint.CheckOf(c.Tokens))
			if errors.Is(err, kvstore.ErrNotFound) {
				out[c.ID+"/"+v.String()] = nil
				continue
			}
			if err != nil {
				t.Fatal(err)
			}
			out[c.ID+"/"+v.String()] = bytes.Clone(b.Payload())
			b.Release()
		}
	}
	return out
}

func loadKV(t *testing.T, in *Ingester, st kvstore.Store, v fingerprint.Variant, c Chunk) *model.Cache {
	t.Helper()
	src := &chunkkv.Store{Store: st}
	ld, err := src.GetKV(context.Background(), in.Key(v, c.Tokens), fingerprint.CheckOf(c.Tokens))
	if err != nil {
		t.Fatalf("chunk %s %v: %v", c.ID, v, err)
	}
	kv := ld.KV.Clone()
	if ld.Release != nil {
		ld.Release()
	}
	// chunkkv.Store numbers entries from 0; the builder's convention is
	// [s, s+|C|). Position-free storage makes the two equivalent.
	kv.Shift(int32(len(in.Config().Prefix)))
	return kv
}

// The real model: what is stored is what the Builder computes, raw and
// fused with the BM25 neighbours, and a second run stores nothing.
func TestIngestStories(t *testing.T) {
	m := modeltest.Stories(t)
	chunks := chunksOf(t, m, storyDocs(), 24, 4)
	st := openStore(t, "mem://")
	in := newIngester(t, Config{Model: m, Store: st, Neighbours: 3, Workers: 2})
	sum, err := in.Run(context.Background(), chunks)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("stories260K, %d chunks:\n%s", len(chunks), sum)
	if sum.Chunks != len(chunks) || sum.RawStored != len(chunks) || sum.FusedStored != len(chunks) || sum.Failed != 0 || sum.Bytes == 0 {
		t.Fatalf("summary %+v", sum)
	}
	ctx := context.Background()
	b, err := NewBuilder(ctx, m, in.Config().Prefix)
	if err != nil {
		t.Fatal(err)
	}
	nb, err := (&BM25{}).Neighbours(ctx, chunks, 3)
	if err != nil {
		t.Fatal(err)
	}
	for _, i := range []int{0, len(chunks) / 2, len(chunks) - 1} {
		c := chunks[i]
		raw, err := b.Raw(ctx, c.Tokens)
		if err != nil {
			t.Fatal(err)
		}
		if d := maxDiff(t, loadKV(t, in, st, fingerprint.VariantRaw, c), raw); d != 0 {
			t.Errorf("chunk %s: stored raw KV differs from Builder.Raw by %g (fp32 store: want 0)", c.ID, d)
		}
		var nkv []*model.Cache
		for _, j := range nb[i] {
			kv, err := b.Raw(ctx, chunks[j].Tokens)
			if err != nil {
				t.Fatal(err)
			}
			nkv = append(nkv, kv)
		}
		fused, err := b.Fused(ctx, c.Tokens, nkv)
		if err != nil {
			t.Fatal(err)
		}
		if d := maxDiff(t, loadKV(t, in, st, fingerprint.VariantFused, c), fused); d != 0 {
			t.Errorf("chunk %s: stored fused KV differs from Builder.Fused(neighbours %v) by %g", c.ID, nb[i], d)
		}
	}
	again, err := in.Run(ctx, chunks)
	if err != nil {
		t.Fatal(err)
	}
	if again.RawStored != 0 || again.FusedStored != 0 || again.RawSkipped != len(chunks) || again.FusedSkipped != len(chunks) {
		t.Errorf("second run stored again: %+v", again)
	}
}

// Results depend neither on workers nor on batch size.
func TestIngestDeterministic(t *testing.T) {
	m := synthModel(t, tinyConfig(2048))
	chunks := chunksOf(t, m, storyDocs(), 48, 8)
	var first map[string][]byte
	for _, tc := range []struct{ workers, batch int }{{1, 1}, {3, 4}, {2, 100}} {
		st := openStore(t, "mem://")
		in := newIngester(t, Config{Model: m, Store: st, Neighbours: 4, Workers: tc.workers, BatchSize: tc.batch})
		if _, err := in.Run(context.Background(), chunks); err != nil {
			t.Fatal(err)
		}
		got := payloads(t, in, st, chunks)
		if first == nil {
			first = got
			continue
		}
		for k, v := range first {
			if v == nil || !bytes.Equal(v, got[k]) {
				t.Errorf("workers %d batch %d: %s differs (or missing)", tc.workers, tc.batch, k)
			}
		}
	}
}

// Interrupting an ingest and running it again completes it with no
// duplicate and no lost chunk, with the same bytes as an uninterrupted run.
func TestIngestResume(t *testing.T) {
	m := synthModel(t, tinyConfig(2048))
	docs := storyDocs()
	chunks := chunksOf(t, m, docs, 24, 4)
	n := len(chunks)
	dir := t.TempDir()
	url := "disk://" + filepath.Join(dir, "kv")
	st := openStore(t, url)
	for _, stopAt := range []struct {
		phase string
		after int
	}{{"raw", n / 3}, {"fused", n / 2}} {
		ctx, cancel := context.WithCancel(context.Background())
		in := newIngester(t, Config{Model: m, Store: st, Neighbours: 3, Workers: 2, BatchSize: 2,
			OnProgress: func(p Progress) {
				if p.Phase == stopAt.phase && p.Done >= stopAt.after {
					cancel()
				}
			}})
		sum, err := in.Run(ctx, chunks)
		cancel()
		if !errors.Is(err, context.Canceled) || !sum.Interrupted {
			t.Fatalf("interrupted run: err %v, summary %+v", err, sum)
		}
		t.Logf("interrupted in %s: %d raw + %d fused stored", stopAt.phase, sum.RawStored, sum.FusedStored)
	}
	// The interrupted runs left some of the work; the store is the only
	// state. Count what is there, then resume.
	in := newIngester(t, Config{Model: m, Store: st, Neighbours: 3, Workers: 2, BatchSize: 2})
	before := payloads(t, in, st, chunks)
	have := 0
	for _, v := range before {
		if v != nil {
			have++
		}
	}
	if have == 0 || have == 2*n {
		t.Fatalf("interrupted runs stored %d of %d blobs: the test did not interrupt", have, 2*n)
	}
	sum, err := in.Run(context.Background(), chunks)
	if err != nil {
		t.Fatal(err)
	}
	if sum.RawSkipped+sum.FusedSkipped != have || sum.RawStored+sum.FusedStored != 2*n-have {
		t.Errorf("resume: %d blobs were stored, resume skipped %d and stored %d, want %d and %d",
			have, sum.RawSkipped+sum.FusedSkipped, sum.RawStored+sum.FusedStored, have, 2*n-have)
	}
	after := payloads(t, in, st, chunks)
	for k, v := range before {
		if v != nil && !bytes.Equal(v, after[k]) {
			t.Errorf("%s was rewritten with different bytes", k)
		}
	}
	// The same bytes as an uninterrupted run.
	ref := openStore(t, "mem://")
	rin := newIngester(t, Config{Model: m, Store: ref, Neighbours: 3, Workers: 2})
	if _, err := rin.Run(context.Background(), chunks); err != nil {
		t.Fatal(err)
	}
	want := payloads(t, rin, ref, chunks)
	for k, v := range want {
		if !bytes.Equal(v, after[k]) {
			t.Errorf("%s: resumed store differs from an uninterrupted run", k)
		}
	}
	var entries int64
	for _, ts := range st.Stats() {
		entries += ts.Entries
	}
	if entries != int64(3*n) {
		t.Errorf("disk store holds %d entries, want %d (raw, fused and its neighbour record per chunk, no duplicate)", entries, 3*n)
	}
}

func TestIngestRedis(t *testing.T) {
	url := redistest.Start(t).URL(0)
	m := synthModel(t, tinyConfig(2048))
	chunks := chunksOf(t, m, storyDocs(), 32, 0)
	st := openStore(t, url)
	in := newIngester(t, Config{Model: m, Store: st, Neighbours: 2, Workers: 2})
	sum, err := in.Run(context.Background(), chunks)
	if err != nil {
		t.Fatal(err)
	}
	if sum.FusedStored != len(chunks) || sum.RawStored != len(chunks) {
		t.Fatalf("summary %+v", sum)
	}
	// The sidecar's view: recompute finds the fused entries under the same keys.
	ns := in.Namespace()
	if got := fingerprint.ChunkKeyAfter(ns, fingerprint.VariantFused, in.Config().Prefix, chunks[0].Tokens); got != in.Key(fingerprint.VariantFused, chunks[0].Tokens) {
		t.Errorf("fingerprint.ChunkKeyAfter and Ingester.Key disagree")
	}
	if ok, err := st.Has(context.Background(), in.Key(fingerprint.VariantFused, chunks[len(chunks)-1].Tokens)); !ok || err != nil {
		t.Errorf("last fused entry not in Redis: %v %v", ok, err)
	}
}

// Chunks the model cannot take are counted and skipped; the rest is stored.
func TestIngestFailures(t *testing.T) {
	m := synthModel(t, tinyConfig(128))
	chunks := chunksOf(t, m, storyDocs()[:2], 40, 0)
	long := Chunk{ID: "long", Tokens: make([]int32, 200)}
	for i := range long.Tokens {
		long.Tokens[i] = int32(259 + i)
	}
	bad := Chunk{ID: "bad", Tokens: []int32{100000}}
	dup := chunks[0]
	dup.ID = "dup"
	all := append(append([]Chunk{}, chunks...), long, bad, dup, Chunk{ID: "empty"})
	st := openStore(t, "mem://")
	in := newIngester(t, Config{Model: m, Store: st, Neighbours: 10})
	sum, err := in.Run(context.Background(), all)
	if err != nil {
		t.Fatal(err)
	}
	if sum.Duplicates != 1 || sum.Chunks != len(chunks)+2 || sum.RawStored != len(chunks) || sum.Failed != 2 || sum.Truncated == 0 {
		t.Errorf("summary %+v", sum)
	}
	t.Logf("%s\nerrors: %q", sum, sum.Errors)
	// A store that fails stops the run with its error.
	st.Close()
	in2 := newIngester(t, Config{Model: m, Store: st, Neighbours: 1})
	if _, err := in2.Run(context.Background(), chunks); err == nil {
		t.Error("closed store: no error")
	}
}

// The NQ-open passages on a synthetic model: chunks/min and the cost of
// fusion relative to raw-only ingest, measured in the same run. The
// default takes the first 30 passages (-short 10); FUSIONRAG_NQ_FULL=1 all
// 2,655.
func TestIngestNQ(t *testing.T) {
	p := shareddata.Path(t, "rag/nq-open-oracle.jsonl.gz")
	limit := 30
	if testing.Short() {
		limit = 10
	}
	if os.Getenv("FUSIONRAG_NQ_FULL") != "" {
		limit = 0
	}
	cfg := nqModelConfig()
	m := synthModelTok(t, cfg, shareddata.Path(t, "models/stories260K/tok512.bin"))
	ch, err := NewChunker(Chunker{Tokenizer: m.Tokenizer, Size: 512, MaxTokens: cfg.MaxPositions - 1})
	if err != nil {
		t.Fatal(err)
	}
	f, err := OpenCorpus(p)
	if err != nil {
		t.Fatal(err)
	}
	chunks, ls, err := LoadChunks(f, ch, limit, 0)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("corpus: %d lines, %d passages, %d chunks, %d malformed, %d empty", ls.Lines, ls.Documents, ls.Chunks, ls.Malformed, ls.Empty)
	var progress *os.File
	if testing.Verbose() && limit == 0 {
		progress = os.Stderr
	}
	cfgI := Config{Model: m, Store: openStore(t, "mem://")}
	if progress != nil {
		cfgI.Progress = progress
	}
	in := newIngester(t, cfgI)
	sum, err := in.Run(context.Background(), chunks)
	if err != nil {
		t.Fatal(err)
	}
	if sum.FusedStored+sum.Duplicates+sum.Failed < len(chunks)-sum.Duplicates && sum.Failed == 0 {
		t.Errorf("summary %+v", sum)
	}
	full := sum.RawTime + sum.NeighbourTime + sum.FusedTime
	t.Logf("NQ-open on synthetic %s (%d layers, dim %d, %d/%d heads, vocab %d):\n%s\nmean chunk %d tokens, mean neighbour context %d tokens; ingest with fusion / raw-only = %.2fx",
		strconv.FormatInt(cfg.Params(), 10)+" params", cfg.Layers, cfg.Dim, cfg.Heads, cfg.KVHeads, cfg.Vocab, sum,
		sum.Tokens/max(sum.Chunks, 1), sum.NeighbourTokens/max(sum.FusedStored, 1), float64(full)/float64(max(sum.RawTime, 1)))
	var stored atomic.Int64
	stored.Add(int64(sum.RawStored + sum.FusedStored))
	if stored.Load() == 0 {
		t.Error("nothing stored")
	}
}

// nqModelConfig is the synthetic model of the NQ-open ingest, small enough
// for all 2,655 passages in minutes on 2 shared cores: 2 layers, dim 32,
// 2 query heads and 1 KV head of 16, vocab 512 to use the stories260K
// tokenizer (a real English BPE: ~295 tokens per passage, one chunk per
// passage at 512; the synthetic letter-piece tokenizer needs ~470), room for
// S + 10 neighbours + the chunk.
func nqModelConfig() model.Config {
	c := tinyConfig(8192)
	c.Dim, c.HiddenDim, c.Layers, c.Heads, c.KVHeads, c.HeadDim = 32, 64, 2, 2, 1, 16
	return c
}
