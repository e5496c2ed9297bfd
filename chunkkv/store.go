// Package chunkkv is position-free chunk KV shared by the offline stage
// (fusion) and the online one (recompute): how a chunk's raw KV is computed
// (RawKV) and how chunk and prefix KV are kept in a kvstore.Store (Store),
// with the errors a reader of it must handle (ErrMiss, ErrKVMismatch). It
// sits below both stages so that the offline one never imports the online
// one; kvstore stays free of model math (the blob <-> model.Cache mapping
// lives here).
package chunkkv

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/fusionrag/fusionrag/fingerprint"
	"github.com/fusionrag/fusionrag/kvstore"
	"github.com/fusionrag/fusionrag/model"
)

// Store is chunk KV over a kvstore.Store (recompute.KVSource and
// recompute.KVLeaser are implemented by it): KV is stored as
// position-free blobs (K before RoPE) in DType. fp32 blobs are read without
// copying (the cache views the blob's payload until the job releases it);
// fp16/bf16 blobs are widened into a new fp32 cache.
type Store struct {
	// Store holds the blobs. Required.
	Store kvstore.Store
	// DType is the element type written by PutKV; zero means kvstore.Float32.
	DType kvstore.DType
	// LeaseTTL is how long a lease on a chunk being computed lives when its
	// holder never releases it (a crashed sidecar); it should exceed the
	// time to compute one chunk. Default 10 s. Only a Store that is a
	// kvstore.Leaser (Redis, Redis Cluster) has leases.
	LeaseTTL time.Duration
	// LeaseWait bounds how long a sidecar that finds the lease taken waits
	// for the holder's blob before computing the chunk itself. Default 5 s.
	LeaseWait time.Duration
}

// Lease polling: the first re-read after lost lease comes after
// leasePollMin, then doubling up to leasePollMax.
const (
	leasePollMin = 5 * time.Millisecond
	leasePollMax = 100 * time.Millisecond
)

// LeaseKV is recompute.KVLeaser over a kvstore.Leaser: the first sidecar to
// miss a chunk takes the lease (SET NX PX on Redis) and computes it; the
// others re-read the key with backoff until its blob appears, the lease
// frees up (its holder gave up: they take it) or LeaseWait passes (they
// compute it too). A store without leases, or one that fails to answer,
// lets the caller compute at once. It fails only when ctx ends.
func (s *Store) LeaseKV(ctx context.Context, key fingerprint.Key, check fingerprint.Check) (Loaded, func(), error) {
	nop := func() {}
	l, ok := s.Store.(kvstore.Leaser)
	if !ok {
		return Loaded{}, nop, nil
	}
	ttl, wait := s.LeaseTTL, s.LeaseWait
	if ttl <= 0 {
		ttl = 10 * time.Second
	}
	if wait <= 0 {
		wait = 5 * time.Second
	}
	deadline := time.Now().Add(wait)
	poll := leasePollMin
	for {
		rel, got, err := l.TryLease(ctx, key, ttl)
		if err != nil {
			return Loaded{}, nop, nil // no lease service: compute without one
		}
		if got {
			// The holder may have stored the blob and released the lease
			// between our miss and now.
			if ld, err := s.GetKV(ctx, key, check); err == nil {
				rel()
				return ld, nop, nil
			}
			return Loaded{}, rel, nil
		}
		t := time.NewTimer(poll)
		select {
		case <-ctx.Done():
			t.Stop()
			return Loaded{}, nop, ctx.Err()
		case <-t.C:
		}
		if ld, err := s.GetKV(ctx, key, check); err == nil {
			return ld, nop, nil
		}
		if time.Now().After(deadline) {
			return Loaded{}, nop, nil // waited long enough: compute it too
		}
		poll = min(2*poll, leasePollMax)
	}
}

// GetKV returns the KV stored under key. It returns an error matching
// ErrMiss when the key is absent and a *KVMismatchError for an entry that
// does not fit (another key, K with RoPE applied).
func (s *Store) GetKV(ctx context.Context, key fingerprint.Key, check fingerprint.Check) (Loaded, error) {
	b, err := s.Store.Get(ctx, key, check)
	if err != nil {
		if errors.Is(err, kvstore.ErrNotFound) {
			return Loaded{}, fmt.Errorf("%w: %w", ErrMiss, err)
		}
		return Loaded{}, err
	}
	rel := func() { _ = b.Release() }
	m := b.Meta
	bad := func(field, got, want string) (Loaded, error) {
		rel()
		return Loaded{}, &KVMismatchError{Key: key.String(), Field: field, Got: got, Want: want}
	}
	if m.Key != key {
		return bad("key", m.Key.String(), key.String())
	}
	if !m.PositionFree {
		return bad("placement", fmt.Sprintf("K with RoPE at base position %d", m.BasePos), "position-free K")
	}
	kv := &model.Cache{Layers: m.Layers, KVHeads: m.KVHeads, HeadDim: m.HeadDim,
		Pos: make([]int32, m.Tokens), K: make([][]float32, m.Layers), V: make([][]float32, m.Layers)}
	for i := range kv.Pos {
		kv.Pos[i] = int32(i)
	}
	n := m.LayerElems()
	view := m.DType == kvstore.Float32
	for l := range m.Layers {
		kb, vb := b.K(l), b.V(l)
		if view {
			k, okK := kvstore.AsFloat32(kb)
			v, okV := kvstore.AsFloat32(vb)
			if okK && okV {
				kv.K[l], kv.V[l] = k[:n:n], v[:n:n]
				continue
			}
		}
		kv.K[l], kv.V[l] = make([]float32, n), make([]float32, n)
		kvstore.DecodeFloat32(kv.K[l], kb, m.DType)
		kvstore.DecodeFloat32(kv.V[l], vb, m.DType)
	}
	return Loaded{KV: kv, Size: int64(b.Size()), Release: rel}, nil
}

// PutKV stores kv under key with the check of the tokens it covers. The blob is marked position-free: K is the
// cache's pre-RoPE K, and the positions it was computed at are not needed to
// place it (the chunk convention fixes them relative to S).
func (s *Store) PutKV(ctx context.Context, key fingerprint.Key, check fingerprint.Check, kv *model.Cache) error {
	b, err := s.Blob(key, check, kv)
	if err != nil {
		return err
	}
	return s.Store.Put(ctx, b)
}

// Blob encodes kv as PutKV stores it (s.DType, position-free), for a
// caller that needs the bytes (a digest of the payload) before its Put.
func (s *Store) Blob(key fingerprint.Key, check fingerprint.Check, kv *model.Cache) (*kvstore.Blob, error) {
	dt := s.DType
	if dt == 0 {
		dt = kvstore.Float32
	}
	return kvstore.FromFloat32(kvstore.Meta{
		DType: dt, Layers: kv.Layers, KVHeads: kv.KVHeads, HeadDim: kv.HeadDim, Tokens: kv.Len(),
		PositionFree: true, Key: key, Check: check,
	}, kv.K, kv.V)
}
