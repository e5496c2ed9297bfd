package recompute

import (
	"context"

	"github.com/fusionrag/fusionrag/fingerprint"
	"github.com/fusionrag/fusionrag/model"
)

// ChunkKey is THE key of a chunk's position-free KV: the offline fusion, the
// sidecar and this package all call it. Raw (and fused) chunk KV depends on S,
// the prefix it was prefilled after, so S's token ids are part of the key, on
// top of ns (model, tokenizer, tenant, fusion params) and the variant, which
// overrides ns.Variant and must be raw or fused.
//
// The S hash is folded into the namespace's Params as "prefix=<hex>;" ahead
// of the caller's params, so that the key stays fingerprint.ChunkKey's.
func ChunkKey(ns fingerprint.Namespace, variant fingerprint.Variant, prefix, chunk []int32) fingerprint.Key {
	ns.Variant = variant
	ns.Params = "prefix=" + prefixHash(ns, prefix).String() + ";" + ns.Params
	return fingerprint.ChunkKey(ns, chunk)
}

// prefixHash identifies S within a namespace's model, tokenizer and tenant.
func prefixHash(ns fingerprint.Namespace, prefix []int32) fingerprint.Key {
	return fingerprint.ChunkKey(fingerprint.Namespace{
		Model: ns.Model, Tokenizer: ns.Tokenizer, Tenant: ns.Tenant, Variant: fingerprint.VariantPrompt, Params: "s",
	}, prefix)
}

// PrefixKey is the key of S's KV: the exact-prefix key of the prompt-prefix
// protocol (fingerprint.PrefixKey, variant prompt, no fusion params), so an
// engine's prefix entry for S and ours are the same entry. prefix must not be
// empty.
func PrefixKey(ns fingerprint.Namespace, prefix []int32, blockSize int) (fingerprint.Key, error) {
	ns.Variant = fingerprint.VariantPrompt
	ns.Params = ""
	return fingerprint.PrefixKey(ns, prefix, len(prefix), blockSize)
}

// KVSource is where chunk and prefix KV live (the consumer-owned view of a
// kvstore.Store; StoreSource is the implementation over one). The KV it
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

// Loaded is one KV read from a KVSource.
type Loaded struct {
	// KV is the cache, positions as stored. It may be a view of the source's
	// memory (a file mapping, a memory tier buffer): read-only, and valid
	// until Release.
	KV *model.Cache
	// Size is the number of bytes read.
	Size int64
	// Release returns what the source lent; nil when nothing is to be
	// returned. Called once the KV has been copied into the assembly.
	Release func()
}
