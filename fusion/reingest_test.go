package fusion

import (
	"bytes"
	"context"
	"testing"

	"github.com/fusionrag/fusionrag/fingerprint"
)

// TestReingestReplacesFused (issue 18 finding 5: the first ingest of a
// chunk won; a re-ingest among other documents was skipped): chunk X
// ingested with one set of documents, then with another where its
// neighbours differ, has the fused KV of the second set (bytes differ from
// the first and equal a fresh ingest of the second); the second set run
// again is skipped whole. For the shared tenant and a named one alike.
func TestReingestReplacesFused(t *testing.T) {
	m := synthModel(t, tinyConfig(2048))
	docs := storyDocs()
	set1 := chunksOf(t, m, []Document{docs[0], docs[1]}, 512, 0)          // lily, tom
	set2 := chunksOf(t, m, []Document{docs[0], docs[3], docs[4]}, 512, 0) // lily, ben, sue
	if len(set1) != 2 || len(set2) != 3 || set1[0].ID != set2[0].ID {
		t.Fatalf("want one chunk per document: %s / %s", joinIDs(set1), joinIDs(set2))
	}
	x := set1[0]
	for _, tenant := range []string{"", "acme"} {
		t.Run("tenant="+tenant, func(t *testing.T) {
			ctx := context.Background()
			st := openStore(t, "mem://")
			in := newIngester(t, Config{Model: m, Store: st, Tenant: tenant, Neighbours: 2, Workers: 2})
			if _, err := in.Run(ctx, set1); err != nil {
				t.Fatal(err)
			}
			fused1 := payloads(t, in, st, []Chunk{x})[x.ID+"/fused"]
			sum, err := in.Run(ctx, set2)
			if err != nil {
				t.Fatal(err)
			}
			if sum.FusedStored != 3 || sum.FusedReplaced != 1 || sum.FusedSkipped != 0 || sum.RawSkipped != 1 {
				t.Errorf("set 2 after set 1: fused stored %d replaced %d skipped %d, raw skipped %d; want 3, 1, 0, 1",
					sum.FusedStored, sum.FusedReplaced, sum.FusedSkipped, sum.RawSkipped)
			}
			fused2 := payloads(t, in, st, []Chunk{x})[x.ID+"/fused"]
			if fused1 == nil || fused2 == nil || bytes.Equal(fused1, fused2) {
				t.Fatalf("chunk %s's fused KV unchanged by a re-ingest with other neighbours", x.ID)
			}
			ref := openStore(t, "mem://")
			rin := newIngester(t, Config{Model: m, Store: ref, Tenant: tenant, Neighbours: 2, Workers: 1})
			if _, err := rin.Run(ctx, set2); err != nil {
				t.Fatal(err)
			}
			want := payloads(t, rin, ref, set2)
			got := payloads(t, in, st, set2)
			for k, v := range want {
				if !bytes.Equal(v, got[k]) {
					t.Errorf("%s after re-ingest differs from a fresh ingest of set 2", k)
				}
			}
			sum, err = in.Run(ctx, set2)
			if err != nil {
				t.Fatal(err)
			}
			if sum.FusedSkipped != 3 || sum.FusedStored != 0 || sum.RawSkipped != 3 {
				t.Errorf("set 2 again: fused skipped %d stored %d, raw skipped %d; want 3, 0, 3", sum.FusedSkipped, sum.FusedStored, sum.RawSkipped)
			}
		})
	}
}

// TestReingestMixedWriters: two processes fusing chunk X with different
// neighbours at once can interleave their Puts (KV A, KV B, record B,
// record A) and leave B's KV under A's record. Made here by copying X's
// fused blob of set 2 over set 1's: running set 1 again must not skip X on
// the strength of its record (it did before records held a payload
// digest), but fuse it again, ending with set 1's bytes.
func TestReingestMixedWriters(t *testing.T) {
	m := synthModel(t, tinyConfig(2048))
	docs := storyDocs()
	set1 := chunksOf(t, m, []Document{docs[0], docs[1]}, 512, 0)          // lily, tom
	set2 := chunksOf(t, m, []Document{docs[0], docs[3], docs[4]}, 512, 0) // lily, ben, sue
	x := set1[0]
	ctx := context.Background()
	st := openStore(t, "mem://")
	in := newIngester(t, Config{Model: m, Store: st, Neighbours: 2, Workers: 1})
	if _, err := in.Run(ctx, set1); err != nil {
		t.Fatal(err)
	}
	fused1 := payloads(t, in, st, []Chunk{x})[x.ID+"/fused"]
	other := openStore(t, "mem://")
	oin := newIngester(t, Config{Model: m, Store: other, Neighbours: 2, Workers: 1})
	if _, err := oin.Run(ctx, set2); err != nil {
		t.Fatal(err)
	}
	key := in.Key(fingerprint.VariantFused, x.Tokens)
	b, err := other.Get(ctx, key, fingerprint.CheckOf(x.Tokens))
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Put(ctx, b.Clone()); err != nil {
		t.Fatal(err)
	}
	b.Release()
	if got := payloads(t, in, st, []Chunk{x})[x.ID+"/fused"]; bytes.Equal(got, fused1) {
		t.Fatal("the copied blob did not replace set 1's")
	}

	sum, err := in.Run(ctx, set1)
	if err != nil {
		t.Fatal(err)
	}
	if sum.FusedStored != 1 || sum.FusedReplaced != 1 || sum.FusedSkipped != 1 {
		t.Errorf("set 1 over mixed writers: fused stored %d replaced %d skipped %d; want 1, 1, 1",
			sum.FusedStored, sum.FusedReplaced, sum.FusedSkipped)
	}
	if got := payloads(t, in, st, []Chunk{x})[x.ID+"/fused"]; !bytes.Equal(got, fused1) {
		t.Errorf("chunk %s: fused KV after re-ingest is not set 1's", x.ID)
	}
	sum, err = in.Run(ctx, set1)
	if err != nil {
		t.Fatal(err)
	}
	if sum.FusedSkipped != 2 || sum.FusedStored != 0 {
		t.Errorf("set 1 again: fused skipped %d stored %d; want 2, 0", sum.FusedSkipped, sum.FusedStored)
	}
}
