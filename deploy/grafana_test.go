package deploy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/fusionrag/fusionrag/adapters"
	"github.com/fusionrag/fusionrag/internal/proxytest"
	"github.com/fusionrag/fusionrag/proxy"
)

// dashboard is what the test reads of a Grafana dashboard.
type dashboard struct {
	Title  string  `json:"title"`
	UID    string  `json:"uid"`
	Panels []panel `json:"panels"`
}

type panel struct {
	Title   string `json:"title"`
	Targets []struct {
		Expr string `json:"expr"`
	} `json:"targets"`
	Panels []panel `json:"panels"` // rows
}

// exposedNames scrapes /metrics of a real sidecar after a fused, a skipped
// and a failed request (an OTel instrument appears on the page once it has
// a point) and returns every sample name on the page.
func exposedNames(t *testing.T) map[string]bool {
	t.Helper()
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `{"ok":true}`)
	}))
	defer up.Close()
	cfg := proxy.DefaultConfig()
	cfg.Upstream = up.URL
	results := []error{nil, proxy.SkipWith(proxy.SkipTooManyMissing, proxy.Stats{Chunks: 2, Misses: 2}), errors.New("boom")}
	i := 0
	_, base := proxytest.Start(t, cfg, proxy.WithFuser(proxy.FuserFunc(func(context.Context, *proxy.Request) (*proxy.Plan, error) {
		err := results[i%len(results)]
		i++
		if err != nil {
			return nil, err
		}
		return &proxy.Plan{Lease: adapters.KVParamsLease{Namespace: "ns"},
			Stats: proxy.Stats{Chunks: 2, Hits: 1, Misses: 1, RecomputedTokens: 3, BytesLoaded: 10}}, nil
	})))
	for range results {
		resp, err := http.Post(base+"/v1/chat/completions", "application/json",
			strings.NewReader(`{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"c"},{"type":"text","text":"q"}]}]}`))
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	resp, err := http.Get(base + cfg.MetricsPath)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	page, _ := io.ReadAll(resp.Body)
	names := map[string]bool{}
	for _, line := range strings.Split(string(page), "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		names[strings.FieldsFunc(line, func(r rune) bool { return r == '{' || r == ' ' })[0]] = true
	}
	return names
}

// metricRef matches the metric names a PromQL expression uses: the
// project's own (a dashboard of this repository queries nothing else).
var metricRef = regexp.MustCompile(`\b(fusionrag_[a-z0-9_]+)\b`)

// TestGrafanaDashboard: deploy/grafana/fusionrag.json is valid JSON, every
// panel has a query, and every metric name a query uses is one a running
// sidecar exposes on /metrics (a renamed metric would leave a panel empty
// without any error).
func TestGrafanaDashboard(t *testing.T) {
	b, err := os.ReadFile("grafana/fusionrag.json")
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("grafana/fusionrag.json: %v", err)
	}
	if d.Title == "" || d.UID == "" || len(d.Panels) == 0 {
		t.Fatalf("dashboard without title, uid or panels: %+v", d)
	}
	exposed := exposedNames(t)
	used := map[string]bool{}
	var walk func([]panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			walk(p.Panels)
			if len(p.Panels) > 0 {
				continue // a row
			}
			if len(p.Targets) == 0 {
				t.Errorf("panel %q has no query", p.Title)
			}
			for _, tg := range p.Targets {
				refs := metricRef.FindAllString(tg.Expr, -1)
				if len(refs) == 0 {
					t.Errorf("panel %q: query %q names no fusionrag metric", p.Title, tg.Expr)
				}
				for _, name := range refs {
					used[name] = true
					if !exposed[name] {
						t.Errorf("panel %q queries %s, which the sidecar does not expose", p.Title, name)
					}
				}
			}
		}
	}
	walk(d.Panels)
	var names []string
	for n := range used {
		names = append(names, n)
	}
	sort.Strings(names)
	t.Logf("dashboard queries %d metrics, all exposed: %s", len(names), strings.Join(names, ", "))
	// The three views must be there.
	for _, want := range []string{"fusionrag_proxy_chunks_total", "fusionrag_proxy_fallbacks_total", "fusionrag_proxy_skips_total", "fusionrag_proxy_ttft_seconds_bucket"} {
		if !used[want] {
			t.Errorf("dashboard never queries %s", want)
		}
	}
}
