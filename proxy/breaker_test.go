package proxy

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
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

// TestFusedRequestRefused: an engine that refuses the fused request (4xx)
// but would serve the original must not cost the client its answer: the
// original is sent and relayed, and the fusion path is at fault. When the
// engine refuses the original too (the client's own error), the client
// gets the engine's answer to the original and the breaker counts nothing.
func TestFusedRequestRefused(t *testing.T) {
	for _, tt := range []struct {
		name     string
		refuse   func(body string) bool
		code     int
		failures uint32
	}{
		{"fused only", func(b string) bool { return strings.Contains(b, "kv_transfer_params") }, 200, 1},
		{"both", func(string) bool { return true }, 400, 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var seen atomic.Int64
			up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				seen.Add(1)
				b, _ := io.ReadAll(r.Body)
				w.Header().Set("Content-Type", "application/json")
				if tt.refuse(string(b)) {
					w.WriteHeader(400)
					_, _ = w.Write([]byte(`{"error":{"message":"refused","type":"invalid_request_error","param":null,"code":null}}`))
					return
				}
				_, _ = w.Write([]byte(`{"ok":true}`))
			}))
			defer up.Close()
			var released atomic.Int64
			p, base := startProxy(t, upstreamConfig(up.URL), WithFuser(FuserFunc(func(context.Context, *Request) (*Plan, error) {
				return counted(okPlan("ab"), &released), nil
			})))
			if code, body := post(t, base+"/v1/chat/completions", chatBody); code != tt.code {
				t.Fatalf("status %d %s, want %d", code, body, tt.code)
			}
			if c := p.breaker.Counts(); c.TotalFailures != tt.failures || released.Load() != 1 || seen.Load() != 2 {
				t.Errorf("breaker failures %d (want %d), plan released %d (want 1), engine saw %d (want 2)",
					c.TotalFailures, tt.failures, released.Load(), seen.Load())
			}
		})
	}
}
