package proxy

import "github.com/fusionrag/fusionrag/fingerprint"

// maxIndexedChunks bounds the known-chunk index of convention (c): at most
// about 64 K chunks (some 64-128 MiB of ids for 256-512-token chunks).
const maxIndexedChunks = 1 << 16

// Index is the index of known chunks used by convention (c) for every
// tenant (in memory, per process): an ingest may add its chunks (their KV is
// still looked up under the requesting tenant's keys). The chunks of the
// requests this sidecar fuses are indexed apart, per tenant, and only found
// in that tenant's prompts: a shared index would let a tenant learn whether
// another had sent a chunk.
func (f *RAGFuser) Index() *fingerprint.ChunkIndex { return &f.index }

// Remember indexes chunk (its exact ids in context) as known to tenant
// only: found in that tenant's unmarked prompts, never in another's. The
// fusion path calls it for the chunks of every request it fuses; an ingest
// of a tenant's documents should call it rather than add to Index(). All
// tenants together hold at most maxIndexedChunks such chunks.
func (f *RAGFuser) Remember(tenant string, chunk []int32) {
	f.seenMu.Lock()
	defer f.seenMu.Unlock()
	if f.seenTotal >= maxIndexedChunks {
		return
	}
	x := f.seen[tenant]
	if x == nil {
		if f.seen == nil {
			f.seen = map[string]*fingerprint.ChunkIndex{}
		}
		x = &fingerprint.ChunkIndex{MaxChunks: maxIndexedChunks}
		f.seen[tenant] = x
	}
	n := x.Len()
	x.Add(chunk)
	f.seenTotal += x.Len() - n
}

// seenBy returns the index of the chunks met in tenant's requests (nil:
// none).
func (f *RAGFuser) seenBy(tenant string) *fingerprint.ChunkIndex {
	f.seenMu.Lock()
	defer f.seenMu.Unlock()
	return f.seen[tenant]
}
