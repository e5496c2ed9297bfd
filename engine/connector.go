package engine

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"github.com/fusionrag/fusionrag/fingerprint"
	"github.com/fusionrag/fusionrag/kvstore"
)

// The KV transfer protocol between a sidecar and this engine.
//
// A request that may use published KV carries
// "kv_transfer_params": {"namespace": "<hex>"}. The engine combines that
// value with its model and tokenizer fingerprints into a
// fingerprint.Namespace (fingerprint.KVNamespace) and probes the keys of
// fingerprint.Lookup over the request's token ids with block size
// fingerprint.BlockSize: exact prefixes of length L and L-1, then block
// boundaries descending. The first probe whose blob verifies (checksums,
// key, token count and second hash, shape) is loaded; the last prompt token
// is always prefilled, so a hit of length L loads only [0, L-1). A
// publisher stores the KV of the prefix [0, n) of the ids under
// fingerprint.PrefixKey(fingerprint.KVNamespace(...), ids, n,
// fingerprint.BlockSize), as a kvstore blob that is position-free (K before
// RoPE) and whose Check is fingerprint.CheckOf(ids[:n]), either in the
// shared store or with PUT /v1/kv/{key} (body: the encoded blob).

// kvSequence is a Sequence that can take KV computed elsewhere.
type kvSequence interface {
	Sequence
	// LoadKV appends per-layer K (before RoPE) and V, each
	// [tokens, kvHeads, headDim], at positions [Len(), Len()+tokens). It
	// must copy: k and v may be views of store memory released afterwards.
	LoadKV(k, v [][]float32, tokens int) error
}

// KVInfo is what a publisher must match: the engine's fingerprints, KV shape
// and key parameters (GET /v1/kv).
type KVInfo struct {
	Model     string `json:"model_fingerprint"`
	Tokenizer string `json:"tokenizer_fingerprint"`
	Layers    int    `json:"layers"`
	KVHeads   int    `json:"kv_heads"`
	HeadDim   int    `json:"head_dim"`
	BlockSize int    `json:"block_size"`
	Push      bool   `json:"push"`   // PUT /v1/kv/{key} accepted
	Shared    bool   `json:"shared"` // a shared store is configured
}

// ConnectorConfig configures NewConnector.
type ConnectorConfig struct {
	// Model and Tokenizer are the fingerprints of what the engine serves.
	Model, Tokenizer string
	// Layers, KVHeads, HeadDim is the model's KV shape; blobs of another
	// shape are misses.
	Layers, KVHeads, HeadDim int
	// Shared is the store a sidecar publishes into (nil: none).
	Shared kvstore.Store
	// Pushed receives blobs pushed over HTTP (nil: pushing is refused).
	Pushed kvstore.Store
}

// Connector is the engine's KV connector: it finds, verifies and loads
// published KV for a request's prompt. It owns (closes) its stores.
type Connector struct {
	cfg ConnectorConfig
	met *metrics
}

// NewConnector validates cfg and returns a connector.
func NewConnector(cfg ConnectorConfig) (*Connector, error) {
	if cfg.Model == "" || cfg.Tokenizer == "" {
		return nil, fmt.Errorf("%w: connector needs model and tokenizer fingerprints", ErrConfig)
	}
	if cfg.Layers < 1 || cfg.KVHeads < 1 || cfg.HeadDim < 1 {
		return nil, fmt.Errorf("%w: connector KV shape %dx%dx%d", ErrConfig, cfg.Layers, cfg.KVHeads, cfg.HeadDim)
	}
	if cfg.Shared == nil && cfg.Pushed == nil {
		return nil, fmt.Errorf("%w: connector needs a shared or a push store", ErrConfig)
	}
	return &Connector{cfg: cfg, met: newMetrics(nil)}, nil
}

// OpenConnector opens the stores by URL (kvstore.Open syntax; an empty URL
// means none) for lm, which must report its fingerprint and KV shape.
func OpenConnector(sharedURL, pushURL string, lm *ModelLM, tokenizerFP string) (*Connector, error) {
	l, h, d := lm.KVShape()
	cfg := ConnectorConfig{Model: lm.Fingerprint(), Tokenizer: tokenizerFP, Layers: l, KVHeads: h, HeadDim: d}
	var err error
	if sharedURL != "" {
		if cfg.Shared, err = kvstore.Open(sharedURL); err != nil {
			return nil, fmt.Errorf("engine: shared KV store: %w", err)
		}
	}
	if pushURL != "" {
		if cfg.Pushed, err = kvstore.Open(pushURL); err != nil {
			if cfg.Shared != nil {
				cfg.Shared.Close()
			}
			return nil, fmt.Errorf("engine: push KV store: %w", err)
		}
	}
	c, err := NewConnector(cfg)
	if err != nil {
		for _, s := range []kvstore.Store{cfg.Shared, cfg.Pushed} {
			if s != nil {
				s.Close()
			}
		}
		return nil, err
	}
	return c, nil
}

// Info describes what publishers must match.
func (c *Connector) Info() KVInfo {
	return KVInfo{Model: c.cfg.Model, Tokenizer: c.cfg.Tokenizer, Layers: c.cfg.Layers, KVHeads: c.cfg.KVHeads,
		HeadDim: c.cfg.HeadDim, BlockSize: fingerprint.BlockSize, Push: c.cfg.Pushed != nil, Shared: c.cfg.Shared != nil}
}

// Close closes the stores.
func (c *Connector) Close() error {
	var errs []error
	for _, s := range []kvstore.Store{c.cfg.Pushed, c.cfg.Shared} {
		if s != nil {
			errs = append(errs, s.Close())
		}
	}
	return errors.Join(errs...)
}

// Load implements kvLoader: the longest verified published prefix of prompt
// under ns (leaving at least the last token), loaded into s. Any failure is
// a miss.
func (c *Connector) Load(ctx context.Context, ns string, prompt []int32, s Sequence) int {
	ks, ok := s.(kvSequence)
	if !ok || s.Len() != 0 || len(prompt) < 2 {
		return 0
	}
	probes, err := fingerprint.Lookup(fingerprint.KVNamespace(c.cfg.Model, c.cfg.Tokenizer, ns), prompt, fingerprint.BlockSize)
	if err != nil {
		c.met.lookup("error")
		return 0
	}
	// A store that fails (down, stalled: an error, not a miss) is not
	// asked again in this lookup, so a dead store costs one timeout, not
	// one per probe.
	stores := []kvstore.Store{c.cfg.Pushed, c.cfg.Shared}
	for _, p := range probes {
		use := min(p.Len, len(prompt)-1)
		if use < 1 {
			continue
		}
		for i, st := range stores {
			if st == nil {
				continue
			}
			n, failed := c.tryLoad(ctx, st, p, use, ks)
			if n > 0 {
				c.met.lookup("hit")
				return n
			}
			if ctx.Err() != nil {
				return 0
			}
			if failed {
				stores[i] = nil
			}
		}
	}
	c.met.lookup("miss")
	return 0
}

// tryLoad loads the first use tokens of the blob under p.Key from st. It
// returns the tokens loaded (0 on any miss) and whether the store failed
// (an error other than a miss).
func (c *Connector) tryLoad(ctx context.Context, st kvstore.Store, p fingerprint.Probe, use int, s kvSequence) (int, bool) {
	b, err := st.Get(ctx, p.Key, p.Check)
	if err != nil {
		var ce *kvstore.CorruptError
		switch {
		case errors.As(err, &ce), errors.Is(err, kvstore.ErrCollision):
			c.met.lookup("mismatch")
		case errors.Is(err, kvstore.ErrNotFound):
		default:
			c.met.lookup("error")
			return 0, true
		}
		return 0, false
	}
	defer b.Release()
	if b.Layers != c.cfg.Layers || b.KVHeads != c.cfg.KVHeads || b.HeadDim != c.cfg.HeadDim ||
		b.Tokens != p.Len || !b.PositionFree {
		c.met.lookup("mismatch")
		return 0, false
	}
	k, v := prefixKV(b, use*c.cfg.KVHeads*c.cfg.HeadDim)
	if err := s.LoadKV(k, v, use); err != nil {
		c.met.lookup("error")
		return 0, false
	}
	return use, false
}

// prefixKV returns the first n values of every layer's K and V as float32:
// views of the blob's payload for fp32 blobs (no copy; valid until the blob
// is released), converted copies otherwise.
func prefixKV(b *kvstore.Blob, n int) (k, v [][]float32) {
	k, v = make([][]float32, b.Layers), make([][]float32, b.Layers)
	es := b.DType.Size()
	for l := range b.Layers {
		kb, vb := b.K(l)[:n*es], b.V(l)[:n*es]
		if b.DType == kvstore.Float32 {
			kf, ok1 := kvstore.AsFloat32(kb)
			vf, ok2 := kvstore.AsFloat32(vb)
			if ok1 && ok2 {
				k[l], v[l] = kf, vf
				continue
			}
		}
		k[l], v[l] = make([]float32, n), make([]float32, n)
		kvstore.DecodeFloat32(k[l], kb, b.DType)
		kvstore.DecodeFloat32(v[l], vb, b.DType)
	}
	return k, v
}

// Push verifies and stores a blob pushed for key.
func (c *Connector) Push(ctx context.Context, key string, body []byte) error {
	if c.cfg.Pushed == nil {
		return fmt.Errorf("%w: this engine accepts no pushed KV", ErrNotFound)
	}
	k, err := fingerprint.ParseKey(key)
	if err != nil {
		return badParam("key", "KV key: %v", err)
	}
	b, err := kvstore.Decode(body)
	if err != nil {
		return fmt.Errorf("%w: KV blob: %v", ErrBadRequest, err)
	}
	if b.Key != k {
		return fmt.Errorf("%w: KV blob holds key %s, pushed as %s", ErrBadRequest, b.Key, k)
	}
	if b.Layers != c.cfg.Layers || b.KVHeads != c.cfg.KVHeads || b.HeadDim != c.cfg.HeadDim {
		return fmt.Errorf("%w: KV blob shape %dx%dx%d, model needs %dx%dx%d", ErrBadRequest,
			b.Layers, b.KVHeads, b.HeadDim, c.cfg.Layers, c.cfg.KVHeads, c.cfg.HeadDim)
	}
	if !b.PositionFree {
		return fmt.Errorf("%w: KV blob must be position-free (K before RoPE)", ErrBadRequest)
	}
	if int(b.Check.Tokens) != b.Tokens {
		return fmt.Errorf("%w: KV blob check covers %d tokens, blob holds %d", ErrBadRequest, b.Check.Tokens, b.Tokens)
	}
	if err := c.cfg.Pushed.Put(ctx, b); err != nil {
		return fmt.Errorf("engine: storing pushed KV: %w", err)
	}
	c.met.kvPushes.Add(1)
	return nil
}

func (e *Engine) handlePutKV(w http.ResponseWriter, r *http.Request, key string) {
	if e.conn == nil {
		writeError(w, fmt.Errorf("%w: this engine has no KV connector", ErrNotFound))
		return
	}
	body, err := readBody(r, e.cfg.MaxKVBytes)
	if err != nil {
		writeError(w, err)
		return
	}
	if err := e.conn.Push(r.Context(), key, body); err != nil {
		writeError(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (e *Engine) handleKVInfo(w http.ResponseWriter) {
	if e.conn == nil {
		writeError(w, fmt.Errorf("%w: this engine has no KV connector", ErrNotFound))
		return
	}
	writeJSON(w, http.StatusOK, e.conn.Info())
}
