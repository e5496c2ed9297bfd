package fingerprint

import (
	"encoding/hex"
	"fmt"
	"strconv"

	"github.com/zeebo/xxh3"
)

// Every key and namespace of the project is built in this file (and the key
// derivation in fingerprint.go): the offline ingest, the sidecar, the
// recompute stage, the engine's KV connector and the adapters call these
// functions instead of assembling a Namespace themselves, so that a change
// to one of them cannot make one side miss the other's KV. The values are
// pinned by TestNamespaceGolden (testdata/namespaces.golden): stored KV
// stays valid only while they do not change.

// BlockSize is the block size of prefix keys (BlockKeys, PrefixKey, Lookup)
// shared by the publisher and the engine: the engine's KV connector probes
// block boundaries of this size, the recompute stage keys S with it, and
// an adapter refuses an engine that reports another one.
const BlockSize = 16

// FusionParams is the canonical fusion-parameter string of the namespace
// that raw and fused chunk KV are stored in: the neighbours per chunk (n)
// and the similarity's name. The offline ingest writes chunks under it and
// the sidecar must use the same value to find them.
func FusionParams(neighbours int, similarity string) string {
	return Params(map[string]string{"fusion": "v1", "n": strconv.Itoa(neighbours), "sim": similarity})
}

// ChunkNamespace is the namespace of chunk KV for a model, a tokenizer, a
// tenant and fusion parameters (FusionParams). modelFP is the model's
// fingerprint (32 hex digits, as model.Model.Fingerprint returns it);
// tokenizerFP is the tokenizer's fingerprint string, hashed with
// TokenizerFingerprint, or "" for a model without a tokenizer (zero
// Tokenizer). Variant is left zero: ChunkKeyAfter sets it per key.
func ChunkNamespace(modelFP, tokenizerFP, tenant, params string) (Namespace, error) {
	mk, err := ParseKey(modelFP)
	if err != nil {
		return Namespace{}, fmt.Errorf("fingerprint: model fingerprint: %w", err)
	}
	ns := Namespace{Model: mk, Tenant: tenant, Params: params}
	if tokenizerFP != "" {
		ns.Tokenizer = TokenizerFingerprint([]byte(tokenizerFP))
	}
	return ns, nil
}

// ChunkKeyAfter is THE key of a chunk's position-free KV prefilled after
// the prefix S (its ids in prefix): the offline fusion, the sidecar and the
// recompute stage all call it. Raw and fused chunk KV depend on S, so S's
// ids are part of the key, on top of ns (model, tokenizer, tenant, fusion
// params) and the variant, which overrides ns.Variant and must be raw or
// fused.
//
// The hash of S is folded into ns.Params as "prefix=<hex>;" ahead of the
// caller's params, so that the key is ChunkKey's over the chunk ids.
func ChunkKeyAfter(ns Namespace, variant Variant, prefix, chunk []int32) Key {
	ns.Variant = variant
	ns.Params = "prefix=" + prefixHash(ns, prefix).String() + ";" + ns.Params
	return ChunkKey(ns, chunk)
}

// NeighbourRecordKey is the key of a fused chunk's neighbour record (the
// offline ingest's note of which neighbours its fused KV was computed
// with): the chunk's fused key with the parameter "record=neighbours"
// appended to ns.Params.
func NeighbourRecordKey(ns Namespace, prefix, chunk []int32) Key {
	ns.Params += ";record=neighbours"
	return ChunkKeyAfter(ns, VariantFused, prefix, chunk)
}

// prefixHash identifies S within a namespace's model, tokenizer and tenant.
func prefixHash(ns Namespace, prefix []int32) Key {
	return ChunkKey(Namespace{Model: ns.Model, Tokenizer: ns.Tokenizer, Tenant: ns.Tenant, Variant: VariantPrompt, Params: "s"}, prefix)
}

// SystemPrefixKey is the key of S's KV (S = prefix, not empty): the
// exact-prefix key of the prompt-prefix protocol (PrefixKey, variant
// prompt, no fusion params), so that an engine's prefix entry for S and the
// recompute stage's are the same entry.
func SystemPrefixKey(ns Namespace, prefix []int32, blockSize int) (Key, error) {
	ns.Variant = VariantPrompt
	ns.Params = ""
	return PrefixKey(ns, prefix, len(prefix), blockSize)
}

// PublishNamespace is the kv_transfer_params namespace (32 hex digits) under
// which a sidecar publishes a fused prompt's KV: the tenant and everything
// that changes the KV besides the ids (the chunk KV's fusion params, the
// strategy, the ratio). The engine folds in its model and tokenizer
// (KVNamespace).
func PublishNamespace(tenant, params, strategy string, ratio float64) string {
	h := xxh3.HashString128("fusionrag-publish\x00" + tenant + "\x00" + params + "\x00" + strategy + "\x00" +
		strconv.FormatFloat(ratio, 'g', -1, 64)).Bytes()
	return hex.EncodeToString(h[:])
}

// kvParam is the Namespace.Params prefix of published prompt KV.
const kvParam = "kv_transfer_namespace="

// KVNamespace is the namespace of prompt KV published for requests that
// carry kv_transfer_params.namespace ns, for the model and tokenizer with
// these fingerprints (the strings model.Model.Fingerprint and
// tokenizer.Tokenizer.Fingerprint return; 32 hex digits are parsed,
// anything else is hashed). Publisher and engine both key with it.
func KVNamespace(modelFP, tokenizerFP, ns string) Namespace {
	return Namespace{Model: fingerprintKey(modelFP), Tokenizer: fingerprintKey(tokenizerFP), Variant: VariantPrompt,
		Params: kvParam + ns}
}

// fingerprintKey turns a fingerprint string into a Key: 32 hex digits are
// parsed, anything else is hashed.
func fingerprintKey(s string) Key {
	if k, err := ParseKey(s); err == nil {
		return k
	}
	return TokenizerFingerprint([]byte(s))
}

// ValidKVNamespace reports whether ns is a usable kv_transfer_params
// namespace: 1 to 128 hex digits.
func ValidKVNamespace(ns string) bool {
	_, err := hex.DecodeString(ns)
	return err == nil && ns != "" && len(ns) <= 128
}
