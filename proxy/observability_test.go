package proxy

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// What an operator sees (issue 19): the cache header, hit and miss
// accounting over every eligible request, the documented spans.

// TestCacheHeader pins the header for each way an eligible request goes,
// the engine's own value never passing through, and the setting that turns
// it off or renames it.
func TestCacheHeader(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set(HeaderCache, "path=fusion hit=9/9 recomputed=0") // an engine (or another sidecar) claiming
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `{"ok":true}`)
	}))
	defer up.Close()
	stats := Stats{Chunks: 4, Hits: 1, Misses: 3}
	fuser := func(err error, plan *Plan) Option {
		return WithFuser(FuserFunc(func(context.Context, *Request) (*Plan, error) { return plan, err }))
	}
	for _, tc := range []struct {
		name   string
		header string // telemetry.cache_header
		opt    Option
		path   string
		want   map[string]string // header -> value ("" absent)
	}{
		{"fused", "", fuser(nil, okPlan("ns")), "/v1/chat/completions",
			map[string]string{HeaderCache: "path=fusion hit=3/4 recomputed=42"}},
		{"skipped with stats", "", fuser(SkipWith(SkipTooManyMissing, stats), nil), "/v1/chat/completions",
			map[string]string{HeaderCache: "path=passthrough reason=too_many_missing hit=1/4"}},
		{"skipped before segmentation", "", fuser(Skip(SkipNoChunks), nil), "/v1/completions",
			map[string]string{HeaderCache: "path=passthrough reason=no_chunks"}},
		{"fallback", "", fuser(errors.New("boom"), nil), "/v1/chat/completions",
			map[string]string{HeaderCache: "path=fallback reason=fuser_error"}},
		{"fallback with stats", "", fuser(&FallbackError{Reason: ReasonEngineMismatch, Err: errors.New("x"), Stats: &stats}, nil), "/v1/chat/completions",
			map[string]string{HeaderCache: "path=fallback reason=engine_mismatch hit=1/4"}},
		{"no fusion path", "", nil, "/v1/chat/completions",
			map[string]string{HeaderCache: "path=passthrough reason=fusion_off"}},
		{"off", "-", fuser(nil, okPlan("ns")), "/v1/chat/completions",
			map[string]string{HeaderCache: ""}},
		{"renamed", "X-Cache-Info", fuser(nil, okPlan("ns")), "/v1/chat/completions",
			map[string]string{HeaderCache: "", "X-Cache-Info": "path=fusion hit=3/4 recomputed=42"}},
		{"other routes relayed untouched", "", fuser(nil, okPlan("ns")), "/v1/embeddings",
			map[string]string{HeaderCache: "path=fusion hit=9/9 recomputed=0"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := upstreamConfig(up.URL)
			cfg.Telemetry.CacheHeader = tc.header
			var opts []Option
			if tc.opt != nil {
				opts = append(opts, tc.opt)
			}
			_, base := startProxy(t, cfg, opts...)
			body := chatBody
			if tc.path == "/v1/completions" {
				body = `{"model":"m","prompt":"x"}`
			}
			resp, err := http.Post(base+tc.path, "application/json", strings.NewReader(body))
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			for k, want := range tc.want {
				if got := resp.Header.Get(k); got != want {
					t.Errorf("%s: %q, want %q", k, got, want)
				}
			}
		})
	}
}

// TestAccountingOverEveryEligibleRequest: chunks and lookups are counted
// for skipped and failed requests too, and the request span carries the
// counts.
func TestAccountingOverEveryEligibleRequest(t *testing.T) {
	up := httptest.NewServer(&recorder{})
	defer up.Close()
	errs := []error{
		SkipWith(SkipTooManyMissing, Stats{Chunks: 4, Misses: 4}),
		&FallbackError{Reason: ReasonEngineMismatch, Err: errors.New("x"), Stats: &Stats{Chunks: 2, Hits: 1, Misses: 1}},
		Skip(SkipNoChunks),
		errors.New("boom"),
		nil, // okPlan: 3 hits, 1 miss
	}
	i := 0
	p, base := startProxy(t, upstreamConfig(up.URL), WithFuser(FuserFunc(func(context.Context, *Request) (*Plan, error) {
		err := errs[i]
		i++
		if err != nil {
			return nil, err
		}
		return okPlan("ns"), nil
	})))
	for range errs {
		if code, _ := post(t, base+"/v1/chat/completions", chatBody); code != 200 {
			t.Fatal(code)
		}
	}
	m := scrape(t, p)
	for series, want := range map[string]float64{
		`fusionrag_proxy_chunks_total{result="hit"}`:      0 + 1 + 3,
		`fusionrag_proxy_chunks_total{result="miss"}`:     4 + 1 + 1,
		`fusionrag_proxy_lookups_total{result="miss"}`:    1,
		`fusionrag_proxy_lookups_total{result="partial"}`: 2,
		`fusionrag_proxy_lookups_total{result="none"}`:    1,
		`fusionrag_proxy_lookups_total{result="unknown"}`: 1,
	} {
		if m[series] != want {
			t.Errorf("%s = %v, want %v\n%s", series, m[series], want, m)
		}
	}
}
