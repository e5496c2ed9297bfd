package proxy

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/fusionrag/fusionrag/adapters"
	"github.com/fusionrag/fusionrag/internal/jsonobj"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
)

// Fuser is the fusion path as the proxy consumes it: given an eligible
// request, segment it on token ids, look its chunks up, recompute, and publish
// the assembled KV to the engine (through an adapter), then hand back the
// lease that points the forwarded request at it.
//
// Fuse runs under the fusion deadline (Timeouts.Fusion) and must honour ctx.
// Any error, a panic or the deadline makes the proxy forward the original
// request untouched; an error wrapping ErrSkip says the request is simply not
// worth fusing (no chunks, too many missing) and is not a failure; a
// *FallbackError names its reason. A plan returned along with an error is
// released and not used. A Fuser must be safe for concurrent use.
type Fuser interface {
	Fuse(ctx context.Context, req *Request) (*Plan, error)
}

// FuserFunc adapts a function to Fuser.
type FuserFunc func(ctx context.Context, req *Request) (*Plan, error)

// Fuse calls f.
func (f FuserFunc) Fuse(ctx context.Context, req *Request) (*Plan, error) { return f(ctx, req) }

// Plan is the outcome of a successful Fuse.
type Plan struct {
	// Lease is the published KV, held for the forwarded request: the proxy
	// passes the body it forwards through Lease.Rewrite (which points the
	// engine at the KV: kv_transfer_params, a pinned slot) and calls
	// Lease.Release exactly once, when the engine's response has ended
	// (streamed or not, the client gone or not), when the fused request
	// fails and the original is sent instead, when the plan comes after the
	// fusion deadline, or when Rewrite fails. Required.
	Lease adapters.Lease

	// Body, when set, replaces the request body (markers stripped from the
	// prompt, say). It must be a JSON object the engine turns into exactly
	// the token ids the KV was published for. The original body is still
	// what a fallback forwards. Before Rewrite, the proxy removes from it
	// (or from the original) what only the sidecar may set (see
	// LeaseBody); a Fuser that publishes the body an adapter will see
	// passes it through LeaseBody itself, so that Rewrite receives exactly
	// the published bytes.
	Body []byte

	// Stats describe the work done; they become span attributes and metrics.
	Stats Stats
}

// release releases the plan's lease, if any.
func (p *Plan) release() {
	if p != nil && p.Lease != nil {
		p.Lease.Release()
	}
}

// Stats are the figures of one fusion.
type Stats struct {
	Strategy         string
	Ratio            float64
	Chunks           int   // chunks recognised in the prompt
	Hits             int   // found in the store
	Misses           int   // not found in the store (computed and stored on the spot when fused)
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
		attribute.Float64(AttrHitRate, s.HitRate()),
	}
}

// HitRate is Hits over Hits+Misses, 0 when nothing was looked up.
func (s Stats) HitRate() float64 {
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
// proxy's tracer provider. End it with span.End(). StartSpan takes span
// options instead (a start time, say).
func StartPhase(ctx context.Context, name string, attrs ...attribute.KeyValue) (context.Context, trace.Span) {
	return StartSpan(ctx, name, trace.WithAttributes(attrs...))
}

// StartSpan is StartPhase with span options: a Fuser that times a phase
// after the fact passes trace.WithTimestamp.
func StartSpan(ctx context.Context, name string, opts ...trace.SpanStartOption) (context.Context, trace.Span) {
	tp := trace.SpanFromContext(ctx).TracerProvider()
	return tp.Tracer(instrumentationName).Start(ctx, name, opts...)
}

// SpanError records err on span as an exception event and sets the span's
// status to Error with err's text: an exception event on a span whose
// status stays Unset is easy to miss in a trace viewer.
func SpanError(span trace.Span, err error) {
	if err == nil || !span.IsRecording() {
		return
	}
	span.RecordError(err)
	span.SetStatus(codes.Error, err.Error())
}

// ErrSkip says the fusion path declines a request; it is passed through and
// not counted as a failure. Wrap it with a low-cardinality reason via Skip.
var ErrSkip = errors.New("proxy: fusion skipped")

// SkipError is ErrSkip with its reason (a constant such as "no_chunks",
// "too_many_missing"), which becomes a metric label, and what the Fuser knew
// of the request's chunks when it declined (nil: nothing, e.g. before
// segmentation), which the proxy counts as hits and misses like a fused
// request's: a request skipped because its chunks are not in the store is
// the very miss the hit ratio must show.
type SkipError struct {
	Reason string
	Stats  *Stats
}

func (e *SkipError) Error() string { return "proxy: fusion skipped: " + e.Reason }

// Is makes errors.Is(err, ErrSkip) true.
func (e *SkipError) Is(target error) bool { return target == ErrSkip }

// Skip returns a *SkipError with the reason.
func Skip(reason string) error { return &SkipError{Reason: reason} }

// SkipWith returns a *SkipError with the reason and the chunks' stats.
func SkipWith(reason string, s Stats) error { return &SkipError{Reason: reason, Stats: &s} }

// PanicError is a panic recovered from a Fuser.
type PanicError struct{ Value any }

func (e *PanicError) Error() string { return fmt.Sprintf("proxy: fuser panicked: %v", e.Value) }

// FallbackError is a failure of the fusion path with its reason (a short
// constant, e.g. "engine_mismatch", "restore_refused"), which becomes the
// fallback's metric label and span attribute instead of "fuser_error". It
// counts against the breaker like any failure. Stats, when set, are what the
// Fuser knew of the chunks (counted as hits and misses, as for SkipError).
type FallbackError struct {
	Reason string
	Err    error
	Stats  *Stats
}

func (e *FallbackError) Error() string { return e.Err.Error() }
func (e *FallbackError) Unwrap() error { return e.Err }

// Fallback returns err as a *FallbackError with reason.
func Fallback(reason string, err error) error { return &FallbackError{Reason: reason, Err: err} }

// statsOf returns the stats a Fuser's error carries (*SkipError or
// *FallbackError), or nil.
func statsOf(err error) *Stats {
	var se *SkipError
	var fe *FallbackError
	switch {
	case errors.As(err, &se):
		return se.Stats
	case errors.As(err, &fe):
		return fe.Stats
	}
	return nil
}

// applyPlan returns body as the engine receives it on the fused path: the
// members only the sidecar may set removed (LeaseBody), then rewritten by
// the plan's lease.
func applyPlan(body []byte, p *Plan) ([]byte, error) {
	if p == nil || p.Lease == nil {
		return nil, errors.New("proxy: plan without a lease")
	}
	body, err := LeaseBody(body)
	if err != nil {
		return nil, err
	}
	out, err := p.Lease.Rewrite(body)
	if err != nil {
		return nil, fmt.Errorf("proxy: rewriting the fused request: %w", err)
	}
	return out, nil
}

// LeaseBody returns the body a lease rewrites on the fused path: body
// without any member an engine would read as kv_transfer_params (isKVParams:
// only the sidecar says where the engine finds KV) or as llama-server's
// id_slot (isSlotParam: the lease pins its own slot; a client's would run
// the request in another slot than the one holding its KV), every other
// byte unchanged. It is idempotent: a body without such members is returned
// as is.
func LeaseBody(body []byte) ([]byte, error) {
	out, _, err := jsonobj.RemoveFunc(body, func(k string) bool { return isKVParams(k) || isSlotParam(k) })
	return out, err
}

// isSlotParam reports whether an object member named key would be read as
// llama-server's id_slot: nlohmann::json matches exactly; any case (as
// encoding/json would) is removed too, at no cost.
func isSlotParam(key string) bool { return strings.EqualFold(key, "id_slot") }

// Fallback reasons of the publish step.
const (
	// ReasonEngineMismatch: the engine runs another model, tokenizer or KV
	// layout than the sidecar (adapters.ErrMismatch), at open or publish.
	// It lasts until the engine changes, so it counts against the breaker:
	// after breaker.consecutive_failures of them the fusion path is off, and
	// only breaker.half_open_requests trials per breaker.open_timeout pay a
	// recompute that cannot be used. An adapter that fails to open with it
	// is not re-opened for mismatchReopen.
	ReasonEngineMismatch = "engine_mismatch"
	// ReasonAdapterError: an adapter failure that carries no reason (or one
	// past the bounded set, see AdapterReason).
	ReasonAdapterError = "adapter_error"
	// ReasonAdapterOpen: the adapter could not be opened (engine down, slot
	// directory missing, handshake refused).
	ReasonAdapterOpen = "adapter_open"
)

// maxAdapterReasons bounds the distinct reasons adapters may add to the
// fallback metric's labels, per process.
const maxAdapterReasons = 16

var (
	adapterReasonsMu sync.Mutex
	adapterReasons   = map[string]bool{}
)

// AdapterReason returns the reason err carries (adapters.ReasonOf) when it
// is well formed (1-32 bytes of [a-z0-9_]) and among the first
// maxAdapterReasons distinct ones this process has seen; otherwise def.
// Adapters report constants, so the set is their handful of reasons; the
// bound only keeps a misbehaving adapter from growing the metric's labels.
func AdapterReason(err error, def string) string {
	r := adapters.ReasonOf(err)
	if r == "" || len(r) > 32 || strings.TrimLeft(r, "abcdefghijklmnopqrstuvwxyz0123456789_") != "" {
		return def
	}
	adapterReasonsMu.Lock()
	defer adapterReasonsMu.Unlock()
	if !adapterReasons[r] {
		if len(adapterReasons) >= maxAdapterReasons {
			return def
		}
		adapterReasons[r] = true
	}
	return r
}

// Skip reasons of the fusion path (metric labels).
const (
	SkipNoChunks        = "no_chunks"
	SkipTooManyChunks   = "too_many_chunks"
	SkipTooManyMissing  = "too_many_missing"
	SkipEngineRejects   = "engine_rejects"
	SkipBadMarkers      = "bad_markers"
	SkipTemplateSpans   = "template_spans"
	SkipPromptTooLong   = "prompt_too_long"
	SkipNoPublish       = "no_publish"
	SkipEngineBusy      = "engine_busy" // adapters.ErrBusy: every slot leased; not a failure
	AttrSkipReason      = "fusionrag.skip_reason"
	AttrAdapterReason   = "fusionrag.adapter_reason"
	AttrInexactChunks   = "fusionrag.inexact_chunks"
	AttrSegmentation    = "fusionrag.segmentation"
	AttrPrefixTokens    = "fusionrag.prefix_tokens"
	AttrQuestionTokens  = "fusionrag.question_tokens"
	AttrLoadSeconds     = "fusionrag.load_seconds"
	AttrComputeSeconds  = "fusionrag.compute_seconds"
	AttrSelectSeconds   = "fusionrag.select_seconds"
	AttrRecomputeSecond = "fusionrag.recompute_seconds"
)

// SkipOverBudget is the skip reason of a request whose fusion-path memory
// estimate does not fit in what limits.fusion_memory has left: it is
// forwarded untouched, and is not a failure (issue 18 finding 2: memory
// amplification was bounded by a count of runs, not by bytes).
const SkipOverBudget = "over_budget"
