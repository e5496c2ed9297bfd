package recompute

import (
	"context"
	"errors"
	"fmt"

	"github.com/fusionrag/fusionrag/fingerprint"
	"github.com/fusionrag/fusionrag/kvstore"
	"github.com/fusionrag/fusionrag/model"
)

// StoreSource is the KVSource over a kvstore.Store: KV is stored as
// position-free blobs (K before RoPE) in DType. fp32 blobs are read without
// copying (the cache views the blob's payload until the job releases it);
// fp16/bf16 blobs are widened into a new fp32 cache.
type StoreSource struct {
	// Store holds the blobs. Required.
	Store kvstore.Store
	// DType is the element type written by PutKV; zero means kvstore.Float32.
	DType kvstore.DType
}

var _ KVSource = (*StoreSource)(nil)

// GetKV implements KVSource.
func (s *StoreSource) GetKV(ctx context.Context, key fingerprint.Key, check fingerprint.Check) (Loaded, error) {
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

// PutKV implements KVSource. The blob is marked position-free: K is the
// cache's pre-RoPE K, and the positions it was computed at are not needed to
// place it (the chunk convention fixes them relative to S).
func (s *StoreSource) PutKV(ctx context.Context, key fingerprint.Key, check fingerprint.Check, kv *model.Cache) error {
	dt := s.DType
	if dt == 0 {
		dt = kvstore.Float32
	}
	b, err := kvstore.FromFloat32(kvstore.Meta{
		DType: dt, Layers: kv.Layers, KVHeads: kv.KVHeads, HeadDim: kv.HeadDim, Tokens: kv.Len(),
		PositionFree: true, Key: key, Check: check,
	}, kv.K, kv.V)
	if err != nil {
		return err
	}
	return s.Store.Put(ctx, b)
}
