package engine

import (
	"fmt"
	"io"
	"sort"
	"sync"
	"sync/atomic"
)

// metrics are the engine's counters, exposed in the Prometheus text format
// on /metrics.
type metrics struct {
	promptTokens atomic.Int64
	genTokens    atomic.Int64
	cachedTokens atomic.Int64
	kvPushes     atomic.Int64
	ttft         histogram

	mu       sync.Mutex
	requests map[[2]string]int64 // (endpoint, status code) -> count
	lookups  map[string]int64    // KV lookup result -> count
}

func newMetrics() *metrics {
	return &metrics{
		requests: map[[2]string]int64{},
		lookups:  map[string]int64{},
		ttft:     histogram{bounds: []float64{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}},
	}
}

func (m *metrics) request(endpoint string, status int) {
	m.mu.Lock()
	m.requests[[2]string{endpoint, fmt.Sprint(status)}]++
	m.mu.Unlock()
}

func (m *metrics) lookup(result string) {
	m.mu.Lock()
	m.lookups[result]++
	m.mu.Unlock()
}

// histogram is a cumulative Prometheus histogram.
type histogram struct {
	mu     sync.Mutex
	bounds []float64
	counts []int64 // per bound, non-cumulative; last is +Inf
	sum    float64
	n      int64
}

func (h *histogram) observe(v float64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.counts == nil {
		h.counts = make([]int64, len(h.bounds)+1)
	}
	i := sort.SearchFloat64s(h.bounds, v)
	h.counts[i]++
	h.sum += v
	h.n++
}

func (m *metrics) write(w io.Writer, running, waiting int) {
	p := func(format string, a ...any) { fmt.Fprintf(w, format, a...) }
	p("# HELP fusionrag_engine_requests_total HTTP requests by endpoint and status code.\n")
	p("# TYPE fusionrag_engine_requests_total counter\n")
	m.mu.Lock()
	keys := make([][2]string, 0, len(m.requests))
	for k := range m.requests {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i][0]+keys[i][1] < keys[j][0]+keys[j][1] })
	for _, k := range keys {
		p("fusionrag_engine_requests_total{endpoint=%q,code=%q} %d\n", k[0], k[1], m.requests[k])
	}
	p("# HELP fusionrag_engine_kv_lookups_total KV connector lookups by result (hit, miss, mismatch, error).\n")
	p("# TYPE fusionrag_engine_kv_lookups_total counter\n")
	res := make([]string, 0, len(m.lookups))
	for k := range m.lookups {
		res = append(res, k)
	}
	sort.Strings(res)
	for _, k := range res {
		p("fusionrag_engine_kv_lookups_total{result=%q} %d\n", k, m.lookups[k])
	}
	m.mu.Unlock()
	for _, c := range []struct {
		name, help string
		v          int64
	}{
		{"fusionrag_engine_prompt_tokens_total", "Prompt tokens of admitted requests.", m.promptTokens.Load()},
		{"fusionrag_engine_generation_tokens_total", "Generated tokens.", m.genTokens.Load()},
		{"fusionrag_engine_cached_tokens_total", "Prompt tokens whose KV was loaded instead of prefilled.", m.cachedTokens.Load()},
		{"fusionrag_engine_kv_pushes_total", "KV blobs accepted on PUT /v1/kv/{key}.", m.kvPushes.Load()},
	} {
		p("# HELP %s %s\n# TYPE %s counter\n%s %d\n", c.name, c.help, c.name, c.name, c.v)
	}
	p("# HELP fusionrag_engine_requests_running Requests in the running batch.\n# TYPE fusionrag_engine_requests_running gauge\n")
	p("fusionrag_engine_requests_running %d\n", running)
	p("# HELP fusionrag_engine_requests_waiting Requests waiting for a slot.\n# TYPE fusionrag_engine_requests_waiting gauge\n")
	p("fusionrag_engine_requests_waiting %d\n", waiting)
	h := &m.ttft
	h.mu.Lock()
	p("# HELP fusionrag_engine_time_to_first_token_seconds From admission to the first generated token.\n")
	p("# TYPE fusionrag_engine_time_to_first_token_seconds histogram\n")
	var cum int64
	for i, b := range h.bounds {
		if h.counts != nil {
			cum += h.counts[i]
		}
		p("fusionrag_engine_time_to_first_token_seconds_bucket{le=\"%g\"} %d\n", b, cum)
	}
	p("fusionrag_engine_time_to_first_token_seconds_bucket{le=\"+Inf\"} %d\n", h.n)
	p("fusionrag_engine_time_to_first_token_seconds_sum %g\n", h.sum)
	p("fusionrag_engine_time_to_first_token_seconds_count %d\n", h.n)
	h.mu.Unlock()
}
