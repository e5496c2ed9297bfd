package kvstore

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"
)

// ErrTierDown: a tier of a tiered store failed recently and is skipped
// until its backoff passes (see Tiered). For a read it is a miss of that
// tier; for a write, that tier did not get the blob.
var ErrTierDown = errors.New("kvstore: tier down, retried after a backoff")

// Default retry backoff of a tier that failed: the first failure skips it
// for DefaultTierBackoff, each failed probe doubles that up to
// DefaultTierBackoffMax.
const (
	DefaultTierBackoff    = 500 * time.Millisecond
	DefaultTierBackoffMax = 5 * time.Second
)

// health is one tier's availability as a tiered store sees it. A tier that
// fails (an error that is not a miss) is down: it is skipped (a miss for
// reads, not written) until its backoff passes; then one caller probes it
// while the others keep skipping; a success brings it back, a failure
// doubles the backoff. So an outage costs one failed call per backoff
// interval instead of a connect error or a timeout per request.
type health struct {
	downUntil atomic.Int64 // unix nanoseconds; 0: healthy
	probing   atomic.Bool
	skips     atomic.Int64 // calls not made because the tier was down
	downs     atomic.Int64 // healthy-to-down transitions

	mu      sync.Mutex
	backoff time.Duration // current backoff, 0 when healthy
}

// allow reports whether a call may be made to the tier now: it is healthy,
// or its backoff passed and this caller is the probe (probe is true).
func (h *health) allow() (ok, probe bool) {
	d := h.downUntil.Load()
	if d == 0 {
		return true, false
	}
	if time.Now().UnixNano() >= d && h.probing.CompareAndSwap(false, true) {
		return true, true
	}
	h.skips.Add(1)
	return false, false
}

// ok records a call that succeeded or missed: the tier answers.
func (h *health) ok() {
	if h.downUntil.Load() == 0 {
		return
	}
	h.mu.Lock()
	h.backoff = 0
	h.downUntil.Store(0)
	h.probing.Store(false)
	h.mu.Unlock()
}

// fail records a failure of the tier: down for the next backoff interval,
// lo after a healthy spell, doubled (up to hi) when the probe fails. The
// calls that were in flight when the tier went down fail too; they change
// nothing (doubling on each would take the backoff to hi at once).
func (h *health) fail(probe bool, lo, hi time.Duration) {
	h.mu.Lock()
	defer h.mu.Unlock()
	switch {
	case h.backoff == 0:
		h.downs.Add(1)
		h.backoff = lo
	case probe:
		h.backoff = min(2*h.backoff, hi)
	default:
		return
	}
	h.downUntil.Store(time.Now().Add(h.backoff).UnixNano())
	h.probing.Store(false)
}

// down reports whether the tier is being skipped.
func (h *health) down() bool { return h.downUntil.Load() != 0 }

// tierFailed reports whether err, returned by a tier under ctx, says that
// the tier is broken: not a miss (a corrupt entry, a collision, one
// unreachable cluster shard), not a blob too large for it, and not the
// caller's own cancellation.
func tierFailed(ctx context.Context, err error) bool {
	if err == nil || errors.Is(err, ErrNotFound) || errors.Is(err, ErrTooLarge) {
		return false
	}
	return ctx.Err() == nil
}

// shardedTier is a tier whose failures are one shard's, not the whole
// tier's: a Redis Cluster with a master lost fails the keys of its slots
// only. Marking the tier down would skip the live shards too, so its
// failures are left to the tier (reads of a lost shard are misses,
// *UnavailableError).
type shardedTier interface{ sharded() bool }

func (r *Redis) sharded() bool { return r.cluster }
