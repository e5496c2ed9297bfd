// Package fingerprint derives the keys under which KV caches are stored and
// found: xxh3-128 hashes over a namespace (model, tokenizer, tenant, variant,
// fusion parameters) and token ids. It does no I/O.
//
// Three kinds of key exist:
//
//   - ChunkKey: the position-free KV of one token span (a retrieved chunk),
//     raw or fused. One copy per chunk and namespace.
//   - BlockKeys: prefix keys chained block by block, like vLLM's block hashes:
//     block i's key hashes block i-1's key and the tokens of block i, so key i
//     identifies the whole prefix [0, (i+1)*blockSize).
//   - PrefixKey: the key of an exact prefix [0, n) of any length, aligned or
//     not. It extends the block chain at floor(n/blockSize) blocks with the
//     tail tokens and n, under its own domain tag, so it never equals a block
//     key.
//
// Every stored entry also carries a Check (token count and a second hash of
// the tokens, computed by a different algorithm, FNV-1a 64): a reader compares
// it with the Check of the tokens it wants. A mismatch means two token
// sequences share a 128-bit key, a collision: the reader counts it and treats
// the entry as a miss.
//
// # Prefix lookup protocol
//
// The sidecar publishes the assembled KV of a whole prompt prefix under
// PrefixKey(ns, tokens, n, blockSize), where tokens are the exact ids the
// engine will see. An engine with request tokens T of length L probes, in the
// order Lookup returns them, and takes the first hit whose Check verifies:
//
//  1. PrefixKey for n = L, then n = L-1 (the sidecar publishes the whole
//     prompt; an engine that must recompute the last token to get logits
//     asks for L-1 first-class too);
//  2. block keys for the block boundaries n = k*blockSize, k descending from
//     floor(L/blockSize) to 1 (the engine's own block cache, or a sidecar
//     entry published at a boundary).
//
// Both sides must agree on the Namespace and on blockSize; a block size
// mismatch only costs hits, never correctness, since every key covers its
// tokens and length.
//
// Segmentation of a prompt into S, chunks and Q on token ids belongs in this
// package too, in its own file, next to the keys it feeds.
package fingerprint

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"sort"

	"github.com/zeebo/xxh3"
)

// Key is a 128-bit xxh3 fingerprint, big-endian (high word first).
type Key [16]byte

// String returns the key as 32 lowercase hex digits.
func (k Key) String() string { return hex.EncodeToString(k[:]) }

// IsZero reports whether k is the zero key, which no hash here produces in
// practice and which marks "unset".
func (k Key) IsZero() bool { return k == Key{} }

// ErrBadKey is returned by ParseKey for text that is not 32 hex digits.
var ErrBadKey = errors.New("fingerprint: key must be 32 hex digits")

// ParseKey parses the String form of a key.
func ParseKey(s string) (Key, error) {
	var k Key
	if len(s) != 2*len(k) {
		return Key{}, fmt.Errorf("%w: got %d characters", ErrBadKey, len(s))
	}
	if _, err := hex.Decode(k[:], []byte(s)); err != nil {
		return Key{}, fmt.Errorf("%w: %v", ErrBadKey, err)
	}
	return k, nil
}

func keyOf(u xxh3.Uint128) Key {
	var k Key
	binary.BigEndian.PutUint64(k[0:8], u.Hi)
	binary.BigEndian.PutUint64(k[8:16], u.Lo)
	return k
}

// Domain tags keep the key kinds apart: the same bytes hashed for different
// purposes never give the same key.
const (
	tagNamespace = "fusionrag/ns/v1\x00"
	tagChunk     = "fusionrag/chunk/v1\x00"
	tagBlock     = "fusionrag/block/v1\x00"
	tagPrefix    = "fusionrag/prefix/v1\x00"
	tagModel     = "fusionrag/model/v1\x00"
	tagTokenizer = "fusionrag/tokenizer/v1\x00"
)

// Variant says which kind of KV a namespace holds.
type Variant uint8

const (
	// VariantRaw is a chunk's KV prefilled on top of S alone.
	VariantRaw Variant = 1
	// VariantFused is a chunk's KV prefilled on top of S and its neighbours.
	VariantFused Variant = 2
	// VariantPrompt is the assembled KV of a prompt prefix, published by the
	// sidecar for the engine's prefix lookup.
	VariantPrompt Variant = 3
)

// String returns "raw", "fused" or "prompt".
func (v Variant) String() string {
	switch v {
	case VariantRaw:
		return "raw"
	case VariantFused:
		return "fused"
	case VariantPrompt:
		return "prompt"
	}
	return fmt.Sprintf("Variant(%d)", uint8(v))
}

// ParseVariant parses the String form of a variant.
func ParseVariant(s string) (Variant, error) {
	switch s {
	case "raw":
		return VariantRaw, nil
	case "fused":
		return VariantFused, nil
	case "prompt":
		return VariantPrompt, nil
	}
	return 0, fmt.Errorf("fingerprint: unknown variant %q (want raw, fused or prompt)", s)
}

// Namespace is everything besides the token ids that a KV depends on. Two
// namespaces that differ in any field never share a key, which is what
// isolates models, tokenizers, fusion settings and tenants from each other.
type Namespace struct {
	// Model is ModelFingerprint of the model's config and weights.
	Model Key
	// Tokenizer is TokenizerFingerprint of the tokenizer files.
	Tokenizer Key
	// Tenant isolates users (a header value or an API key hash). Empty is a
	// valid tenant of its own ("shared").
	Tenant string
	// Variant is raw, fused or prompt.
	Variant Variant
	// Params is a canonical encoding of every setting that changes the KV
	// (fusion neighbours and similarity, recompute strategy and ratio, S
	// hash...), e.g. "n=10;sim=bm25". Callers must build it deterministically;
	// Params with sorted key=value pairs gives one.
	Params string
}

// Errors returned by Namespace.Validate.
var (
	ErrNoModel   = errors.New("fingerprint: namespace has no model fingerprint")
	ErrNoVariant = errors.New("fingerprint: namespace has no valid variant")
)

// Validate reports a namespace that would mix caches: no model, or no variant.
func (ns Namespace) Validate() error {
	if ns.Model.IsZero() {
		return ErrNoModel
	}
	if ns.Variant < VariantRaw || ns.Variant > VariantPrompt {
		return ErrNoVariant
	}
	return nil
}

// Seed returns the hash of the namespace: the root of every key in it.
// Strings are length-prefixed so that field boundaries cannot shift.
func (ns Namespace) Seed() Key {
	h := xxh3.New128()
	var b [8]byte
	h.WriteString(tagNamespace)
	h.Write(ns.Model[:])
	h.Write(ns.Tokenizer[:])
	binary.LittleEndian.PutUint64(b[:], uint64(len(ns.Tenant)))
	h.Write(b[:])
	h.WriteString(ns.Tenant)
	h.Write([]byte{byte(ns.Variant)})
	binary.LittleEndian.PutUint64(b[:], uint64(len(ns.Params)))
	h.Write(b[:])
	h.WriteString(ns.Params)
	return keyOf(h.Sum128())
}

// Params encodes settings canonically: "k1=v1;k2=v2" with keys sorted. Keys
// and values must not contain '=' or ';' (they are the caller's constants).
func Params(kv map[string]string) string {
	keys := make([]string, 0, len(kv))
	for k := range kv {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var out []byte
	for i, k := range keys {
		if i > 0 {
			out = append(out, ';')
		}
		out = append(out, k...)
		out = append(out, '=')
		out = append(out, kv[k]...)
	}
	return string(out)
}

// WeightFile describes one tensor file (or tensor) of a model for
// ModelFingerprint. Digest is whatever content hash the loader has (the
// safetensors header, an xxh3 of the bytes); Size catches truncation.
type WeightFile struct {
	Name   string
	Size   int64
	Digest []byte
}

// ModelFingerprint hashes a model's config bytes and its weight manifest. The
// manifest order does not matter: entries are sorted by name first.
func ModelFingerprint(config []byte, weights []WeightFile) Key {
	ws := append([]WeightFile(nil), weights...)
	sort.Slice(ws, func(i, j int) bool { return ws[i].Name < ws[j].Name })
	h := xxh3.New128()
	var b [8]byte
	h.WriteString(tagModel)
	writeBytes(h, b[:], config)
	binary.LittleEndian.PutUint64(b[:], uint64(len(ws)))
	h.Write(b[:])
	for _, w := range ws {
		writeBytes(h, b[:], []byte(w.Name))
		binary.LittleEndian.PutUint64(b[:], uint64(w.Size))
		h.Write(b[:])
		writeBytes(h, b[:], w.Digest)
	}
	return keyOf(h.Sum128())
}

// TokenizerFingerprint hashes the tokenizer's files (tokenizer.json and
// tokenizer_config.json, or a llama2.c tok*.bin), in the order given.
func TokenizerFingerprint(files ...[]byte) Key {
	h := xxh3.New128()
	var b [8]byte
	h.WriteString(tagTokenizer)
	for _, f := range files {
		writeBytes(h, b[:], f)
	}
	return keyOf(h.Sum128())
}

func writeBytes(h *xxh3.Hasher128, scratch []byte, p []byte) {
	binary.LittleEndian.PutUint64(scratch, uint64(len(p)))
	h.Write(scratch)
	h.Write(p)
}

// writeTokens hashes ids as little-endian uint32 words, in batches to keep
// the Write calls few.
func writeTokens(h *xxh3.Hasher128, tokens []int32) {
	var buf [1024]byte
	for len(tokens) > 0 {
		n := min(len(tokens), len(buf)/4)
		for i, t := range tokens[:n] {
			binary.LittleEndian.PutUint32(buf[4*i:], uint32(t))
		}
		h.Write(buf[:4*n])
		tokens = tokens[n:]
	}
}

// ChunkKey is the key of the position-free KV of the token span tokens in
// namespace ns.
func ChunkKey(ns Namespace, tokens []int32) Key {
	seed := ns.Seed()
	h := xxh3.New128()
	h.WriteString(tagChunk)
	h.Write(seed[:])
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], uint64(len(tokens)))
	h.Write(b[:])
	writeTokens(h, tokens)
	return keyOf(h.Sum128())
}

// ErrBlockSize is returned for a block size below 1.
var ErrBlockSize = errors.New("fingerprint: block size must be at least 1")

func blockNext(parent Key, block []int32) Key {
	h := xxh3.New128()
	h.WriteString(tagBlock)
	h.Write(parent[:])
	writeTokens(h, block)
	return keyOf(h.Sum128())
}

// BlockKeys returns the chained keys of the full blocks of tokens: key i
// covers the prefix [0, (i+1)*blockSize). A trailing partial block gets no
// key (use PrefixKey). The result has len(tokens)/blockSize entries.
func BlockKeys(ns Namespace, tokens []int32, blockSize int) ([]Key, error) {
	if blockSize < 1 {
		return nil, ErrBlockSize
	}
	keys := make([]Key, 0, len(tokens)/blockSize)
	parent := ns.Seed()
	for i := 0; i+blockSize <= len(tokens); i += blockSize {
		parent = blockNext(parent, tokens[i:i+blockSize])
		keys = append(keys, parent)
	}
	return keys, nil
}

func prefixFrom(parent Key, tail []int32, n int) Key {
	h := xxh3.New128()
	h.WriteString(tagPrefix)
	h.Write(parent[:])
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], uint64(n))
	h.Write(b[:])
	writeTokens(h, tail)
	return keyOf(h.Sum128())
}

// ErrPrefixLength is returned when a prefix length is outside [1, len(tokens)].
var ErrPrefixLength = errors.New("fingerprint: prefix length out of range")

// PrefixKey is the key of the exact prefix [0, n) of tokens, for any n in
// [1, len(tokens)]. It chains the full blocks of the prefix like BlockKeys
// and then hashes the tail [floor(n/blockSize)*blockSize, n) and n itself.
func PrefixKey(ns Namespace, tokens []int32, n, blockSize int) (Key, error) {
	if blockSize < 1 {
		return Key{}, ErrBlockSize
	}
	if n < 1 || n > len(tokens) {
		return Key{}, fmt.Errorf("%w: n=%d, tokens=%d", ErrPrefixLength, n, len(tokens))
	}
	parent := ns.Seed()
	full := n / blockSize * blockSize
	for i := 0; i < full; i += blockSize {
		parent = blockNext(parent, tokens[i:i+blockSize])
	}
	return prefixFrom(parent, tokens[full:n], n), nil
}

// Probe is one candidate of a prefix lookup: the KV of [0, Len) under Key,
// verified with Check.
type Probe struct {
	Len   int
	Key   Key
	Check Check
	Exact bool // a PrefixKey probe (else a block key)
}

// Lookup returns the probes of the prefix lookup protocol (see the package
// comment) for request tokens, in the order the engine must try them: exact
// prefixes of length len(tokens) and len(tokens)-1, then block boundaries
// descending. It hashes the tokens once: O(len(tokens)) for all probes.
func Lookup(ns Namespace, tokens []int32, blockSize int) ([]Probe, error) {
	if blockSize < 1 {
		return nil, ErrBlockSize
	}
	L := len(tokens)
	if L == 0 {
		return nil, nil
	}
	// chain[i] is the parent key after i full blocks; chain[0] is the seed.
	chain := make([]Key, 1, L/blockSize+1)
	chain[0] = ns.Seed()
	for i := 0; i+blockSize <= L; i += blockSize {
		chain = append(chain, blockNext(chain[len(chain)-1], tokens[i:i+blockSize]))
	}
	checks := checkPrefixes(tokens, blockSize)
	probes := make([]Probe, 0, len(chain)+1)
	for _, n := range []int{L, L - 1} {
		if n < 1 {
			continue
		}
		full := n / blockSize
		probes = append(probes, Probe{
			Len:   n,
			Key:   prefixFrom(chain[full], tokens[full*blockSize:n], n),
			Check: checks(n),
			Exact: true,
		})
	}
	for k := len(chain) - 1; k >= 1; k-- {
		n := k * blockSize
		probes = append(probes, Probe{Len: n, Key: chain[k], Check: checks(n)})
	}
	return probes, nil
}
