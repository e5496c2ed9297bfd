package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/sony/gobreaker/v2"

	"github.com/fusionrag/fusionrag/adapters"
	"github.com/fusionrag/fusionrag/fingerprint"
	"github.com/fusionrag/fusionrag/internal/promexport"
	"github.com/fusionrag/fusionrag/internal/streamtest"
)

// The Fusers in this file are fakes on purpose: they produce on demand the
// faults (errors, hangs, panics) that a real fusion path cannot be made to
// show, in front of a real upstream over real HTTP.

// recorder is an engine that records the bodies it receives and answers
// like a minimal OpenAI endpoint: 400 for bodies that are not JSON objects,
// 500 when fail says so, else 200 with the body echoed back.
type recorder struct {
	mu     sync.Mutex
	bodies []string
	fail   func(body string) bool
}

func (rc *recorder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	b, _ := io.ReadAll(r.Body)
	rc.mu.Lock()
	rc.bodies = append(rc.bodies, string(b))
	fail := rc.fail
	rc.mu.Unlock()
	var obj map[string]any
	if err := json.Unmarshal(b, &obj); err != nil {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(400)
		fmt.Fprintf(w, `{"error":{"message":%q,"type":"BadRequestError","code":400}}`, err.Error())
		return
	}
	if fail != nil && fail(string(b)) {
		http.Error(w, "kv load failed", 500)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	fmt.Fprintf(w, `{"echo":%s}`, b)
}

func (rc *recorder) got() []string {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]string(nil), rc.bodies...)
}

func (rc *recorder) reset() {
	rc.mu.Lock()
	rc.bodies = nil
	rc.mu.Unlock()
}

// countingLease is a kv_transfer_params lease that counts its releases
// and may fail Rewrite.
type countingLease struct {
	adapters.KVParamsLease
	released   *atomic.Int64
	rewriteErr error
}

func (l countingLease) Rewrite(b []byte) ([]byte, error) {
	if l.rewriteErr != nil {
		return nil, l.rewriteErr
	}
	return l.KVParamsLease.Rewrite(b)
}

func (l countingLease) Release() {
	if l.released != nil {
		l.released.Add(1)
	}
}

// counted makes p's lease count its releases in n.
func counted(p *Plan, n *atomic.Int64) *Plan {
	p.Lease = countingLease{KVParamsLease: p.Lease.(adapters.KVParamsLease), released: n}
	return p
}

func okPlan(ns string) *Plan {
	return &Plan{Lease: adapters.KVParamsLease{Namespace: ns},
		Stats: Stats{Strategy: "fusionrag", Ratio: 0.15, Chunks: 4, Hits: 3, Misses: 1, RecomputedTokens: 42, ContextTokens: 280, BytesLoaded: 1 << 20}}
}

const chatBody = `{"model":"m","messages":[{"role":"system","content":"S"},{"role":"user","content":[{"type":"text","text":"c1"},{"type":"text","text":"q"}]}]}`

// post is streamtest.Post.
var post = streamtest.Post

func TestFusionPathAndFallbacks(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	var released atomic.Int64
	fusers := map[string]FuserFunc{
		"ok": func(ctx context.Context, r *Request) (*Plan, error) {
			return counted(okPlan("ns-"+r.Tenant[:8]), &released), nil
		},
		"error":        func(context.Context, *Request) (*Plan, error) { return nil, errors.New("redis: connection refused") },
		"panic":        func(context.Context, *Request) (*Plan, error) { panic("index out of range") },
		"hang":         func(ctx context.Context, _ *Request) (*Plan, error) { <-ctx.Done(); return nil, ctx.Err() },
		"ignores ctx":  func(context.Context, *Request) (*Plan, error) { <-release; return okPlan("late"), nil },
		"skip":         func(context.Context, *Request) (*Plan, error) { return nil, Skip("too_many_missing") },
		"nil plan":     func(context.Context, *Request) (*Plan, error) { return nil, nil },
		"empty params": func(context.Context, *Request) (*Plan, error) { return &Plan{}, nil },
		"rewrite fails": func(context.Context, *Request) (*Plan, error) {
			return &Plan{Lease: countingLease{released: &released, rewriteErr: errors.New("slot file gone")}}, nil
		},
		"rewrite fails with a reason": func(context.Context, *Request) (*Plan, error) {
			return &Plan{Lease: countingLease{released: &released, rewriteErr: reasonError{"slot_gone"}}}, nil
		},
		"plan and error": func(context.Context, *Request) (*Plan, error) {
			return counted(okPlan("x"), &released), errors.New("half done")
		},
		"mismatch": func(context.Context, *Request) (*Plan, error) {
			return nil, Fallback(ReasonEngineMismatch, adapters.ErrMismatch)
		},
	}
	tests := []struct {
		fuser   string
		wantKV  bool
		path    string
		reason  string
		release int64
	}{
		{"ok", true, PathFusion, "", 1},
		{"error", false, PathFallback, ReasonFuserError, 0},
		{"panic", false, PathFallback, ReasonFuserPanic, 0},
		{"hang", false, PathFallback, ReasonFuserTimeout, 0},
		{"ignores ctx", false, PathFallback, ReasonFuserTimeout, 0},
		{"skip", false, PathPassthrough, "", 0},
		{"nil plan", false, PathFallback, ReasonFuserError, 0},
		{"empty params", false, PathFallback, ReasonBadPlan, 0},
		{"rewrite fails", false, PathFallback, ReasonBadPlan, 1},
		{"rewrite fails with a reason", false, PathFallback, "slot_gone", 1},
		{"plan and error", false, PathFallback, ReasonFuserError, 1},
		{"mismatch", false, PathFallback, ReasonEngineMismatch, 0},
	}
	for _, tt := range tests {
		t.Run(tt.fuser, func(t *testing.T) {
			rc := &recorder{}
			up := httptest.NewServer(rc)
			defer up.Close()
			cfg := upstreamConfig(up.URL)
			cfg.Timeouts.Fusion = 100 * time.Millisecond
			released.Store(0)
			p, base := startProxy(t, cfg, WithFuser(fusers[tt.fuser]))
			code, _ := post(t, base+"/v1/chat/completions", chatBody, "Authorization", "Bearer sk-1")
			if code != 200 {
				t.Fatalf("status %d, want 200 whatever the fusion path did", code)
			}
			bodies := rc.got()
			if len(bodies) != 1 {
				t.Fatalf("engine got %d requests, want 1", len(bodies))
			}
			want := chatBody
			if tt.wantKV {
				want = strings.TrimSuffix(chatBody, "}") + `,"kv_transfer_params":{"namespace":"ns-` + mustTenant("api-key", "sk-1")[:8] + `"}}`
			}
			if d := cmp.Diff(want, bodies[0]); d != "" {
				t.Errorf("engine body (-want +got):\n%s", d)
			}
			m := scrape(t, p)
			if got := m[`fusionrag_proxy_requests_total{path="`+tt.path+`",route="chat"}`]; got != 1 {
				t.Errorf("requests{path=%s} = %v, want 1\n%s", tt.path, got, m)
			}
			if tt.reason != "" {
				if got := m[`fusionrag_proxy_fallbacks_total{reason="`+tt.reason+`"}`]; got != 1 {
					t.Errorf("fallbacks{reason=%s} = %v, want 1\n%s", tt.reason, got, m)
				}
			}
			if got := released.Load(); got != tt.release {
				t.Errorf("plan released %d times, want %d", got, tt.release)
			}
		})
	}
}

func mustTenant(source, v string) string { return fingerprint.Tenant(source, v) }

// TestOverrideAndBodyField: the "fusionrag" member reaches the Fuser and
// never the engine; headers fill what the body leaves out; invalid values
// are a 400.
func TestOverrideAndBodyField(t *testing.T) {
	rc := &recorder{}
	up := httptest.NewServer(rc)
	defer up.Close()
	var seen atomic.Pointer[Request]
	cfg := upstreamConfig(up.URL)
	cfg.Tenant.Header = HeaderTenant // as behind a gateway that sets it
	_, base := startProxy(t, cfg, WithFuser(FuserFunc(func(_ context.Context, r *Request) (*Plan, error) {
		seen.Store(r)
		return nil, Skip("test")
	})))
	body := `{"model":"m",  "fusionrag" : {"strategy":"epic","ratio":0.3},"messages":[{"role":"user","content":"x"}], "temperature":0}`
	code, _ := post(t, base+"/v1/chat/completions", body, HeaderRatio, "0.9", HeaderStrategy, "reuse", HeaderTenant, "acme")
	if code != 200 {
		t.Fatal(code)
	}
	if d := cmp.Diff([]string{`{"model":"m","messages":[{"role":"user","content":"x"}], "temperature":0}`}, rc.got()); d != "" {
		t.Errorf("engine body (-want +got):\n%s", d)
	}
	r := seen.Load()
	if d := cmp.Diff(Override{Strategy: "epic", Ratio: 0.3, HasRatio: true}, r.Override); d != "" {
		t.Errorf("override (-want +got):\n%s", d)
	}
	if r.TenantSource != "header" || r.Tenant != fingerprint.Tenant("header", "acme") {
		t.Errorf("tenant %s from %s", r.Tenant, r.TenantSource)
	}

	rc.reset()
	code, _ = post(t, base+"/v1/completions", `{"model":"m","prompt":"p"}`, HeaderRatio, "0.25", HeaderStrategy, "cacheblend")
	if r := seen.Load(); code != 200 || r.Override != (Override{Strategy: "cacheblend", Ratio: 0.25, HasRatio: true}) || r.Parsed == nil || r.Parsed.Prompt.Text != "p" || r.TenantSource != "anonymous" {
		t.Errorf("headers only: code %d, request %+v", code, r)
	}

	for _, bad := range []struct{ body, hk, hv string }{
		{`{"model":"m","fusionrag":{"strategy":"magic"},"prompt":"p"}`, "", ""},
		{`{"model":"m","fusionrag":{"ratio":1.5},"prompt":"p"}`, "", ""},
		{`{"model":"m","fusionrag":"fast","prompt":"p"}`, "", ""},
		{`{"model":"m","fusionrag":{"tenant":"acme"},"prompt":"p"}`, "", ""}, // the body can never pick a tenant
		{`{"model":"m","prompt":"p"}`, HeaderRatio, "lots"},
		{`{"model":"m","prompt":"p"}`, HeaderStrategy, "none"},
	} {
		rc.reset()
		code, resp := post(t, base+"/v1/completions", bad.body, bad.hk, bad.hv)
		if code != 400 || !strings.Contains(resp, "invalid_fusion_override") || len(rc.got()) != 0 {
			t.Errorf("%s %s=%s: got %d %s (engine saw %d requests), want 400 invalid_fusion_override", bad.body, bad.hk, bad.hv, code, resp, len(rc.got()))
		}
	}
}

// TestMalformedForwardedUntouched: on eligible routes, bodies the proxy
// cannot parse go to the engine byte for byte, and the client gets exactly
// the engine's answer (compared against going direct).
func TestMalformedForwardedUntouched(t *testing.T) {
	rc := &recorder{}
	up := httptest.NewServer(rc)
	defer up.Close()
	var calls atomic.Int64
	_, base := startProxy(t, upstreamConfig(up.URL), WithFuser(FuserFunc(func(context.Context, *Request) (*Plan, error) {
		calls.Add(1)
		return okPlan("x"), nil
	})))
	for _, body := range []string{
		`{"model":"m","messages":`, `[1,2,3]`, `"just a string"`, `{"a":1} trailing`, `{"fusionrag":{"strategy":"epic"},}`,
		``, `null`, "{\"model\":\"m\",\"prompt\":\"\xff\"", `{"model":"m","prompt":"p"`,
	} {
		direct, dbody := post(t, up.URL+"/v1/chat/completions", body)
		rc.reset()
		viaProxy, pbody := post(t, base+"/v1/chat/completions", body)
		got := rc.got()
		if viaProxy != direct || pbody != dbody || len(got) != 1 || got[0] != body {
			t.Errorf("body %q: proxy %d %q, direct %d %q, engine saw %q", body, viaProxy, pbody, direct, dbody, got)
		}
	}
	if c := calls.Load(); c != 0 {
		t.Errorf("fuser called %d times for malformed bodies", c)
	}
}

// TestFusedRequestFailsUpstream: when the engine fails the rewritten
// request (its KV endpoint is broken), the original is sent instead and the
// client never notices; the failure counts against the breaker.
func TestFusedRequestFailsUpstream(t *testing.T) {
	rc := &recorder{fail: func(b string) bool { return strings.Contains(b, "kv_transfer_params") }}
	up := httptest.NewServer(rc)
	defer up.Close()
	var released atomic.Int64
	p, base := startProxy(t, upstreamConfig(up.URL), WithFuser(FuserFunc(func(context.Context, *Request) (*Plan, error) {
		return counted(okPlan("x"), &released), nil
	})))
	code, resp := post(t, base+"/v1/chat/completions", chatBody)
	if code != 200 || !strings.Contains(resp, `"echo"`) {
		t.Fatalf("got %d %s", code, resp)
	}
	if got := rc.got(); len(got) != 2 || got[1] != chatBody {
		t.Fatalf("engine saw %q, want the fused request then the original", got)
	}
	if c := p.breaker.Counts(); c.TotalFailures != 1 || released.Load() != 1 {
		t.Errorf("breaker failures %d (want 1), released %d (want 1)", c.TotalFailures, released.Load())
	}
}

// TestBreakerOpensAndCloses drives the breaker through closed -> open ->
// half-open -> closed and checks that an open breaker keeps the Fuser out.
func TestBreakerOpensAndCloses(t *testing.T) {
	rc := &recorder{}
	up := httptest.NewServer(rc)
	defer up.Close()
	var healthy atomic.Bool
	var calls atomic.Int64
	cfg := upstreamConfig(up.URL)
	cfg.Breaker.ConsecutiveFailures = 3
	cfg.Breaker.OpenTimeout = 200 * time.Millisecond
	p, base := startProxy(t, cfg, WithFuser(FuserFunc(func(context.Context, *Request) (*Plan, error) {
		calls.Add(1)
		if !healthy.Load() {
			return nil, errors.New("store down")
		}
		return okPlan("x"), nil
	})))
	for i := 0; i < 6; i++ {
		if code, _ := post(t, base+"/v1/chat/completions", chatBody); code != 200 {
			t.Fatalf("request %d: %d", i, code)
		}
	}
	if s := p.BreakerState(); s != gobreaker.StateOpen || calls.Load() != 3 {
		t.Fatalf("after 6 failing requests: breaker %v, fuser called %d times; want open, 3", s, calls.Load())
	}
	m := scrape(t, p)
	if m["fusionrag_proxy_breaker_state"] != 2 || m[`fusionrag_proxy_fallbacks_total{reason="breaker_open"}`] != 3 {
		t.Errorf("metrics while open:\n%s", m)
	}
	healthy.Store(true)
	time.Sleep(250 * time.Millisecond)
	if code, _ := post(t, base+"/v1/chat/completions", chatBody); code != 200 {
		t.Fatal(code)
	}
	if s := p.BreakerState(); s != gobreaker.StateClosed {
		t.Fatalf("after a successful trial: breaker %v, want closed", s)
	}
	m = scrape(t, p)
	if m["fusionrag_proxy_breaker_state"] != 0 || m[`fusionrag_proxy_breaker_transitions_total{to="open"}`] != 1 ||
		m[`fusionrag_proxy_breaker_transitions_total{to="half-open"}`] != 1 || m[`fusionrag_proxy_breaker_transitions_total{to="closed"}`] != 1 {
		t.Errorf("metrics after recovery:\n%s", m)
	}
}

// TestClientCancelIsNotAFailure: a client hanging up on a fused stream ends
// the exchange as a cancel, which the breaker does not count.
func TestClientCancelIsNotAFailure(t *testing.T) {
	gone := make(chan struct{})
	up := httptest.NewServer(streamtest.Counter(10*time.Millisecond, gone))
	defer up.Close()
	cfg := upstreamConfig(up.URL)
	cfg.Breaker.ConsecutiveFailures = 1
	p, base := startProxy(t, cfg, WithFuser(FuserFunc(func(context.Context, *Request) (*Plan, error) { return okPlan("x"), nil })))
	conn := streamtest.ReadUntil(t, base, streamtest.Request{Method: "POST", Path: "/v1/chat/completions",
		Body: `{"model":"m","stream":true,"messages":[{"role":"user","content":"q"}]}`}, "data: 2")
	conn.Close()
	select {
	case <-gone:
	case <-time.After(5 * time.Second):
		t.Fatal("engine not told about the hang-up")
	}
	deadline := time.Now().Add(2 * time.Second)
	for {
		m := scrape(t, p)
		if m[`fusionrag_proxy_requests_total{path="fusion",route="chat"}`] == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("exchange never finished:\n%s", m)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if c := p.breaker.Counts(); c.TotalFailures != 0 || p.BreakerState() != gobreaker.StateClosed {
		t.Errorf("client cancel counted: %+v, state %v", c, p.BreakerState())
	}
}

// scrape reads the proxy's /metrics page into series -> value.
func scrape(t *testing.T, p *Proxy) promexport.Series {
	t.Helper()
	var b strings.Builder
	if err := p.Telemetry().WritePrometheus(context.Background(), &b); err != nil {
		t.Fatal(err)
	}
	return parseExposition(t, b.String())
}

// parseExposition is promexport.ParseText, failing the test on an error.
func parseExposition(t *testing.T, text string) promexport.Series {
	t.Helper()
	m, err := promexport.ParseText(strings.NewReader(text))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestFaultStorm sends 1,200 requests from 8 concurrent clients while the
// fusion path goes healthy -> faulty (errors, hangs past the deadline,
// panics, the engine failing fused requests) -> healthy. No client request
// may fail, and the breaker must open and close again, visibly in metrics.
func TestFaultStorm(t *testing.T) {
	const total, workers = 1200, 8
	var sent atomic.Int64
	phase := func() int { // 0 healthy, 1 faulty, 2 healthy again
		n := sent.Load()
		switch {
		case n < 300:
			return 0
		case n < 700:
			return 1
		}
		return 2
	}
	var kvBroken atomic.Bool
	rc := &recorder{fail: func(b string) bool { return kvBroken.Load() && strings.Contains(b, "kv_transfer_params") }}
	up := httptest.NewServer(rc)
	defer up.Close()
	cfg := upstreamConfig(up.URL)
	cfg.Timeouts.Fusion = 30 * time.Millisecond
	cfg.Breaker.ConsecutiveFailures = 5
	cfg.Breaker.OpenTimeout = 100 * time.Millisecond
	var i atomic.Int64
	p, base := startProxy(t, cfg, WithFuser(FuserFunc(func(ctx context.Context, r *Request) (*Plan, error) {
		if phase() != 1 {
			kvBroken.Store(false)
			return okPlan("ns"), nil
		}
		switch i.Add(1) % 4 {
		case 0:
			return nil, errors.New("redis: connection refused")
		case 1:
			<-ctx.Done()
			return nil, ctx.Err()
		case 2:
			panic("corrupt blob")
		default:
			kvBroken.Store(true)
			return okPlan("ns"), nil
		}
	})))
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: workers}}
	var failed atomic.Int64
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for sent.Add(1) <= total {
				resp, err := client.Post(base+"/v1/chat/completions", "application/json", strings.NewReader(chatBody))
				if err != nil {
					failed.Add(1)
					continue
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 || !strings.HasPrefix(string(b), `{"echo":`) {
					failed.Add(1)
				}
				if phase() == 2 {
					time.Sleep(time.Millisecond) // let the open timeout pass within the run
				}
			}
		}()
	}
	wg.Wait()
	if f := failed.Load(); f != 0 {
		t.Errorf("%d of %d client requests failed", f, total)
	}
	m := scrape(t, p)
	var requests float64
	for _, path := range []string{PathFusion, PathFallback, PathPassthrough} {
		requests += m[`fusionrag_proxy_requests_total{path="`+path+`",route="chat"}`]
	}
	if requests != total || m[`fusionrag_proxy_breaker_transitions_total{to="open"}`] < 1 ||
		m[`fusionrag_proxy_breaker_transitions_total{to="closed"}`] < 1 || m["fusionrag_proxy_breaker_state"] != 0 {
		t.Errorf("want %d requests and the breaker opened and closed again:\n%s", total, m)
	}
	t.Logf("fusion %v, fallback %v (breaker_open %v, fuser_error %v, fuser_timeout %v, fuser_panic %v, upstream_error %v)",
		m[`fusionrag_proxy_requests_total{path="fusion",route="chat"}`], m[`fusionrag_proxy_requests_total{path="fallback",route="chat"}`],
		m[`fusionrag_proxy_fallbacks_total{reason="breaker_open"}`], m[`fusionrag_proxy_fallbacks_total{reason="fuser_error"}`],
		m[`fusionrag_proxy_fallbacks_total{reason="fuser_timeout"}`], m[`fusionrag_proxy_fallbacks_total{reason="fuser_panic"}`],
		m[`fusionrag_proxy_fallbacks_total{reason="upstream_error"}`])
}

// TestBodyFieldRemovedWithoutFuser: with no fusion path, the control field
// still never reaches the engine.
func TestBodyFieldRemovedWithoutFuser(t *testing.T) {
	rc := &recorder{}
	up := httptest.NewServer(rc)
	defer up.Close()
	_, base := startProxy(t, upstreamConfig(up.URL))
	if code, _ := post(t, base+"/v1/completions", `{"model":"m","fusionrag":{"ratio":0.5},"prompt":"p"}`); code != 200 {
		t.Fatal(code)
	}
	if d := cmp.Diff([]string{`{"model":"m","prompt":"p"}`}, rc.got()); d != "" {
		t.Errorf("engine body (-want +got):\n%s", d)
	}
}

// reasonError is an adapter error carrying a reason.
type reasonError struct{ r string }

func (e reasonError) Error() string  { return "adapter failed: " + e.r }
func (e reasonError) Reason() string { return e.r }
