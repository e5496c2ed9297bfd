// Package adapters is how the sidecar hands assembled KV to an inference
// engine. Engine is the one interface the sidecar (its consumer) needs:
// publish the KV of a prompt's prefix and get back a Lease, which rewrites
// the forwarded request so that the engine uses that KV and is released
// when the engine's response has ended. Forwarding itself is the proxy's;
// Forwarder is a helper adapters embed for their own calls to the engine.
// Implementations register themselves by name (Register) from their own
// packages:
//
//   - native (package adapters/native): this project's engine (package
//     engine), over a shared kvstore (Redis, disk...) or HTTP push
//     (PUT /v1/kv/{key}); its lease sets kv_transfer_params;
//   - llamacpp (package adapters/llamacpp): an unmodified llama-server;
//     the KV is written as a slot file and restored into a free slot, and
//     the lease pins the request to that slot until Release;
//   - passthrough (package adapters/passthrough): publishes nothing
//     (ErrNoPublish), so the sidecar degrades to plain forwarding.
//
// The semantics mirror vLLM's KV connector (KVConnectorBase_V1): the engine
// asks for the longest prefix of a request's token ids whose KV is
// available, loads it and prefills only the rest. Publish must therefore be
// complete (the blob stored or pushed, the slot restored) before the
// request is forwarded.
//
// Errors of Publish: ErrNoPublish (the engine takes no KV: forward the
// original, not a failure), ErrBusy (no capacity now: forward the original,
// not a failure), ErrMismatch (the engine runs another model, tokenizer or
// layout: a failure that lasts until the engine changes), anything else (a
// failure of this request's fusion path). An error may carry a short,
// constant reason for metrics and spans by implementing
// interface{ Reason() string } (see ReasonOf).
package adapters

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/fusionrag/fusionrag/kvstore"
	"github.com/fusionrag/fusionrag/model"
)

// Engine is an inference engine as the sidecar uses it. Implementations are
// safe for concurrent use.
type Engine interface {
	// Publish makes p.KV available to the one request the returned Lease
	// rewrites, and holds whatever that needs (a slot, a pin) until
	// Lease.Release. It returns when the engine can find the KV. Errors:
	// ErrNoPublish, ErrBusy, ErrMismatch, others (see the package comment).
	// A nil error comes with a non-nil Lease, which the caller releases
	// exactly once.
	Publish(ctx context.Context, p Publication) (Lease, error)
	// Close releases connections and stores the adapter opened.
	Close() error
}

// ReasonOf returns the reason carried by err (the first error in its chain
// that implements interface{ Reason() string }), or "" when none does.
// Adapters use it for failures worth telling apart in metrics (a restore
// refused, a slot file not written, a stale handshake); the reason should
// be a short constant of [a-z0-9_].
func ReasonOf(err error) string {
	var r interface{ Reason() string }
	if errors.As(err, &r) {
		return r.Reason()
	}
	return ""
}

// Sentinel errors.
var (
	// ErrNoPublish: the adapter cannot hand KV to its engine (passthrough).
	ErrNoPublish = errors.New("adapters: this engine does not accept published KV")
	// ErrUnknown: no adapter registered under the name.
	ErrUnknown = errors.New("adapters: unknown adapter")
	// ErrConfig: an invalid adapter configuration.
	ErrConfig = errors.New("adapters: invalid config")
	// ErrMismatch: the engine serves another model, tokenizer or KV layout
	// than the sidecar computes KV with. It describes the engine, not one
	// request, and lasts until the engine changes: the sidecar counts it
	// against its breaker, closes an adapter whose Publish reports it and
	// re-opens it (a new handshake) no sooner than 30 s later. A request the
	// engine merely tokenizes otherwise is not ErrMismatch.
	ErrMismatch = errors.New("adapters: engine model/tokenizer mismatch")
)

// Transports of the native adapter.
const (
	TransportStore = "store" // the adapter writes into a shared kvstore the engine reads
	TransportPush  = "push"  // the adapter sends PUT /v1/kv/{key} to the engine
)

// Config configures an adapter. Fill what the adapter needs; Normalize
// validates and fills defaults.
type Config struct {
	// URL is the engine's base URL, e.g. "http://127.0.0.1:8000". Required.
	URL string
	// Transport is how KV reaches the engine: TransportStore or
	// TransportPush. Default: store when Store or StoreURL is set, else push.
	Transport string
	// Store is the shared store (not closed by the adapter); StoreURL opens
	// one (kvstore.Open syntax; closed by Close). Needed by TransportStore.
	Store    kvstore.Store
	StoreURL string
	// ModelFingerprint and TokenizerFingerprint identify the model and
	// tokenizer the sidecar computed KV with (Model.Fingerprint,
	// Tokenizer.Fingerprint). Empty: taken from the engine (GET /v1/kv).
	// When set and the engine reports others, Open fails with ErrMismatch.
	ModelFingerprint, TokenizerFingerprint string
	// DType of published KV. Default kvstore.Float32 (exact); Float16 or
	// BFloat16 halve the bytes at the cost of rounding.
	DType kvstore.DType
	// Timeout bounds a request without a ctx deadline. Default 10 minutes.
	Timeout time.Duration
	// MaxConns bounds connections to the engine. Default 512.
	MaxConns int

	// Model is the sidecar's model. Adapters that must prove the engine runs
	// the same weights (llamacpp's handshake compares the KV the engine saved
	// for a probe prompt with the model's own) or that write KV in the
	// engine's layout (RoPE applied) need it.
	Model *model.Model
	// SlotDir is the directory the engine reads and writes slot files in
	// (llama-server's --slot-save-path), as the sidecar sees it (a shared
	// volume). Needed by llamacpp.
	SlotDir string
}

// Normalize fills defaults and validates.
func (c *Config) Normalize() error {
	if c.URL == "" {
		return fmt.Errorf("%w: URL of the engine is required", ErrConfig)
	}
	if c.Transport == "" {
		c.Transport = TransportPush
		if c.Store != nil || c.StoreURL != "" {
			c.Transport = TransportStore
		}
	}
	switch c.Transport {
	case TransportStore:
		if c.Store == nil && c.StoreURL == "" {
			return fmt.Errorf("%w: transport %q needs Store or StoreURL", ErrConfig, c.Transport)
		}
	case TransportPush:
	default:
		return fmt.Errorf("%w: transport %q (want %q or %q)", ErrConfig, c.Transport, TransportStore, TransportPush)
	}
	if c.DType == 0 {
		c.DType = kvstore.Float32
	}
	if c.DType.Size() == 0 {
		return fmt.Errorf("%w: dtype %d", ErrConfig, c.DType)
	}
	if c.Timeout == 0 {
		c.Timeout = 10 * time.Minute
	}
	if c.Timeout < 0 {
		return fmt.Errorf("%w: Timeout %v", ErrConfig, c.Timeout)
	}
	if c.MaxConns == 0 {
		c.MaxConns = 512
	}
	if c.MaxConns < 0 {
		return fmt.Errorf("%w: MaxConns %d", ErrConfig, c.MaxConns)
	}
	return nil
}

// Factory opens an adapter from a normalised config.
type Factory func(cfg Config) (Engine, error)

// Needs says which of Config's optional fields an adapter cannot work
// without, so that a configuration can be refused when it is read (naming
// the setting) rather than when the adapter opens. Each non-empty field is
// the reason, in the words of the engine the adapter talks to.
type Needs struct {
	// SlotDir: why Config.SlotDir is required, e.g. "llama-server's
	// --slot-save-path, as the sidecar sees it".
	SlotDir string
}

type registration struct {
	open  Factory
	needs Needs
}

var (
	regMu    sync.RWMutex
	registry = map[string]registration{}
)

// Register makes an adapter available to Open; needs (at most one) says
// what it requires of the configuration (NeedsOf). A duplicate name is a
// programming error (panic at init).
func Register(name string, f Factory, needs ...Needs) {
	regMu.Lock()
	defer regMu.Unlock()
	if _, dup := registry[name]; dup {
		panic("adapters: registered twice: " + name)
	}
	if len(needs) > 1 {
		panic("adapters: more than one Needs for " + name)
	}
	r := registration{open: f}
	if len(needs) == 1 {
		r.needs = needs[0]
	}
	registry[name] = r
}

// NeedsOf returns what the adapter registered as name requires (the zero
// Needs for an unknown name).
func NeedsOf(name string) Needs {
	regMu.RLock()
	defer regMu.RUnlock()
	return registry[name].needs
}

// Names lists the registered adapters, sorted.
func Names() []string {
	regMu.RLock()
	defer regMu.RUnlock()
	n := make([]string, 0, len(registry))
	for k := range registry {
		n = append(n, k)
	}
	sort.Strings(n)
	return n
}

// Open normalises cfg and opens the adapter registered as name.
func Open(name string, cfg Config) (Engine, error) {
	regMu.RLock()
	r, ok := registry[name]
	regMu.RUnlock()
	f := r.open
	if !ok {
		return nil, fmt.Errorf("%w %q (registered: %v; import its package)", ErrUnknown, name, Names())
	}
	if err := cfg.Normalize(); err != nil {
		return nil, err
	}
	return f(cfg)
}

// CheckKV validates that kv is the KV of the prefix tokens: same length,
// positions [0, n), and per-layer arrays of the right size.
func CheckKV(tokens []int32, kv *model.Cache) error {
	n := len(tokens)
	if kv == nil || kv.Len() != n || n == 0 {
		return fmt.Errorf("adapters: KV holds %d tokens, prefix has %d", kv.Len(), n)
	}
	for i, p := range kv.Pos {
		if p != int32(i) {
			return fmt.Errorf("adapters: KV entry %d is at position %d; publish a prefix at positions [0, %d)", i, p, n)
		}
	}
	want := n * kv.KVHeads * kv.HeadDim
	if len(kv.K) != kv.Layers || len(kv.V) != kv.Layers {
		return fmt.Errorf("adapters: KV has %d/%d layers, want %d", len(kv.K), len(kv.V), kv.Layers)
	}
	for l := range kv.Layers {
		if len(kv.K[l]) != want || len(kv.V[l]) != want {
			return fmt.Errorf("adapters: KV layer %d has %d/%d values, want %d", l, len(kv.K[l]), len(kv.V[l]), want)
		}
	}
	if slices.ContainsFunc(tokens, func(t int32) bool { return t < 0 }) {
		return fmt.Errorf("adapters: negative token id")
	}
	return nil
}
