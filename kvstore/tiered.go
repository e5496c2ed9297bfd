package kvstore

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/fusionrag/fusionrag/fingerprint"
	"golang.org/x/sync/singleflight"
)

// Tiered composes tiers, fastest first, into one Store: reads go down the
// tiers until a hit and promote the blob into every faster tier; concurrent
// misses of one key load it once.
//
// A tier that fails (an error that is not a miss: Redis killed, a disk
// error) is marked down and skipped, as a miss for reads and not written,
// for a backoff interval (DefaultTierBackoff, doubled by each failed probe
// up to DefaultTierBackoffMax); then one caller probes it and a success brings it
// back (a Redis Cluster tier is never marked down as a whole: its failures
// are one shard's). A read that finds no blob is a miss (it matches ErrNotFound) even
// when a tier failed: for a cache a tier that is down is a miss of that tier,
// never a failure of the request that asked (TierStats.Down and Skips count
// it).
type Tiered struct {
	tiers  []Store
	health []health
	sf     singleflight.Group

	backoff, backoffMax time.Duration
}

// NewTiered returns a tiered store over tiers, fastest first. It owns them:
// Close closes them all.
func NewTiered(tiers ...Store) *Tiered {
	return &Tiered{tiers: tiers, health: make([]health, len(tiers)),
		backoff: DefaultTierBackoff, backoffMax: DefaultTierBackoffMax}
}

// SetBackoff sets how long a failed tier is skipped: first, doubling on
// every failed probe up to max. Call it before the store is used.
func (t *Tiered) SetBackoff(first, max time.Duration) {
	if first > 0 {
		t.backoff = first
	}
	if max >= t.backoff {
		t.backoffMax = max
	}
}

// call runs one operation on tier i unless the tier is down (then it
// returns a *TierError wrapping ErrTierDown without calling it), and records
// the outcome in the tier's health.
func (t *Tiered) call(ctx context.Context, i int, op string, f func() error) error {
	h := &t.health[i]
	ok, probe := h.allow()
	if !ok {
		return &TierError{Tier: tierName(t.tiers[i]), Op: op, Err: ErrTierDown}
	}
	err := f()
	if st, ok := t.tiers[i].(shardedTier); ok && st.sharded() {
		return err
	}
	switch {
	case tierFailed(ctx, err):
		h.fail(probe, t.backoff, t.backoffMax)
	case ctx.Err() == nil:
		h.ok()
	case probe:
		h.probing.Store(false) // the caller gave up: let another probe
	}
	return err
}

// Tiers returns the tiers, fastest first.
func (t *Tiered) Tiers() []Store { return t.tiers }

func tierName(s Store) string {
	if st := s.Stats(); len(st) > 0 {
		return st[0].Tier
	}
	return "?"
}

// Get implements Store. The returned blob is in ordinary memory (a mapped
// blob from a slower tier is copied once, and that copy is what faster
// memory tiers adopt), so it may be shared by concurrent callers; Release is
// a no-op on it. Corrupt entries are skipped (the tier drops them) and the
// next tier is tried; a collision is a miss. When no tier hits and some tier
// failed or was down, the error is an *UnavailableError joining the
// failures (each a *TierError): it matches ErrNotFound.
func (t *Tiered) Get(ctx context.Context, key fingerprint.Key, want fingerprint.Check) (*Blob, error) {
	var flight [16 + 12]byte
	copy(flight[:16], key[:])
	flight[16] = byte(want.Tokens)
	flight[17] = byte(want.Tokens >> 8)
	flight[18] = byte(want.Tokens >> 16)
	flight[19] = byte(want.Tokens >> 24)
	for i := range 8 {
		flight[20+i] = byte(want.Sum >> (8 * i))
	}
	// The load runs detached from the first caller's cancellation, so that
	// one caller giving up does not fail the others; each caller still
	// returns as soon as its own context ends.
	lctx := context.WithoutCancel(ctx)
	ch := t.sf.DoChan(string(flight[:]), func() (any, error) { return t.load(lctx, key, want) })
	select {
	case res := <-ch:
		if res.Err != nil {
			return nil, res.Err
		}
		return res.Val.(*Blob), nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (t *Tiered) load(ctx context.Context, key fingerprint.Key, want fingerprint.Check) (*Blob, error) {
	var errs []error
	for i, tier := range t.tiers {
		var b *Blob
		err := t.call(ctx, i, "get", func() (err error) {
			b, err = tier.Get(ctx, key, want)
			return err
		})
		if errors.Is(err, ErrCollision) {
			return nil, err
		}
		var te *TierError
		if errors.As(err, &te) && te.Err == ErrTierDown {
			errs = append(errs, err)
			continue
		}
		if errors.Is(err, ErrNotFound) { // plain miss, corrupt entry, unreachable shard
			continue
		}
		if err != nil {
			errs = append(errs, &TierError{Tier: tierName(tier), Op: "get", Err: err})
			continue
		}
		if b.release != nil {
			c := b.Clone()
			b.Release()
			b = c
		}
		for j, up := range t.tiers[:i] {
			// Promotion failures are counted by the tier and do not fail
			// the read.
			if m, ok := up.(*Mem); ok {
				m.adopt(ctx, b)
			} else {
				_ = t.call(ctx, j, "put", func() error { return up.Put(ctx, b) })
			}
		}
		return b, nil
	}
	if len(errs) > 0 {
		return nil, &UnavailableError{Tier: failedTiers(errs), Key: key, Err: errors.Join(errs...)}
	}
	return nil, ErrNotFound
}

// failedTiers names the tiers of errs (*TierErrors), comma-separated.
func failedTiers(errs []error) string {
	var names []string
	for _, err := range errs {
		var te *TierError
		if errors.As(err, &te) {
			names = append(names, te.Tier)
		}
	}
	return strings.Join(names, ",")
}

// Put implements Store: it writes to every tier, fastest first. A tier too
// small for the blob is skipped; the error joins the other tiers' failures
// (a tier that is down: a *TierError wrapping ErrTierDown).
func (t *Tiered) Put(ctx context.Context, b *Blob) error {
	var errs []error
	stored := false
	for i, tier := range t.tiers {
		err := t.call(ctx, i, "put", func() error { return tier.Put(ctx, b) })
		var te *TierError
		switch {
		case err == nil:
			stored = true
		case errors.Is(err, ErrTooLarge):
		case errors.As(err, &te) && te.Err == ErrTierDown:
			errs = append(errs, err)
		default:
			errs = append(errs, &TierError{Tier: tierName(tier), Op: "put", Err: err})
		}
	}
	if len(errs) == 0 && !stored {
		return ErrTooLarge
	}
	return errors.Join(errs...)
}

// Has implements Store: true when any tier has the key; a tier that is
// down is not asked.
func (t *Tiered) Has(ctx context.Context, key fingerprint.Key) (bool, error) {
	var errs []error
	for i, tier := range t.tiers {
		var ok bool
		err := t.call(ctx, i, "has", func() (err error) {
			ok, err = tier.Has(ctx, key)
			return err
		})
		var te *TierError
		if errors.As(err, &te) {
			errs = append(errs, err)
			continue
		}
		if err != nil {
			errs = append(errs, &TierError{Tier: tierName(tier), Op: "has", Err: err})
			continue
		}
		if ok {
			return true, nil
		}
	}
	return false, errors.Join(errs...)
}

// Delete implements Store: from every tier (a tier that is down is not
// asked, and its *TierError wraps ErrTierDown).
func (t *Tiered) Delete(ctx context.Context, key fingerprint.Key) error {
	var errs []error
	for i, tier := range t.tiers {
		err := t.call(ctx, i, "delete", func() error { return tier.Delete(ctx, key) })
		var te *TierError
		if errors.As(err, &te) {
			errs = append(errs, err)
		} else if err != nil {
			errs = append(errs, &TierError{Tier: tierName(tier), Op: "delete", Err: err})
		}
	}
	return errors.Join(errs...)
}

// Stats implements Store: every tier's, fastest first, with the tiered
// store's view of its health (Down, Skips, Downs).
func (t *Tiered) Stats() []TierStats {
	var s []TierStats
	for i, tier := range t.tiers {
		h := &t.health[i]
		for _, st := range tier.Stats() {
			st.Down, st.Skips, st.Downs = h.down(), h.skips.Load(), h.downs.Load()
			s = append(s, st)
		}
	}
	return s
}

// Close implements Store.
func (t *Tiered) Close() error {
	var errs []error
	for _, tier := range t.tiers {
		errs = append(errs, tier.Close())
	}
	return errors.Join(errs...)
}
