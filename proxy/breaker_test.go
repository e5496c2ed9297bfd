package proxy

import (
	"context"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"

	"github.com/sony/gobreaker/v2"
)

// TestEngineFailureIsNotAFusionFailure: when the engine fails the fused
// request and the original alike (overloaded: 503 to everything), the
// fusion path is not at fault and the breaker must not open: opening it
// would turn every request into a full prefill and add to the overload.
// The client gets the engine's own answer to the original request.
func TestEngineFailureIsNotAFusionFailure(t *testing.T) {
	var seen atomic.Int64
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen.Add(1)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = w.Write([]byte(`{"error":{"message":"engine overloaded","type":"server_error","param":null,"code":null}}`))
	}))
	defer up.Close()
	p, base := startProxy(t, upstreamConfig(up.URL), WithFuser(FuserFunc(func(context.Context, *Request) (*Plan, error) {
		return okPlan("ab"), nil
	})))
	for i := range 8 {
		if code, body := post(t, base+"/v1/chat/completions", chatBody); code != 503 {
			t.Fatalf("request %d: %d %s, want the engine's 503", i, code, body)
		}
	}
	if st, c := p.BreakerState(), p.breaker.Counts(); st != gobreaker.StateClosed || c.TotalFailures != 0 {
		t.Errorf("breaker %v with %d failures after an engine outage; want closed, 0", st, c.TotalFailures)
	}
	if n := seen.Load(); n != 16 {
		t.Errorf("engine saw %d requests, want 16 (fused, then original)", n)
	}
}
