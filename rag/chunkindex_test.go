package rag

import (
	"context"
	"testing"

	"github.com/fusionrag/fusionrag/proxy"
)

// floodChunk is the i-th of distinct 16-id chunks (distinct in their first
// fingerprint.IndexGram ids, so each has a bucket of its own).
func floodChunk(base, i int) []int32 {
	c := make([]int32, 16)
	for k := range c {
		c[k] = int32(base + i*7 + k*131071)
	}
	return c
}

// TestKnownChunksBounds: per-tenant FIFO bound and a global bound that
// evicts from the tenant holding the most.
func TestKnownChunksBounds(t *testing.T) {
	var k knownChunks
	const per, global = 100, 250
	for i := range 1000 { // A floods: holds its last 100
		k.remember("A", floodChunk(1, i), per, global)
	}
	if a, all := k.len("A"); a != per || all != per {
		t.Fatalf("A holds %d (all %d), want %d", a, all, per)
	}
	if k.of("A").Find(floodChunk(1, 0), 0) != nil || k.of("A").Find(floodChunk(1, 999), 0) == nil {
		t.Error("A's index does not keep its newest chunks")
	}
	for i := range 60 {
		k.remember("B", floodChunk(1<<20, i), per, global)
		k.remember("C", floodChunk(1<<21, i), per, global)
	}
	// 100 + 60 + 60 = 220. D's 100 take the total to 320: 70 evicted, from
	// whoever holds the most at each step (A and D), never from B or C
	// (60 each, under their share of 250/4).
	for i := range 100 {
		k.remember("D", floodChunk(1<<22, i), per, global)
	}
	a, all := k.len("A")
	b, _ := k.len("B")
	c, _ := k.len("C")
	d, _ := k.len("D")
	if all != global || b != 60 || c != 60 || a+d != global-120 || a < 60 || d < 60 {
		t.Errorf("holds A %d B %d C %d D %d (all %d), want B = C = 60 and A + D = %d, total %d", a, b, c, d, all, global-120, global)
	}
	k.remember("E", []int32{1, 2, 3}, per, global) // too short: not indexed, no empty tenant left behind
	if k.of("E") != nil {
		t.Error("a too-short chunk left tenant E an index")
	}
}

// TestKnownChunksFlood (issue 18 finding 3: one tenant filled the global
// known-chunk index, after which another tenant's unmarked prompts were no
// longer recognised): tenant B's chunks are remembered from a fused
// request, tenant A floods 100,000 chunks; B's prompt is still segmented by
// its chunks, and B can still add new ones.
func TestKnownChunksFlood(t *testing.T) {
	fe := newFuserEnv(t, nil)
	partsBody := storiesBody(`"max_tokens":2`)
	rb := fe.request(t, proxy.RouteChat, partsBody, "tenant-b")
	tb := rb.Tenant // the tenant key TenantOf derives
	if _, err := fe.f.Fuse(context.Background(), rb); err != nil {
		t.Fatal(err)
	}
	for i := range 100_000 {
		fe.f.Remember("tenant-a", floodChunk(1, i))
	}
	a, all := fe.f.seen.len("tenant-a")
	t.Logf("after the flood: tenant A holds %d chunks, all tenants %d", a, all)
	if a > fe.f.cfg.Limits.IndexPerTenant || all > fe.f.cfg.Limits.IndexedChunks {
		t.Errorf("tenant A holds %d, all %d: over limits.indexed_chunks_per_tenant %d / indexed_chunks %d",
			a, all, fe.f.cfg.Limits.IndexPerTenant, fe.f.cfg.Limits.IndexedChunks)
	}
	prompt := "You tell stories.\n\nDocument: A\n" + storyA + "\n\nDocument: B\n" + storyB + "\n\nThe end"
	body := `{"prompt":` + jsonString(prompt) + `,"max_tokens":2}`
	sg, err := fe.f.segment(fe.request(t, proxy.RouteCompletions, body, "tenant-b"))
	if err != nil {
		t.Fatalf("tenant B's prompt: %v", err)
	}
	if found := fe.f.seenBy(tb).Find(sg.ids, 1); len(found) != 2 {
		t.Errorf("tenant B's index finds %d of its 2 chunks in its prompt after tenant A's flood", len(found))
	}
	fresh := floodChunk(1<<23, 0)
	fe.f.Remember(tb, fresh)
	if fe.f.seenBy(tb).Find(fresh, 0) == nil {
		t.Error("tenant B cannot add a chunk after tenant A's flood")
	}
	if fe.f.seenBy("tenant-a").Find(floodChunk(1, 99_999), 0) == nil {
		t.Error("tenant A's newest chunk is not indexed")
	}
}
