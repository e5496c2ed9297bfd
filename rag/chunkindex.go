package rag

import (
	"container/heap"
	"sync"

	"github.com/fusionrag/fusionrag/fingerprint"
)

// maxIndexedChunks bounds the explicitly indexed chunks (Index): at most
// about 64 K chunks (some 64-128 MiB of ids for 256-512-token chunks).
const maxIndexedChunks = 1 << 16

// Index is the index of known chunks used by convention (c) for every
// tenant (in memory, per process): an ingest may add its chunks (their KV is
// still looked up under the requesting tenant's keys). The chunks of the
// requests this sidecar fuses are indexed apart, per tenant, and only found
// in that tenant's prompts: a shared index would let a tenant learn whether
// another had sent a chunk.
func (f *Fuser) Index() *fingerprint.ChunkIndex { return &f.index }

// Remember indexes chunk (its exact ids in context) as known to tenant
// only: found in that tenant's unmarked prompts, never in another's. The
// fusion path calls it for the chunks of every request it fuses; an ingest
// of a tenant's documents should call it rather than add to Index().
//
// Each tenant holds at most limits.indexed_chunks_per_tenant chunks (its
// oldest is dropped for a new one), and all tenants together at most
// limits.indexed_chunks: past it, the oldest chunk of the tenant holding
// the most is dropped. A tenant's flood thus only ever evicts its own
// chunks, or those of a tenant holding at least as many, never those of a
// tenant under its share (issue 18 finding 3: one tenant's 65,536 chunks
// filled a global index and stopped every other tenant's recognition).
func (f *Fuser) Remember(tenant string, chunk []int32) {
	f.seen.remember(tenant, chunk, f.cfg.Limits.IndexPerTenant, f.cfg.Limits.IndexedChunks)
}

// seenBy returns the index of the chunks met in tenant's requests (nil:
// none).
func (f *Fuser) seenBy(tenant string) *fingerprint.ChunkIndex {
	return f.seen.of(tenant)
}

// knownChunks is the per-tenant known-chunk index of convention (c), with a
// bound per tenant (FIFO within the tenant) and a global one (evicting from
// the tenant that holds the most, kept at the top of a max-heap). The zero
// value is ready to use.
type knownChunks struct {
	mu       sync.Mutex
	byTenant map[string]*tenantChunks
	heap     tenantHeap
	total    int
}

// tenantChunks is one tenant's index and its place in the heap.
type tenantChunks struct {
	tenant string
	x      *fingerprint.ChunkIndex
	n      int // x.Len(), kept here for the heap (only remember changes it)
	at     int // index in the heap
}

// remember adds chunk to tenant's index under the bounds perTenant and
// global (0: their defaults, 8192 and maxIndexedChunks).
func (k *knownChunks) remember(tenant string, chunk []int32, perTenant, global int) {
	if len(chunk) < fingerprint.IndexGram {
		return
	}
	if perTenant <= 0 {
		perTenant = 8192
	}
	if global <= 0 {
		global = maxIndexedChunks
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	tc := k.byTenant[tenant]
	if tc == nil {
		if k.byTenant == nil {
			k.byTenant = map[string]*tenantChunks{}
		}
		tc = &tenantChunks{tenant: tenant, x: &fingerprint.ChunkIndex{MaxChunks: perTenant, Evict: true}}
		k.byTenant[tenant] = tc
		heap.Push(&k.heap, tc)
	}
	added, evicted := tc.x.AddEvict(chunk)
	if !added {
		k.dropIfEmpty(tc)
		return
	}
	tc.n += 1 - evicted
	k.total += 1 - evicted
	heap.Fix(&k.heap, tc.at)
	for k.total > global && len(k.heap) > 0 {
		top := k.heap[0]
		if !top.x.EvictOldest() {
			panic("rag: known-chunk index count out of step with its heap") // broken invariant
		}
		top.n--
		k.total--
		heap.Fix(&k.heap, 0)
		k.dropIfEmpty(top)
	}
}

func (k *knownChunks) dropIfEmpty(tc *tenantChunks) {
	if tc.n == 0 {
		heap.Remove(&k.heap, tc.at)
		delete(k.byTenant, tc.tenant)
	}
}

// of returns tenant's index, nil when it holds none.
func (k *knownChunks) of(tenant string) *fingerprint.ChunkIndex {
	k.mu.Lock()
	defer k.mu.Unlock()
	if tc := k.byTenant[tenant]; tc != nil {
		return tc.x
	}
	return nil
}

// len returns the chunks held by tenant and by all tenants.
func (k *knownChunks) len(tenant string) (int, int) {
	k.mu.Lock()
	defer k.mu.Unlock()
	n := 0
	if tc := k.byTenant[tenant]; tc != nil {
		n = tc.n
	}
	return n, k.total
}

// tenantHeap is a max-heap of tenants by chunks held (container/heap).
type tenantHeap []*tenantChunks

func (h tenantHeap) Len() int           { return len(h) }
func (h tenantHeap) Less(i, j int) bool { return h[i].n > h[j].n }
func (h tenantHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].at, h[j].at = i, j
}
func (h *tenantHeap) Push(x any) {
	tc := x.(*tenantChunks)
	tc.at = len(*h)
	*h = append(*h, tc)
}
func (h *tenantHeap) Pop() any {
	old := *h
	tc := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	return tc
}
