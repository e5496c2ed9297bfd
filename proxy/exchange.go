package proxy

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
)

// Paths an exchange takes; they label metrics and spans.
const (
	PathFusion      = "fusion"      // the engine got the fused request
	PathPassthrough = "passthrough" // not eligible: forwarded as is
	PathFallback    = "fallback"    // eligible, the fusion path failed: original forwarded
	PathRejected    = "rejected"    // answered by the sidecar (413, 400)

	pathDocuments = "documents" // the ingest routes (not an eligible route's path)
)

// Fallback reasons (metric label values).
const (
	ReasonBreakerOpen   = "breaker_open"
	ReasonFuserError    = "fuser_error"
	ReasonFuserTimeout  = "fuser_timeout"
	ReasonFuserPanic    = "fuser_panic"
	ReasonBadPlan       = "bad_plan"
	ReasonUpstreamError = "upstream_error"
	ReasonClientCancel  = "client_cancel"
)

// SkipSaturated is the skip reason when max_concurrent_fusions runs are
// already in flight.
const SkipSaturated = "saturated"

// Reasons an eligible route's request never reached the fusion path; they
// appear in the cache header only (not in the skip metric, which counts the
// requests the fusion path declined).
const (
	SkipFusionOff   = "fusion_off"   // no fusion path (no model) or fusion.disabled
	SkipMalformed   = "malformed"    // the body is not a request the sidecar can read: forwarded as is
	SkipNotEligible = "not_eligible" // a request the fusion path does not serve (see ParseRequest)
)

// exchange is one client request, from arrival to the end of its response
// (which, for a streamed body, is after the handler returned).
type exchange struct {
	p        *Proxy
	start    time.Time
	ctx      context.Context // carries the proxy.request span
	span     trace.Span
	route    Route
	path     string
	reason   string      // fallback reason
	skip     string      // skip reason (the fusion path declined)
	stats    Stats       // what the fusion path knew of the chunks, when looked
	looked   bool        // stats hold a lookup's hits and misses
	done     func(error) // breaker outcome, set on the fusion path
	plan     *Plan
	ttft     atomic.Bool
	finished atomic.Bool
	refs     atomic.Int32 // the handler's and finish's; see newExchange
}

// exchanges recycles exchange records: the pass-through path allocates
// nothing else per request, and a collector with nothing to do keeps the
// sidecar's tail latency down (see transport.go).
var exchanges = sync.Pool{New: func() any { return new(exchange) }}

// newExchange takes an exchange from the pool. It holds two references:
// the handler's, dropped with a deferred unref when the handler returns,
// and the one finish drops. Whatever still runs once the handler returned
// (the relay of a streamed body) ends in finish, so the record goes back
// to the pool only when nothing can reach it.
func (p *Proxy) newExchange(start time.Time, route Route) *exchange {
	x := exchanges.Get().(*exchange)
	x.p, x.start, x.ctx, x.span, x.route, x.path = p, start, context.Background(), noSpan, route, PathPassthrough
	x.refs.Store(2)
	return x
}

// unref drops a reference; the last one returns x to the pool.
func (x *exchange) unref() {
	switch n := x.refs.Add(-1); {
	case n > 0:
		return
	case n < 0:
		panic("proxy: exchange released twice")
	}
	x.p, x.ctx, x.span, x.reason, x.skip, x.done, x.plan = nil, nil, nil, "", "", nil, nil
	x.stats, x.looked = Stats{}, false
	x.ttft.Store(false)
	x.finished.Store(false)
	exchanges.Put(x)
}

// noSpan is the span of exchanges when tracing is off: a no-op, whose
// IsRecording is false.
var noSpan = trace.SpanFromContext(context.Background())

func (x *exchange) firstByte() { x.firstByteAt(time.Now()) }

// firstByteAt records the time to first byte, as of now.
func (x *exchange) firstByteAt(now time.Time) {
	if x.ttft.CompareAndSwap(false, true) {
		x.p.tel.ttft.Record(x.ctx, now.Sub(x.start).Seconds(), x.p.tel.pathOpts(x.path)...)
	}
}

// finish ends the exchange: err nil when the response was delivered whole.
func (x *exchange) finish(err error) { x.finishAt(time.Now(), err) }

// finishAt is finish as of now.
func (x *exchange) finishAt(now time.Time, err error) {
	if !x.finished.CompareAndSwap(false, true) {
		return
	}
	if x.done != nil {
		if isClientCancel(err) {
			x.done(context.Canceled)
		} else {
			x.done(err)
		}
	}
	x.plan.release()
	x.p.tel.requests.Add(x.ctx, 1, x.p.tel.pathRouteOpts(x.path, x.route)...)
	x.p.tel.duration.Record(x.ctx, now.Sub(x.start).Seconds(), x.p.tel.pathOpts(x.path)...)
	if x.span.IsRecording() {
		x.span.SetAttributes(attribute.String(AttrPath, x.path))
		if x.reason != "" {
			x.span.SetAttributes(attribute.String(AttrFallbackReason, x.reason))
		}
		if err != nil {
			x.span.RecordError(err)
			if !isClientCancel(err) {
				x.span.SetStatus(codes.Error, err.Error())
			}
		}
	}
	x.span.End()
	x.unref()
}

func (x *exchange) fallback(reason string) {
	x.path, x.reason = PathFallback, reason
	x.p.tel.fallbacks.Add(x.ctx, 1, metric.WithAttributes(attribute.String("reason", reason)))
	if reason != ReasonClientCancel && x.span.IsRecording() {
		// The client is served (the original request), but the fusion
		// path failed: the span says so where a trace viewer looks.
		x.span.SetStatus(codes.Error, "fusion fallback: "+reason)
	}
}

// skipped notes that the fusion path declined the request.
func (x *exchange) skipped(reason string) {
	x.skip = reason
	x.p.tel.skips.Add(x.ctx, 1, metric.WithAttributes(attribute.String("reason", reason)))
	if x.span.IsRecording() {
		x.span.SetAttributes(attribute.String(AttrSkipReason, reason))
	}
}

// lookedUp counts an eligible request the fusion path was asked about
// (fusionrag.proxy.lookups, and its chunks as hits and misses) and keeps
// what it knew for the cache header; s nil: nothing known.
func (x *exchange) lookedUp(s *Stats) {
	x.p.tel.recordLookup(x.ctx, s)
	if s != nil && s.Hits+s.Misses > 0 {
		x.stats, x.looked = *s, true
		if x.span.IsRecording() {
			x.span.SetAttributes(attribute.Int(AttrChunks, s.Chunks), attribute.Int(AttrHits, s.Hits),
				attribute.Int(AttrMisses, s.Misses), attribute.Float64(AttrHitRate, s.HitRate()))
		}
	}
}
