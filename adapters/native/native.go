// Package native is the adapter for this project's engine (package engine):
// it publishes KV as kvstore blobs under the engine's prefix keys, either
// into a store the engine shares (transport "store") or with
// PUT /v1/kv/{key} (transport "push"), and its lease marks the forwarded
// request with kv_transfer_params so the engine's connector looks them up. Importing
// the package registers it as "native".
package native

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"

	"github.com/fusionrag/fusionrag/adapters"
	"github.com/fusionrag/fusionrag/engine"
	"github.com/fusionrag/fusionrag/fingerprint"
	"github.com/fusionrag/fusionrag/kvstore"
	"github.com/valyala/fasthttp"
)

// Name is the registered adapter name.
const Name = "native"

func init() {
	adapters.Register(Name, func(cfg adapters.Config) (adapters.Engine, error) { return Open(cfg) })
}

// Adapter is the native adapter.
type Adapter struct {
	*adapters.Forwarder
	cfg       adapters.Config
	store     kvstore.Store
	ownsStore bool
	info      engine.KVInfo
}

// Open connects to the engine at cfg.URL, reads its KV parameters
// (GET /v1/kv) and checks them against cfg's fingerprints.
func Open(cfg adapters.Config) (*Adapter, error) {
	if err := cfg.Normalize(); err != nil {
		return nil, err
	}
	fw, err := adapters.NewForwarder(cfg)
	if err != nil {
		return nil, err
	}
	a := &Adapter{Forwarder: fw, cfg: cfg}
	ctx, cancel := context.WithTimeout(context.Background(), min(cfg.Timeout, 30e9))
	defer cancel()
	code, body, err := fw.Do(ctx, fasthttp.MethodGet, "/v1/kv", "", nil)
	if err != nil {
		return nil, fmt.Errorf("native: engine KV info: %w", err)
	}
	if code != http.StatusOK {
		return nil, fmt.Errorf("native: GET /v1/kv: %d %s (is the engine's KV connector configured?)", code, body)
	}
	if err := json.Unmarshal(body, &a.info); err != nil {
		return nil, fmt.Errorf("native: GET /v1/kv: %w", err)
	}
	if cfg.ModelFingerprint != "" && cfg.ModelFingerprint != a.info.Model ||
		cfg.TokenizerFingerprint != "" && cfg.TokenizerFingerprint != a.info.Tokenizer {
		return nil, fmt.Errorf("%w: sidecar model %s tokenizer %s, engine model %s tokenizer %s", adapters.ErrMismatch,
			cfg.ModelFingerprint, cfg.TokenizerFingerprint, a.info.Model, a.info.Tokenizer)
	}
	if a.info.BlockSize != fingerprint.BlockSize {
		return nil, fmt.Errorf("%w: engine block size %d, adapter %d", adapters.ErrMismatch, a.info.BlockSize, fingerprint.BlockSize)
	}
	switch cfg.Transport {
	case adapters.TransportPush:
		if !a.info.Push {
			return nil, fmt.Errorf("%w: the engine accepts no pushed KV", adapters.ErrConfig)
		}
	case adapters.TransportStore:
		if !a.info.Shared {
			return nil, fmt.Errorf("%w: the engine reads no shared store", adapters.ErrConfig)
		}
		a.store = cfg.Store
		if a.store == nil {
			if a.store, err = kvstore.Open(cfg.StoreURL); err != nil {
				return nil, fmt.Errorf("native: %w", err)
			}
			a.ownsStore = true
		}
	}
	return a, nil
}

// Info is the engine's KV parameters as read at Open.
func (a *Adapter) Info() engine.KVInfo { return a.info }

// Key is the key the engine finds the KV of the prefix tokens under, for
// requests prepared with namespace ns.
func (a *Adapter) Key(ns string, tokens []int32) (fingerprint.Key, error) {
	return fingerprint.PrefixKey(fingerprint.KVNamespace(a.info.Model, a.info.Tokenizer, ns), tokens, len(tokens), fingerprint.BlockSize)
}

// Publish implements adapters.Engine: the KV goes into the shared store or
// is pushed under the engine's key of the prefix p.Prompt[:p.KV.Len()), and
// the lease sets kv_transfer_params {"namespace": p.Namespace}, through
// which the engine's connector finds it (longest-prefix lookup). Nothing is
// held for the request: Release is a no-op, and the store's eviction
// bounds what stays published.
func (a *Adapter) Publish(ctx context.Context, p adapters.Publication) (adapters.Lease, error) {
	ns := p.Namespace
	if !fingerprint.ValidKVNamespace(ns) {
		return nil, fmt.Errorf("native: namespace %q must be 1-128 hex digits", ns)
	}
	if err := adapters.CheckPublication(p); err != nil {
		return nil, err
	}
	kv := p.KV
	tokens := p.Prompt[:kv.Len()]
	if kv.Layers != a.info.Layers || kv.KVHeads != a.info.KVHeads || kv.HeadDim != a.info.HeadDim {
		return nil, fmt.Errorf("%w: KV shape %dx%dx%d, engine %dx%dx%d", adapters.ErrMismatch,
			kv.Layers, kv.KVHeads, kv.HeadDim, a.info.Layers, a.info.KVHeads, a.info.HeadDim)
	}
	key, err := a.Key(ns, tokens)
	if err != nil {
		return nil, err
	}
	b, err := kvstore.FromFloat32(kvstore.Meta{DType: a.cfg.DType, Layers: kv.Layers, KVHeads: kv.KVHeads,
		HeadDim: kv.HeadDim, Tokens: len(tokens), PositionFree: true, Key: key,
		Check: fingerprint.CheckOf(tokens)}, kv.K, kv.V)
	if err != nil {
		return nil, fmt.Errorf("native: %w", err)
	}
	if a.cfg.Transport == adapters.TransportStore {
		if err := a.store.Put(ctx, b); err != nil {
			return nil, fmt.Errorf("native: publish to store: %w", err)
		}
		return adapters.KVParamsLease{Namespace: ns}, nil
	}
	raw, err := b.Encode()
	if err != nil {
		return nil, fmt.Errorf("native: %w", err)
	}
	code, body, err := a.Do(ctx, fasthttp.MethodPut, "/v1/kv/"+key.String(), "application/octet-stream", raw)
	if err != nil {
		return nil, fmt.Errorf("native: push: %w", err)
	}
	if code != http.StatusNoContent && code != http.StatusOK {
		return nil, fmt.Errorf("native: push: engine answered %d: %s", code, body)
	}
	return adapters.KVParamsLease{Namespace: ns}, nil
}

// Close implements adapters.Engine.
func (a *Adapter) Close() error {
	a.Forwarder.Close()
	if a.ownsStore {
		return a.store.Close()
	}
	return nil
}
