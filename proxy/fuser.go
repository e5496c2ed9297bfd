package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
)

// Fuser is the fusion path as the proxy consumes it: given an eligible
// request, segment it on token ids, look its chunks up, recompute, and publish
// the assembled KV to the engine (through an adapter), then say how the
// forwarded request must point the engine at it.
//
// Fuse runs under the fusion deadline (Timeouts.Fusion) and must honour ctx.
// Any error, a panic or the deadline makes the proxy forward the original
// request untouched; an error wrapping ErrSkip says the request is simply not
// worth fusing (no chunks, too many missing) and is not a failure. A Fuser
// must be safe for concurrent use.
type Fuser interface {
	Fuse(ctx context.Context, req *Request) (*Plan, error)
}

// FuserFunc adapts a function to Fuser.
type FuserFunc func(ctx context.Context, req *Request) (*Plan, error)

// Fuse calls f.
func (f FuserFunc) Fuse(ctx context.Context, req *Request) (*Plan, error) { return f(ctx, req) }

// Plan is the outcome of a successful Fuse.
type Plan struct {
	// KVTransferParams are the forwarded body's "kv_transfer_params" object
	// (any the client sent is dropped, never merged); the engine uses them
	// to find the published KV, e.g. {"namespace": "<hex>"}. Must not be
	// empty.
	KVTransferParams map[string]any

	// Body, when set, replaces the request body before the
	// kv_transfer_params are merged (markers stripped from the prompt, say).
	// It must be a JSON object the engine turns into exactly the token ids
	// the KV was published for. The original body is still what a fallback
	// forwards.
	Body []byte

	// Stats describe the work done; they become span attributes and metrics.
	Stats Stats

	// Release, when set, is called once when the engine's response has ended
	// (or failed), e.g. to unpin the published KV.
	Release func()
}

// Stats are the figures of one fusion.
type Stats struct {
	Strategy         string
	Ratio            float64
	Chunks           int   // chunks recognised in the prompt
	Hits             int   // found in the store
	Misses           int   // computed (and stored) on the spot
	RecomputedTokens int   // tokens recomputed by the strategy
	ContextTokens    int   // tokens of S + chunks
	BytesLoaded      int64 // KV bytes read from the store
}

// Attributes returns the stats as span attributes.
func (s Stats) Attributes() []attribute.KeyValue {
	return []attribute.KeyValue{
		attribute.String(AttrStrategy, s.Strategy),
		attribute.Float64(AttrRatio, s.Ratio),
		attribute.Int(AttrChunks, s.Chunks),
		attribute.Int(AttrHits, s.Hits),
		attribute.Int(AttrMisses, s.Misses),
		attribute.Int(AttrRecomputedTokens, s.RecomputedTokens),
		attribute.Int(AttrContextTokens, s.ContextTokens),
		attribute.Int64(AttrBytesLoaded, s.BytesLoaded),
		attribute.Float64(AttrHitRate, s.hitRate()),
	}
}

func (s Stats) hitRate() float64 {
	if s.Hits+s.Misses == 0 {
		return 0
	}
	return float64(s.Hits) / float64(s.Hits+s.Misses)
}

// Span attribute keys.
const (
	AttrStrategy         = "fusionrag.strategy"
	AttrRatio            = "fusionrag.ratio"
	AttrChunks           = "fusionrag.chunks"
	AttrHits             = "fusionrag.hits"
	AttrMisses           = "fusionrag.misses"
	AttrHitRate          = "fusionrag.hit_rate"
	AttrRecomputedTokens = "fusionrag.recomputed_tokens"
	AttrContextTokens    = "fusionrag.context_tokens"
	AttrBytesLoaded      = "fusionrag.bytes_loaded"
	AttrPath             = "fusionrag.path"
	AttrFallbackReason   = "fusionrag.fallback_reason"
	AttrRoute            = "fusionrag.route"
	AttrTenantSource     = "fusionrag.tenant_source"
)

// Span names of the phases. The proxy opens SpanRequest and SpanForward; a
// Fuser opens the fusion.* phases with StartPhase.
const (
	SpanRequest   = "proxy.request"
	SpanForward   = "proxy.forward"
	SpanSegment   = "fusion.segment"
	SpanLookup    = "fusion.lookup"
	SpanRecompute = "fusion.recompute"
	SpanPublish   = "fusion.publish"
)

// StartPhase starts a child span of the request span in ctx, with the
// proxy's tracer provider. End it with span.End().
func StartPhase(ctx context.Context, name string, attrs ...attribute.KeyValue) (context.Context, trace.Span) {
	tp := trace.SpanFromContext(ctx).TracerProvider()
	return tp.Tracer(instrumentationName).Start(ctx, name, trace.WithAttributes(attrs...))
}

// ErrSkip says the fusion path declines a request; it is passed through and
// not counted as a failure. Wrap it with a low-cardinality reason via Skip.
var ErrSkip = errors.New("proxy: fusion skipped")

// SkipError is ErrSkip with its reason (a constant such as "no_chunks",
// "too_many_missing"), which becomes a metric label.
type SkipError struct{ Reason string }

func (e *SkipError) Error() string { return "proxy: fusion skipped: " + e.Reason }

// Is makes errors.Is(err, ErrSkip) true.
func (e *SkipError) Is(target error) bool { return target == ErrSkip }

// Skip returns a *SkipError with the reason.
func Skip(reason string) error { return &SkipError{Reason: reason} }

// PanicError is a panic recovered from a Fuser.
type PanicError struct{ Value any }

func (e *PanicError) Error() string { return fmt.Sprintf("proxy: fuser panicked: %v", e.Value) }

// applyPlan returns body with the plan's kv_transfer_params as its
// top-level "kv_transfer_params" object, every other byte unchanged. Any
// member an engine would read as kv_transfer_params (isKVParams) is removed
// first: only the sidecar says where the engine finds KV.
func applyPlan(body []byte, p *Plan) ([]byte, error) {
	if p == nil || len(p.KVTransferParams) == 0 {
		return nil, errors.New("proxy: plan without kv_transfer_params")
	}
	body, _, err := removeMembers(body, isKVParams)
	if err != nil {
		return nil, err
	}
	params := map[string]json.RawMessage{}
	for k, v := range p.KVTransferParams {
		b, err := json.Marshal(v)
		if err != nil {
			return nil, fmt.Errorf("proxy: kv_transfer_params[%q]: %w", k, err)
		}
		params[k] = b
	}
	raw, err := json.Marshal(params)
	if err != nil {
		return nil, err
	}
	return appendMember(body, "kv_transfer_params", raw)
}
