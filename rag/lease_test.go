package rag

import (
	"bytes"
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

	"github.com/fusionrag/fusionrag/adapters"
	"github.com/fusionrag/fusionrag/internal/proxytest"
	"github.com/fusionrag/fusionrag/internal/streamtest"
	"github.com/fusionrag/fusionrag/kvstore"
	"github.com/fusionrag/fusionrag/proxy"
)

// slotEngine is a fake slot-based adapter (the shape of llamacpp's): each
// Publish leases a slot, the lease pins the request to it with id_slot, and
// every lease must be released exactly once. It checks what the proxy
// promises an adapter: a valid publication, and Rewrite called on exactly
// the body that was published.
type slotEngine struct {
	behave     func(ctx context.Context) error // run before a publish succeeds; nil: succeed
	rewriteErr error                           // what leases' Rewrite returns

	published, released, doubles, closed atomic.Int64
	slot                                 atomic.Int64

	mu         sync.Mutex
	problems   []string
	pubBodies  [][]byte
	rewriteIns [][]byte
}

func (e *slotEngine) Close() error { e.closed.Add(1); return nil }

func (e *slotEngine) problem(format string, args ...any) {
	e.mu.Lock()
	e.problems = append(e.problems, fmt.Sprintf(format, args...))
	e.mu.Unlock()
}

func (e *slotEngine) Publish(ctx context.Context, p adapters.Publication) (adapters.Lease, error) {
	if err := adapters.CheckPublication(p); err != nil {
		e.problem("invalid publication: %v", err)
		return nil, err
	}
	if p.Path != "/v1/completions" || !json.Valid(p.Body) || bytes.Contains(p.Body, []byte("id_slot")) ||
		bytes.Contains(p.Body, []byte("kv_transfer_params")) {
		e.problem("publication path %q body %s: want the completions path and a body without client id_slot or kv_transfer_params", p.Path, p.Body)
	}
	if e.behave != nil {
		if err := e.behave(ctx); err != nil {
			return nil, err
		}
	}
	e.published.Add(1)
	e.mu.Lock()
	e.pubBodies = append(e.pubBodies, p.Body)
	e.mu.Unlock()
	return &slotLease{e: e, slot: e.slot.Add(1), body: p.Body}, nil
}

type slotLease struct {
	e        *slotEngine
	slot     int64
	body     []byte
	released atomic.Int32
}

func (l *slotLease) Rewrite(b []byte) ([]byte, error) {
	l.e.mu.Lock()
	l.e.rewriteIns = append(l.e.rewriteIns, b)
	l.e.mu.Unlock()
	if !bytes.Equal(b, l.body) {
		l.e.problem("Rewrite got %s, published %s", b, l.body)
	}
	if l.e.rewriteErr != nil {
		return nil, l.e.rewriteErr
	}
	return adapters.SetMember(b, "id_slot", l.slot)
}

func (l *slotLease) Release() {
	if l.released.Add(1) != 1 {
		l.e.doubles.Add(1)
	}
	l.e.released.Add(1)
}

// slotUpstream answers like a minimal engine: 500 to requests pinned by a
// lease (an id_slot other than the client's 7) when failPinned, server-sent events for "stream": true (every 10 ms until the
// client leaves, at most 100), else a JSON object.
func slotUpstream(failPinned bool, bodies chan<- string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		select {
		case bodies <- string(b):
		default:
		}
		var v struct {
			IDSlot *int `json:"id_slot"`
		}
		_ = json.Unmarshal(b, &v)
		if failPinned && v.IDSlot != nil && *v.IDSlot != 7 { // pinned by a lease, not the client's 7
			http.Error(w, "slot restore failed", 500)
			return
		}
		if !strings.Contains(string(b), `"stream":true`) {
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write([]byte(`{"choices":[{"text":"ok"}]}`))
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		fl := w.(http.Flusher)
		for i := 0; i < 100; i++ {
			if _, err := fmt.Fprintf(w, "data: %d\n\n", i); err != nil {
				return
			}
			fl.Flush()
			select {
			case <-r.Context().Done():
				return
			case <-time.After(10 * time.Millisecond):
			}
		}
		_, _ = w.Write([]byte("data: [DONE]\n\n"))
	})
}

type reasoned struct{ error }

func (reasoned) Reason() string { return "restore_refused" }

// requestCaused is an adapter's request-caused error (adapters.ErrRequest).
type requestCaused struct{ error }

func (requestCaused) Reason() string { return "token_mismatch" }
func (requestCaused) Unwrap() error  { return adapters.ErrRequest }

// TestLeaseReleasedOncePerPublish runs the real fusion path (stories260K,
// Fuser) against a fake slot adapter on every way a fused exchange can
// end, and counts: each successful Publish is released exactly once (after
// the response ended, streamed or not; on a client hang-up; before the
// original is re-sent; after a late plan; after a failed Rewrite), the
// adapter saw the body Rewrite got, the engine saw the lease's id_slot and
// never the client's, and each publish error is counted under its reason.
func TestLeaseReleasedOncePerPublish(t *testing.T) {
	m := storiesModel(t)
	text := "Once upon a time # # " + storyA + " # # " + storyB + " # # The end"
	body := func(stream bool) string {
		return `{"id_slot":7,"prompt":` + jsonString(text) + fmt.Sprintf(`,"max_tokens":4,"stream":%v}`, stream)
	}
	for _, tc := range []struct {
		name       string
		behave     func(ctx context.Context) error
		rewriteErr error
		failPinned bool
		stream     bool
		hangUp     bool
		published  int64
		path       string
		reason     string // fallback reason
		skip       string // skip reason
		failures   uint32 // breaker failures
	}{
		{name: "response", published: 1, path: proxy.PathFusion},
		{name: "stream", stream: true, published: 1, path: proxy.PathFusion},
		{name: "client hangs up", stream: true, hangUp: true, published: 1, path: proxy.PathFusion},
		{name: "fused request fails", failPinned: true, published: 1, path: proxy.PathFallback, reason: proxy.ReasonUpstreamError, failures: 1},
		{name: "late plan", behave: func(context.Context) error { time.Sleep(300 * time.Millisecond); return nil },
			published: 1, path: proxy.PathFallback, reason: proxy.ReasonFuserTimeout, failures: 1},
		{name: "rewrite fails", rewriteErr: errors.New("slot file vanished"), published: 1, path: proxy.PathFallback, reason: proxy.ReasonBadPlan, failures: 1},
		{name: "busy", behave: func(context.Context) error { return fmt.Errorf("fake: %w", adapters.ErrBusy) },
			path: proxy.PathPassthrough, skip: proxy.SkipEngineBusy},
		{name: "no publish", behave: func(context.Context) error { return adapters.ErrNoPublish },
			path: proxy.PathPassthrough, skip: proxy.SkipNoPublish},
		{name: "mismatch", behave: func(context.Context) error { return fmt.Errorf("fake: %w", adapters.ErrMismatch) },
			path: proxy.PathFallback, reason: proxy.ReasonEngineMismatch, failures: 1},
		{name: "reason", behave: func(context.Context) error { return reasoned{errors.New("restore: 400")} },
			path: proxy.PathFallback, reason: "restore_refused", failures: 1},
		{name: "request-caused", behave: func(context.Context) error { return requestCaused{errors.New("server tokenizes 1 2 3")} },
			path: proxy.PathPassthrough, skip: "token_mismatch"},
		{name: "no reason", behave: func(context.Context) error { return errors.New("write slot file: disk full") },
			path: proxy.PathFallback, reason: proxy.ReasonAdapterError, failures: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bodies := make(chan string, 4)
			up := httptest.NewServer(slotUpstream(tc.failPinned, bodies))
			defer up.Close()
			cfg := upstreamConfig(up.URL)
			cfg.Fusion.Separator = " # # "
			cfg.Fusion.MaxMissingFraction = 1
			cfg.Timeouts.Fusion = 5 * time.Second
			if tc.name == "late plan" {
				cfg.Timeouts.Fusion = 100 * time.Millisecond
			}
			st, err := kvstore.Open("mem://?max=64MiB")
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			eng := &slotEngine{behave: tc.behave, rewriteErr: tc.rewriteErr}
			f, err := New(Config{Proxy: cfg, Model: m, Store: st, Engine: eng})
			if err != nil {
				t.Fatal(err)
			}
			if tc.name == "late plan" { // fill the store first: only the publish may be late
				r, _ := proxy.ParseRequest(proxy.RouteCompletions, []byte(body(false)))
				r.Tenant, r.TenantSource = proxy.TenantOf("", "")
				eng.behave = nil
				p, err := f.Fuse(context.Background(), r)
				if err != nil {
					t.Fatal(err)
				}
				p.Lease.Release()
				eng.behave = tc.behave
				eng.published.Store(0)
				eng.released.Store(0)
			}
			p, base := proxytest.Start(t, cfg, proxy.WithFuser(f))
			if tc.hangUp {
				conn := streamtest.ReadUntil(t, base, streamtest.Request{Method: "POST", Path: "/v1/completions", Body: body(true)}, "data: 2")
				conn.Close()
			} else {
				code, resp := post(t, base+"/v1/completions", body(tc.stream))
				if code != 200 || !strings.Contains(resp, "ok") && !strings.Contains(resp, "[DONE]") {
					t.Fatalf("status %d %.200s", code, resp)
				}
			}
			deadline := time.Now().Add(5 * time.Second)
			for {
				m := scrape(t, p)
				done := m[`fusionrag_proxy_requests_total{path="`+tc.path+`",route="completions"}`] == 1
				if done && eng.released.Load() == tc.published && eng.published.Load() == tc.published {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("published %d, released %d, want %d each\n%s", eng.published.Load(), eng.released.Load(), tc.published, m)
				}
				time.Sleep(10 * time.Millisecond)
			}
			time.Sleep(20 * time.Millisecond) // a second release would come now
			if n := eng.doubles.Load(); n != 0 || eng.released.Load() != tc.published {
				t.Errorf("released %d times (%d doubles) for %d publishes", eng.released.Load(), n, tc.published)
			}
			eng.mu.Lock()
			for _, pr := range eng.problems {
				t.Error(pr)
			}
			eng.mu.Unlock()
			m := scrape(t, p)
			if tc.reason != "" && m[`fusionrag_proxy_fallbacks_total{reason="`+tc.reason+`"}`] != 1 {
				t.Errorf("fallbacks{reason=%s} != 1\n%s", tc.reason, m)
			}
			if tc.skip != "" && m[`fusionrag_proxy_skips_total{reason="`+tc.skip+`"}`] != 1 {
				t.Errorf("skips{reason=%s} != 1\n%s", tc.skip, m)
			}
			if c := p.BreakerCounts(); c.TotalFailures != tc.failures {
				t.Errorf("breaker failures %d, want %d", c.TotalFailures, tc.failures)
			}
			// What the engine received first: pinned to the lease's slot
			// (never the client's 7) on the fused path, the client's body
			// untouched otherwise.
			first := <-bodies
			var got struct {
				IDSlot *int64 `json:"id_slot"`
			}
			_ = json.Unmarshal([]byte(first), &got)
			fused := tc.published == 1 && tc.rewriteErr == nil && tc.name != "late plan"
			switch {
			case fused && (got.IDSlot == nil || *got.IDSlot == 7 || strings.Count(first, "id_slot") != 1):
				t.Errorf("fused request %s: want exactly one id_slot, the lease's", first)
			case !fused && (got.IDSlot == nil || *got.IDSlot != 7):
				t.Errorf("original request %s: want the client's id_slot 7 untouched", first)
			}
		})
	}
}

// TestMismatchRetiresAdapter: an adapter the fuser opened that reports
// ErrMismatch at publish is closed once its outstanding leases are
// released, and not re-opened before mismatchReopen; a mismatch at open is
// not retried within mismatchReopen either.
func TestMismatchRetiresAdapter(t *testing.T) {
	m := storiesModel(t)
	cfg := proxy.DefaultConfig()
	cfg.Upstream = "http://127.0.0.1:1"
	cfg.Fusion.Separator = " # # "
	cfg.Fusion.MaxMissingFraction = 1
	var opens atomic.Int64
	var mismatch atomic.Bool
	first := &slotEngine{behave: func(context.Context) error {
		if mismatch.Load() {
			return fmt.Errorf("fake: handshake: %w", adapters.ErrMismatch)
		}
		return nil
	}}
	f, err := New(Config{Proxy: cfg, Model: m, OpenEngine: func(context.Context) (adapters.Engine, error) {
		if opens.Add(1) == 1 {
			return first, nil
		}
		return nil, fmt.Errorf("fake open: %w", adapters.ErrMismatch)
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	text := "Once upon a time # # " + storyA + " # # " + storyB + " # # The end"
	req := func() *proxy.Request {
		r, _ := proxy.ParseRequest(proxy.RouteCompletions, []byte(`{"prompt":`+jsonString(text)+`}`))
		r.Tenant, r.TenantSource = proxy.TenantOf("", "")
		return r
	}
	held, err := f.Fuse(context.Background(), req())
	if err != nil {
		t.Fatal(err)
	}
	mismatch.Store(true)
	_, err = f.Fuse(context.Background(), req())
	var fe *proxy.FallbackError
	if !errors.As(err, &fe) || fe.Reason != proxy.ReasonEngineMismatch {
		t.Fatalf("publish mismatch: %v, want a %s fallback", err, proxy.ReasonEngineMismatch)
	}
	if first.closed.Load() != 0 {
		t.Fatal("retired adapter closed while a lease was still held")
	}
	held.Lease.Release()
	if first.closed.Load() != 1 {
		t.Fatalf("retired adapter closed %d times after its last lease, want 1", first.closed.Load())
	}
	for i := 0; i < 3; i++ {
		if _, err := f.Fuse(context.Background(), req()); !errors.As(err, &fe) || fe.Reason != proxy.ReasonEngineMismatch {
			t.Fatalf("after retirement: %v, want a %s fallback", err, proxy.ReasonEngineMismatch)
		}
	}
	if n := opens.Load(); n != 1 {
		t.Errorf("adapter opened %d times within mismatchReopen, want 1", n)
	}
}
