package rag

import (
	"bufio"
	"bytes"
	"math"
	"os"
	"strconv"
	"sync/atomic"

	"github.com/fusionrag/fusionrag/model"
)

// Budget bounds the bytes in flight on the fusion path: a run reserves its
// estimate before it recomputes and releases it when it returns. A
// reservation that would take the total over the limit is refused whole
// (no partial reservation, no waiting: the request is forwarded instead).
// It is safe for concurrent use.
type Budget struct {
	limit int64 // < 0: no limit
	used  atomic.Int64
}

// NewBudget returns a budget of limit bytes; 0 selects DefaultFusionMemory,
// a negative limit none at all.
func NewBudget(limit int64) *Budget {
	if limit == 0 {
		limit = DefaultFusionMemory()
	}
	return &Budget{limit: limit}
}

// Reserve takes n bytes and reports true, or reports false and takes
// nothing when they do not fit.
func (b *Budget) Reserve(n int64) bool {
	if n < 0 {
		panic("rag: negative budget reservation") // broken invariant
	}
	for {
		u := b.used.Load()
		if b.limit >= 0 && (n > b.limit || u > b.limit-n) {
			return false
		}
		if b.used.CompareAndSwap(u, u+n) {
			return true
		}
	}
}

// Release returns n bytes that Reserve took.
func (b *Budget) Release(n int64) {
	if b.used.Add(-n) < 0 {
		panic("rag: budget released more than was reserved") // broken invariant
	}
}

// InUse is the bytes reserved now.
func (b *Budget) InUse() int64 { return b.used.Load() }

// Limit is the budget's bound in bytes (negative: none).
func (b *Budget) Limit() int64 { return b.limit }

// fallbackFusionMemory is DefaultFusionMemory where the memory available
// cannot be read.
const fallbackFusionMemory = 4 << 30

// DefaultFusionMemory is limits.fusion_memory's default: half the memory
// the process may use, the smaller of its cgroup's limit (v2 memory.max,
// v1 memory.limit_in_bytes) and the machine's MemTotal, or 4 GiB when
// neither can be read (not Linux). The other half is left to the model's
// weights, the store's memory tier and the Go runtime.
func DefaultFusionMemory() int64 {
	avail := int64(math.MaxInt64)
	for _, f := range []string{"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"} {
		if b, err := os.ReadFile(f); err == nil {
			if n, err := strconv.ParseInt(string(bytes.TrimSpace(b)), 10, 64); err == nil && n > 0 {
				avail = min(avail, n) // "max" (no limit) does not parse
			}
		}
	}
	if fh, err := os.Open("/proc/meminfo"); err == nil {
		sc := bufio.NewScanner(fh)
		for sc.Scan() {
			if f := bytes.Fields(sc.Bytes()); len(f) >= 2 && string(f[0]) == "MemTotal:" {
				if kb, err := strconv.ParseInt(string(f[1]), 10, 64); err == nil && kb > 0 {
					avail = min(avail, kb<<10)
				}
			}
		}
		fh.Close()
	}
	if avail == math.MaxInt64 {
		return fallbackFusionMemory
	}
	return avail / 2
}

// fusionBytes estimates the memory one fusion-path run holds at its peak
// for a prompt of tokens ids, prefix of them S and question of them Q, with
// the strategy and ratio: the KV of the whole prompt three times (the
// assembled cache, [layers][tokens, kv_heads, head_dim] float32 for K and
// V; the chunks' KV it is assembled from, decoded copies when they come
// from Redis or in float16; and the copy the adapter encodes to publish it,
// a pushed blob or a llama.cpp slot file), the activations of the
// recompute pass for its rows (the selected tokens and Q; every token for
// full and cacheblend, whose layer-1 pass covers the whole context), the
// attention sums and the logits row. The attention kernel's own buffers
// are per block of rows and small next to these. TestFusionBytesMeasured
// logs it next to what one Fuse allocates.
func fusionBytes(c model.Config, tokens, prefix, question int, strategy string, ratio float64) int64 {
	context := max(tokens-prefix-question, 0)
	rows := int64(question) + int64(math.Ceil(ratio*float64(context)))
	switch strategy {
	case "full", "cacheblend":
		rows = int64(tokens)
	case "reuse":
		rows = int64(question)
	}
	rows = min(rows, int64(tokens))
	L := int64(tokens)
	kv := L * int64(c.Layers) * 2 * int64(c.KVDim()) * 4
	act := rows * 4 * int64(2*c.Dim+c.QDim()+2*c.KVDim()+2*c.HiddenDim)
	return 3*kv + act + L*4*int64(c.Heads+1) + 4*int64(c.Vocab)
}
