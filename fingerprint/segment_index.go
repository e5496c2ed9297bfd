package fingerprint

import (
	"slices"
	"sync"

	"github.com/zeebo/xxh3"
)

// IndexGram is the number of leading ids a ChunkIndex hashes to find
// candidates. Chunks shorter than it are not indexed (too short to be worth
// a lookup, and too likely to occur by accident).
const IndexGram = 8

// ChunkIndex finds known chunks (ingested, or met before) inside a prompt
// that carries no markers, convention (c): a hash of each chunk's first
// IndexGram ids maps to the candidate chunks, the prompt is scanned with a
// rolling window, and every candidate is verified by comparing all its ids.
// It is safe for concurrent use; memory is bounded by MaxChunks.
type ChunkIndex struct {
	// MaxChunks bounds the number of indexed chunks; Add beyond it is
	// ignored (0: 1<<20), or evicts the oldest chunk with Evict.
	MaxChunks int
	// Evict makes Add on a full index drop the oldest chunk (first
	// added) instead of refusing the new one.
	Evict bool

	mu    sync.RWMutex
	n     int
	heads map[uint64][][]int32
	fifo  [][]int32 // indexed chunks, oldest first from fifo[head]
	head  int
}

// Add indexes chunk (a copy is kept). It reports whether the chunk is now
// indexed: false for one shorter than IndexGram or when the index is full
// (and does not Evict).
func (x *ChunkIndex) Add(chunk []int32) bool {
	ok, _ := x.AddEvict(chunk)
	return ok
}

// AddEvict is Add that also reports how many chunks it evicted (0 or 1) to
// make room.
func (x *ChunkIndex) AddEvict(chunk []int32) (added bool, evicted int) {
	if len(chunk) < IndexGram {
		return false, 0
	}
	h := gramHash(chunk[:IndexGram])
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.heads == nil {
		x.heads = map[uint64][][]int32{}
	}
	for _, c := range x.heads[h] {
		if slices.Equal(c, chunk) {
			return true, 0
		}
	}
	limit := x.MaxChunks
	if limit <= 0 {
		limit = 1 << 20
	}
	if x.n >= limit {
		if !x.Evict || !x.evictOldest() {
			return false, 0
		}
		evicted = 1
	}
	c := slices.Clone(chunk)
	x.heads[h] = append(x.heads[h], c)
	x.fifo = append(x.fifo, c)
	x.n++
	return true, evicted
}

// EvictOldest removes the oldest indexed chunk; false when the index is
// empty.
func (x *ChunkIndex) EvictOldest() bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.evictOldest()
}

// evictOldest is EvictOldest with x.mu held. The chunk is found in its
// bucket by identity (the slice Add stored), not by value.
func (x *ChunkIndex) evictOldest() bool {
	if x.head >= len(x.fifo) {
		return false
	}
	c := x.fifo[x.head]
	x.fifo[x.head] = nil
	x.head++
	if x.head > 1024 && x.head*2 > len(x.fifo) { // compact: amortised O(1)
		x.fifo = slices.Clone(x.fifo[x.head:])
		x.head = 0
	}
	h := gramHash(c[:IndexGram])
	b := x.heads[h]
	for i := range b {
		if &b[i][0] == &c[0] {
			b = slices.Delete(b, i, i+1)
			break
		}
	}
	if len(b) == 0 {
		delete(x.heads, h)
	} else {
		x.heads[h] = b
	}
	x.n--
	return true
}

// Len is the number of indexed chunks.
func (x *ChunkIndex) Len() int {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return x.n
}

// Find returns the spans of known chunks in ids, left to right, not
// overlapping, never starting before from: at each position the longest
// verified candidate wins and the scan resumes after it.
func (x *ChunkIndex) Find(ids []int32, from int) []Span {
	return findAny(ids, from, []*ChunkIndex{x})
}

// Segment splits a prompt of len(ids) tokens around the known chunks found
// from position prefixMin on (S, which holds at least the BOS, is never
// searched): S ends where the first known chunk begins, and tokens between
// two known chunks form a chunk of their own (Exact false: unknown). The
// last known chunk must leave a question after it; known chunks are then
// dropped from the end until one does. ok is false when no known chunk is
// found.
func (x *ChunkIndex) Segment(ids []int32, prefixMin int) (Segments, bool) {
	return SegmentAny(ids, prefixMin, x)
}

// SegmentAny is Segment over several indexes at once (nil ones are
// skipped): at each position the longest chunk any of them knows. A caller
// that keeps chunks in separate indexes (per tenant, and shared) gets the
// segmentation one index holding them all would give.
func SegmentAny(ids []int32, prefixMin int, xs ...*ChunkIndex) (Segments, bool) {
	found := findAny(ids, prefixMin, xs)
	for len(found) > 0 && found[len(found)-1].End >= len(ids) {
		found = found[:len(found)-1]
	}
	if len(found) == 0 || found[0].Begin == 0 {
		return Segments{}, false
	}
	seg := Segments{Prefix: Span{0, found[0].Begin}, Exact: []bool{}}
	at := found[0].Begin
	for _, f := range found {
		if f.Begin > at {
			seg.Chunks = append(seg.Chunks, Span{at, f.Begin})
			seg.Exact = append(seg.Exact, false)
		}
		seg.Chunks = append(seg.Chunks, f)
		seg.Exact = append(seg.Exact, true)
		at = f.End
	}
	seg.Question = Span{at, len(ids)}
	return seg, seg.Validate(len(ids)) == nil
}

// findAny scans ids from position from, taking at each position the longest
// chunk known to any of xs that matches there exactly, and skipping past it.
func findAny(ids []int32, from int, xs []*ChunkIndex) []Span {
	live := make([]*ChunkIndex, 0, len(xs))
	for _, x := range xs {
		if x == nil || slices.Contains(live, x) { // a second RLock could deadlock behind a writer
			continue
		}
		x.mu.RLock()
		defer x.mu.RUnlock()
		if x.n > 0 {
			live = append(live, x)
		}
	}
	if len(live) == 0 {
		return nil
	}
	var out []Span
	for i := max(from, 0); i+IndexGram <= len(ids); {
		best := 0
		h := gramHash(ids[i : i+IndexGram])
		for _, x := range live {
			for _, c := range x.heads[h] {
				if len(c) > best && i+len(c) <= len(ids) && slices.Equal(c, ids[i:i+len(c)]) {
					best = len(c)
				}
			}
		}
		if best == 0 {
			i++
			continue
		}
		out = append(out, Span{i, i + best})
		i += best
	}
	return out
}

func gramHash(ids []int32) uint64 {
	var buf [IndexGram * 4]byte
	for i, t := range ids {
		u := uint32(t)
		buf[4*i], buf[4*i+1], buf[4*i+2], buf[4*i+3] = byte(u), byte(u>>8), byte(u>>16), byte(u>>24)
	}
	return xxh3.Hash(buf[:])
}
