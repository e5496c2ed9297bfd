package proxy

import (
	"context"
	"errors"
	"fmt"

	"github.com/valyala/fasthttp"
)

// serveEligible runs the fusion path for a buffered body of an eligible route.
func (p *Proxy) serveEligible(ctx *fasthttp.RequestCtx, x *exchange, body []byte) {
	req, ok := p.eligible(ctx, x, body)
	if !ok {
		return
	}
	fused, ok := p.fuse(x, req)
	if !ok {
		p.forward(ctx, x, req.Body, nil, len(req.Body))
		return
	}
	// Try the fused request; if the engine fails or refuses it before
	// anything reached the client, send the original instead.
	resp, err := p.roundTrip(ctx, x, fused, nil, len(fused), "fused")
	if err == nil && resp.StatusCode() < 400 {
		x.path = PathFusion
		p.respond(ctx, x, resp)
		return
	}
	fusedClass := 5
	if err == nil {
		fusedClass = min(resp.StatusCode()/100, 5)
		err = fmt.Errorf("proxy: engine answered %d to the fused request", resp.StatusCode())
		_ = resp.CloseBodyStream()
		fasthttp.ReleaseResponse(resp)
	}
	done := x.done
	x.done = nil
	x.fallback(ReasonUpstreamError)
	x.plan.release() // before the original is sent: a slot it held is free for it
	x.plan = nil
	// The fusion path is at fault only if the engine treats the original
	// better: an engine that fails both (down, overloaded) is not a fusion
	// failure, and opening the breaker would only add full prefills to its
	// load; a request it refuses both ways is the client's error.
	resp, oerr := p.roundTrip(ctx, x, req.Body, nil, len(req.Body), "original")
	origClass := 5
	if oerr == nil {
		origClass = min(resp.StatusCode()/100, 5)
	}
	if origClass == fusedClass {
		done(fmt.Errorf("%w: %w", errEngineFailing, err))
	} else {
		done(err)
	}
	if oerr != nil {
		p.fail(ctx, x, oerr)
		return
	}
	p.respond(ctx, x, resp)
}

// errEngineFailing marks a fused request's failure or refusal that the
// original request met too: the engine's or the client's, not the fusion
// path's (breaker-excluded).
var errEngineFailing = errors.New("proxy: the engine fails or refuses the original request too")

type fuseResult struct {
	plan *Plan
	err  error
}

// fuse asks the Fuser under the breaker and the fusion deadline. On success
// it returns the rewritten body, with x.done and x.plan set; otherwise it has
// recorded why and the caller forwards the original.
func (p *Proxy) fuse(x *exchange, req *Request) ([]byte, bool) {
	select {
	case p.fusions <- struct{}{}:
	default:
		x.skipped(SkipSaturated)
		x.lookedUp(nil)
		return nil, false
	}
	done, err := p.breaker.Allow()
	if err != nil {
		<-p.fusions
		x.fallback(ReasonBreakerOpen)
		x.lookedUp(nil)
		return nil, false
	}
	fctx, cancel := context.WithTimeout(x.ctx, p.cfg.Timeouts.Fusion)
	defer cancel()
	ch := make(chan fuseResult, 1)
	go func() {
		defer func() { <-p.fusions }() // held until the Fuser returns, even if abandoned
		defer func() {
			if v := recover(); v != nil {
				ch <- fuseResult{err: &PanicError{Value: v}}
			}
		}()
		plan, err := p.fuser.Fuse(fctx, req)
		ch <- fuseResult{plan: plan, err: err}
	}()
	var r fuseResult
	select {
	case r = <-ch:
	case <-fctx.Done():
		r.err = fctx.Err()
		go func() { // a late plan is never used: release it
			late := <-ch
			late.plan.release()
		}()
	}
	if r.err == nil && r.plan == nil {
		r.err = errors.New("proxy: fuser returned neither a plan nor an error")
	}
	if r.err != nil && r.plan != nil { // a plan with an error is not used
		r.plan.release()
		r.plan = nil
	}
	// Every eligible request the fusion path was asked about counts in
	// the lookups and, with the chunks it recognised, in the chunk hits and
	// misses: fused, skipped (too many missing) or failed alike.
	var known *Stats
	var skip *SkipError
	switch {
	case r.err == nil:
		known = &r.plan.Stats
	case errors.As(r.err, &skip) && skip.Stats == nil && skip.Reason == SkipNoChunks:
		known = &Stats{} // nothing recognised
	default:
		known = statsOf(r.err)
	}
	x.lookedUp(known)
	var body []byte
	if r.err == nil {
		base := req.Body
		if r.plan.Body != nil {
			base = r.plan.Body
		}
		if body, err = applyPlan(base, r.plan); err != nil {
			r.plan.release()
			done(err)
			reason := ReasonBadPlan
			if ar := AdapterReason(err, ""); ar != "" {
				reason = ar
			}
			x.fallback(reason)
			x.span.RecordError(err)
			return nil, false
		}
	}
	var pe *PanicError
	var fe *FallbackError
	switch {
	case r.err == nil:
		x.done, x.plan = done, r.plan
		if x.span.IsRecording() {
			x.span.SetAttributes(r.plan.Stats.Attributes()...)
		}
		p.tel.recordFused(x.ctx, r.plan.Stats)
		return body, true
	case errors.As(r.err, &skip) || errors.Is(r.err, ErrSkip):
		done(r.err)
		reason := "skipped"
		if skip != nil {
			reason = skip.Reason
		}
		x.skipped(reason)
		return nil, false
	case errors.Is(r.err, context.DeadlineExceeded):
		x.fallback(ReasonFuserTimeout)
	case errors.As(r.err, &pe):
		x.fallback(ReasonFuserPanic)
		p.log.Error("fuser panicked", "panic", pe.Value)
	case errors.Is(r.err, context.Canceled):
		x.fallback(ReasonClientCancel)
	case errors.As(r.err, &fe):
		x.fallback(fe.Reason)
	default:
		x.fallback(ReasonFuserError)
	}
	x.span.RecordError(r.err)
	done(r.err)
	return nil, false
}
