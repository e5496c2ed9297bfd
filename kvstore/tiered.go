package kvstore

import (
	"context"
	"errors"

	"github.com/fusionrag/fusionrag/fingerprint"
	"golang.org/x/sync/singleflight"
)

// Tiered composes tiers, fastest first, into one Store: reads go down the
// tiers until a hit and promote the blob into every faster tier; concurrent
// misses of one key load it once.
type Tiered struct {
	tiers []Store
	sf    singleflight.Group
}

// NewTiered returns a tiered store over tiers, fastest first. It owns them:
// Close closes them all.
func NewTiered(tiers ...Store) *Tiered { return &Tiered{tiers: tiers} }

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
// failed, the error joins the failures (each a *TierError) instead of
// ErrNotFound.
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
		b, err := tier.Get(ctx, key, want)
		if errors.Is(err, ErrCollision) {
			return nil, err
		}
		if errors.Is(err, ErrNotFound) { // plain miss or corrupt entry
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
		for _, up := range t.tiers[:i] {
			// Promotion failures are counted by the tier and do not fail
			// the read.
			if m, ok := up.(*Mem); ok {
				m.adopt(ctx, b)
			} else {
				up.Put(ctx, b)
			}
		}
		return b, nil
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return nil, ErrNotFound
}

// Put implements Store: it writes to every tier, fastest first. A tier too
// small for the blob is skipped; the error joins the other tiers' failures.
func (t *Tiered) Put(ctx context.Context, b *Blob) error {
	var errs []error
	stored := false
	for _, tier := range t.tiers {
		err := tier.Put(ctx, b)
		switch {
		case err == nil:
			stored = true
		case errors.Is(err, ErrTooLarge):
		default:
			errs = append(errs, &TierError{Tier: tierName(tier), Op: "put", Err: err})
		}
	}
	if len(errs) == 0 && !stored {
		return ErrTooLarge
	}
	return errors.Join(errs...)
}

// Has implements Store: true when any tier has the key.
func (t *Tiered) Has(ctx context.Context, key fingerprint.Key) (bool, error) {
	var errs []error
	for _, tier := range t.tiers {
		ok, err := tier.Has(ctx, key)
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

// Delete implements Store: from every tier.
func (t *Tiered) Delete(ctx context.Context, key fingerprint.Key) error {
	var errs []error
	for _, tier := range t.tiers {
		if err := tier.Delete(ctx, key); err != nil {
			errs = append(errs, &TierError{Tier: tierName(tier), Op: "delete", Err: err})
		}
	}
	return errors.Join(errs...)
}

// Stats implements Store: every tier's, fastest first.
func (t *Tiered) Stats() []TierStats {
	var s []TierStats
	for _, tier := range t.tiers {
		s = append(s, tier.Stats()...)
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
