package recompute

import (
	"context"

	"github.com/fusionrag/fusionrag/chunkkv"
	"github.com/fusionrag/fusionrag/fingerprint"
	"github.com/fusionrag/fusionrag/model"
)

// KVSource is where chunk and prefix KV live (the consumer-owned view of a
// kvstore.Store; chunkkv.Store is the implementation over one). The KV it
// returns is treated as shared and read-only; the KV passed to PutKV is not
// modified afterwards by this package.
type KVSource interface {
	// GetKV returns the KV stored under key. It returns an error matching
	// ErrMiss when the key is absent, its entry unusable (corrupt) or its
	// stored check differs from check (a key collision), and a
	// *KVMismatchError for an entry that does not fit.
	GetKV(ctx context.Context, key fingerprint.Key, check fingerprint.Check) (Loaded, error)
	// PutKV stores kv under key with the check of the tokens it covers.
	PutKV(ctx context.Context, key fingerprint.Key, check fingerprint.Check, kv *model.Cache) error
}

// KVLeaser is an optional KVSource capability for a source shared by
// several sidecars: before computing a chunk that missed, a job asks for the
// chunk's lease, so that a burst of the same cold chunk on N sidecars
// computes it once while the others wait for its KV.
type KVLeaser interface {
	// LeaseKV either returns the KV that another holder stored meanwhile
	// (Loaded.KV set; release is a no-op), or no KV and a release to call
	// once the computed KV has been put (or the computation given up). A
	// caller that gets neither a lease nor KV in bounded time is told to
	// compute anyway (no KV, no-op release). release is never nil; err is
	// only ctx's.
	LeaseKV(ctx context.Context, key fingerprint.Key, check fingerprint.Check) (ld Loaded, release func(), err error)
}

// Loaded is one KV read from a KVSource (chunkkv.Loaded).
type Loaded = chunkkv.Loaded

// chunkkv.Store is the KVSource (and KVLeaser) over a kvstore.Store.
var (
	_ KVSource = (*chunkkv.Store)(nil)
	_ KVLeaser = (*chunkkv.Store)(nil)
)
