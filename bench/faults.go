package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fusionrag/fusionrag/fingerprint"
	"github.com/fusionrag/fusionrag/kvstore"
	"github.com/fusionrag/fusionrag/model"
)

// FaultConfig configures RunFaults, the fault-and-load harness (issue 18):
// closed-loop completions through the fusion sidecar while Redis is
// killed, stalled, its values and the disk tier's files corrupted, and the
// engine restarted. RunFaults fills zero fields with the defaults
// documented here.
type FaultConfig struct {
	// Model is served by the engine and computes the fusion path's KV; it
	// needs a tokenizer. Required.
	Model *model.Model
	// Requests sent over the phases (at least: see After); default 3200.
	Requests int
	// Concurrency is the number of closed-loop clients; default 16.
	Concurrency int
	// Prompts is the number of distinct RAG prompts, half of each class
	// (ClassLocal, ClassRedis); default 64.
	Prompts int
	// Passages per prompt (chunks); default 4.
	Passages int
	// MaxTokens per completion (greedy); default 8.
	MaxTokens int
	// EngineDown is how long the engine stays down when restarted;
	// default 1 s.
	EngineDown time.Duration
	// RetryPause is how long a client waits after a failed request before
	// its next one (a client with a retry back-off: without it, 16 clients
	// refused at once would send thousands of requests into a down
	// engine); default 100 ms.
	RetryPause time.Duration
	// After is the least duration of the last phase, which keeps the
	// clients sending (beyond Requests if need be) until the fusion path
	// has recovered from the engine restart; default 12 s (the breaker
	// stays open 10 s by default). Negative: no minimum.
	After time.Duration
	// Timeout of one request; default 1 minute.
	Timeout time.Duration
	// Dir holds the disk tier; "" is a temporary directory.
	Dir string
	// Progress receives the progress bar; Quiet silences it.
	Progress io.Writer
	Quiet    bool
}

func (c *FaultConfig) fill() error {
	if c.Model == nil || c.Model.Tokenizer == nil {
		return errors.New("bench: FaultConfig.Model with a tokenizer is required")
	}
	def := func(p *int, v int) {
		if *p <= 0 {
			*p = v
		}
	}
	def(&c.Requests, 3200)
	def(&c.Concurrency, 16)
	def(&c.Prompts, 64)
	def(&c.Passages, 4)
	def(&c.MaxTokens, 8)
	if c.Prompts < 2 {
		c.Prompts = 2
	}
	if c.EngineDown <= 0 {
		c.EngineDown = time.Second
	}
	if c.RetryPause <= 0 {
		c.RetryPause = 100 * time.Millisecond
	}
	if c.Timeout <= 0 {
		c.Timeout = time.Minute
	}
	if c.After == 0 {
		c.After = 12 * time.Second
	}
	if c.Requests < len(faultPhases) {
		return fmt.Errorf("bench: %d requests for %d fault phases", c.Requests, len(faultPhases))
	}
	return nil
}

// FaultPhase is one phase of the run: its fault, and what the requests that
// started in it got.
type FaultPhase struct {
	Phase string `json:"phase"`
	Fault string `json:"fault"`
	// Note says what the fault did (files corrupted, keys placed...).
	Note    string  `json:"note,omitempty"`
	Seconds float64 `json:"seconds"`
	FaultCounts
	// FusedLocal and FusedRedis split Fused by the prompt's chunk class.
	FusedLocal int `json:"fused_local"`
	FusedRedis int `json:"fused_redis"`
	// FusedPerS, FusedLocalPerS: fused requests per second of the phase.
	FusedPerS      float64 `json:"fused_per_s"`
	FusedLocalPerS float64 `json:"fused_local_per_s"`
	FusedRedisPerS float64 `json:"fused_redis_per_s"`
	// Paths, Skips and Fallbacks are the sidecar's metrics over the phase:
	// requests by path (fusion, passthrough, fallback), skips and
	// fallbacks by reason.
	Paths     map[string]float64 `json:"paths,omitempty"`
	Skips     map[string]float64 `json:"skips,omitempty"`
	Fallbacks map[string]float64 `json:"fallbacks,omitempty"`
	// Store counts the tiered store's events over the phase
	// ("disk corruptions", "redis skipped"...).
	Store map[string]int64 `json:"store,omitempty"`
}

// FaultCounts are the outcomes of the requests of a phase, or of the whole
// run (the sum of its phases).
type FaultCounts struct {
	Requests int `json:"requests"`
	OK       int `json:"ok"`
	// FailedEngineDown failed while the engine was down (their request
	// overlapped a down window); Failed failed outside one.
	FailedEngineDown int `json:"failed_engine_down"`
	Failed           int `json:"failed"`
	Wrong            int `json:"wrong"`
	// Fused answers came from KV the sidecar published (the engine's usage
	// cached_tokens above 0).
	Fused int `json:"fused"`
}

func (c *FaultCounts) add(o FaultCounts) {
	c.Requests += o.Requests
	c.OK += o.OK
	c.FailedEngineDown += o.FailedEngineDown
	c.Failed += o.Failed
	c.Wrong += o.Wrong
	c.Fused += o.Fused
}

// FaultGoal is one of issue 18's goals, measured.
type FaultGoal struct {
	Goal     string `json:"goal"`
	Measured string `json:"measured"`
	Met      bool   `json:"met"`
}

// FaultResult is what RunFaults measured.
type FaultResult struct {
	FaultCounts // over every phase
	// Causes counts failures by cause ("HTTP 502", "transport"...), with
	// " (engine down)" appended to those in a down window.
	Causes map[string]int `json:"causes"`
	// WrongExamples are a few wrong answers, for the report.
	WrongExamples []string `json:"wrong_examples,omitempty"`
	// FirstErrors are a few failures outside engine-down windows.
	FirstErrors []string `json:"first_errors,omitempty"`
	// PeakRSSMiB is the peak resident set of this process (engine,
	// sidecars and clients: everything but redis-server), VmHWM.
	PeakRSSMiB float64 `json:"peak_rss_mib"`
	// ReferenceUnstable counts prompts whose two clean fused passes gave
	// different answers (both are accepted); ReferenceNotFused those the
	// clean pass did not fuse.
	ReferenceUnstable int          `json:"reference_unstable"`
	ReferenceNotFused int          `json:"reference_not_fused"`
	Phases            []FaultPhase `json:"phases"`
	Goals             []FaultGoal  `json:"goals"`
	Seconds           float64      `json:"seconds"`
}

// faultPhaseSpec is one phase: its share of the requests, the fault it
// starts with and what ends it.
type faultPhaseSpec struct {
	name, fault string
	share       float64
	begin       func(ctx context.Context, r *faultRun) (string, error)
	end         func(ctx context.Context, r *faultRun) error
}

var faultPhases = []faultPhaseSpec{
	{name: "baseline", fault: "none", share: 0.15},
	{name: "redis-killed", fault: "Redis SIGKILLed (local chunks out of Redis, Redis chunks in Redis only)", share: 0.15,
		begin: func(ctx context.Context, r *faultRun) (string, error) {
			r.st.place(ctx, r.local, r.remote)
			r.st.redis.Kill()
			return fmt.Sprintf("%d local keys out of Redis, %d Redis keys out of memory and disk, then SIGKILL", len(r.local), len(r.remote)), nil
		},
		end: func(ctx context.Context, r *faultRun) error { return r.st.redis.Restart() }},
	{name: "redis-back", fault: "Redis restarted empty at the start", share: 0.10},
	{name: "redis-stalled", fault: "Redis SIGSTOPped (the disk's blobs copied into Redis, then the same placement, the Redis tier up), SIGCONT at the end", share: 0.10,
		begin: func(ctx context.Context, r *faultRun) (string, error) {
			n, err := r.st.seedRedis(ctx)
			if err != nil {
				return "", err
			}
			r.st.place(ctx, r.local, r.remote)
			// Stall a tier in use: one still down since the kill would be
			// skipped and the stall never seen.
			took, up := r.st.redisTierUp(ctx, r.remote, 2*kvstore.DefaultTierBackoffMax)
			note := fmt.Sprintf("%d blobs copied into Redis; the Redis tier up again after %.1f s", n, took.Seconds())
			if !up {
				note = fmt.Sprintf("%d blobs copied into Redis; the Redis tier still down after %.1f s", n, took.Seconds())
			}
			return note, r.st.redis.Stop()
		},
		end: func(ctx context.Context, r *faultRun) error { return r.st.redis.Cont() }},
	{name: "corrupt", fault: "one byte flipped in every disk file and every Redis value (the disk's blobs copied into Redis first); memory tier emptied", share: 0.15,
		begin: func(ctx context.Context, r *faultRun) (string, error) {
			ns, err := r.st.seedRedis(ctx)
			if err != nil {
				return "", err
			}
			r.st.dropMem(ctx, r.local, r.remote)
			nd, err := r.st.flipDisk()
			if err != nil {
				return "", err
			}
			nr, err := r.st.flipRedis(ctx)
			return fmt.Sprintf("%d disk blobs copied into Redis first; %d disk files and %d Redis values flipped", ns, nd, nr), err
		}},
	{name: "truncate", fault: "every disk file truncated to half; memory tier emptied", share: 0.10,
		begin: func(ctx context.Context, r *faultRun) (string, error) {
			r.st.dropMem(ctx, r.local, r.remote)
			n, err := r.st.truncateDisk()
			return fmt.Sprintf("%d disk files truncated", n), err
		}},
	{name: "engine-restart", fault: "engine closed (in-flight requests fail), down for a window, a new one started on the same port", share: 0.15,
		begin: func(ctx context.Context, r *faultRun) (string, error) {
			from := time.Now()
			r.st.killEngine()
			time.Sleep(r.cfg.EngineDown)
			err := r.st.startEngine()
			r.addWindow(from, time.Now())
			return fmt.Sprintf("down %v", r.cfg.EngineDown), err
		}},
	{name: "after", fault: "none", share: 0.10},
}

// faultAnswers are the answers a prompt may get: the engine's alone on the
// prompt without separators (what the fusion path sends) and with them (a
// fallback forwards the original), and the fusion path's in two clean
// passes (the first computing the chunks, the second loading them).
type faultAnswers struct {
	full, fullSep, fused1, fused2 string
}

// faultRecord is one request of the load.
type faultRecord struct {
	phase      int
	class      string
	start, end time.Time
	err        error
	fused      bool
	wrong      bool
	text       string
	prompt     int
}

type faultRun struct {
	cfg     FaultConfig
	st      *faultStack
	prompts []faultPrompt
	refs    []faultAnswers
	local   []fingerprint.Key
	remote  []fingerprint.Key

	mu      sync.Mutex
	windows [][2]time.Time
}

func (r *faultRun) addWindow(from, to time.Time) {
	r.mu.Lock()
	r.windows = append(r.windows, [2]time.Time{from, to})
	r.mu.Unlock()
}

// inWindow: the request [start, end] overlapped an engine-down window.
func (r *faultRun) inWindow(start, end time.Time) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, w := range r.windows {
		if start.Before(w[1]) && end.After(w[0]) {
			return true
		}
	}
	return false
}

// RunFaults runs the fault-and-load harness: it starts the stack (engine,
// redis-server, mem + disk + Redis store, sidecars), computes every
// prompt's reference answers, places the chunks, then sends Requests
// completions from Concurrency clients through the sidecar while the
// phases' faults are applied, and checks every answer.
func RunFaults(ctx context.Context, c FaultConfig) (*FaultResult, error) {
	if err := c.fill(); err != nil {
		return nil, err
	}
	prompts, err := faultPrompts(c.Model, c.Prompts, c.Passages, c.MaxTokens, 18)
	if err != nil {
		return nil, err
	}
	st, err := startFaultStack(c.Model, c.Dir)
	if err != nil {
		return nil, err
	}
	defer st.close()
	r := &faultRun{cfg: c, st: st, prompts: prompts, refs: make([]faultAnswers, len(prompts))}
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: c.Concurrency, IdleConnTimeout: time.Minute, DisableCompression: true}}
	defer client.CloseIdleConnections()
	res := &FaultResult{Causes: map[string]int{}}
	if err := r.references(ctx, client, res); err != nil {
		return nil, err
	}
	start := time.Now()
	recs, phases, err := r.load(ctx, client)
	if err != nil {
		return nil, err
	}
	res.Seconds = time.Since(start).Seconds()
	r.summarise(res, recs, phases)
	return res, nil
}

// each runs f on every prompt index from conc goroutines.
func each(n, conc int, f func(i int) error) error {
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make([]error, conc)
	for w := range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n || errs[w] != nil {
					return
				}
				errs[w] = f(i)
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// references warms the store class by class (recording which keys each
// class's chunks have) and computes every prompt's reference answers.
func (r *faultRun) references(ctx context.Context, client *http.Client, res *FaultResult) error {
	ask := func(base, prompt string) (StreamResult, error) {
		rctx, cancel := context.WithTimeout(ctx, r.cfg.Timeout)
		defer cancel()
		return StreamCompletion(rctx, client, base, nil, completionBody("", prompt, r.cfg.MaxTokens))
	}
	conc := min(r.cfg.Concurrency, 4)
	for _, class := range []string{ClassLocal, ClassRedis} {
		before, err := r.st.diskFiles()
		if err != nil {
			return err
		}
		err = each(len(r.prompts), conc, func(i int) error {
			p := r.prompts[i]
			if p.class != class {
				return nil
			}
			a, err := ask(r.st.warmURL, p.text)
			if err != nil {
				return fmt.Errorf("bench: warm-up of prompt %d: %w", i, err)
			}
			r.refs[i].fused1 = a.Text
			if a.CachedTokens == 0 {
				r.refs[i].fused1 = ""
			}
			return nil
		})
		if err != nil {
			return err
		}
		after, err := r.st.diskFiles()
		if err != nil {
			return err
		}
		for k := range after {
			if _, ok := before[k]; ok {
				continue
			}
			if class == ClassLocal {
				r.local = append(r.local, k)
			} else {
				r.remote = append(r.remote, k)
			}
		}
	}
	if len(r.local) == 0 || len(r.remote) == 0 {
		return fmt.Errorf("bench: the warm-up stored %d local and %d Redis-class chunks: the fusion path did not store chunks", len(r.local), len(r.remote))
	}
	err := each(len(r.prompts), conc, func(i int) error {
		p := r.prompts[i]
		a, err := ask(r.st.side.EngineURL, p.stripped())
		if err != nil {
			return fmt.Errorf("bench: reference of prompt %d: %w", i, err)
		}
		b, err := ask(r.st.side.EngineURL, p.text)
		if err != nil {
			return fmt.Errorf("bench: reference of prompt %d with separators: %w", i, err)
		}
		f, err := ask(r.st.loadURL, p.text)
		if err != nil {
			return fmt.Errorf("bench: fused reference of prompt %d: %w", i, err)
		}
		r.refs[i].full, r.refs[i].fullSep = a.Text, b.Text
		if f.CachedTokens > 0 {
			r.refs[i].fused2 = f.Text
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, a := range r.refs {
		if a.fused1 == "" || a.fused2 == "" {
			res.ReferenceNotFused++
		} else if a.fused1 != a.fused2 {
			res.ReferenceUnstable++
		}
	}
	return nil
}

// check reports whether an answer is wrong: a request the engine answered
// without loaded KV must have the engine's own answer; a fused one the
// engine's or the clean fusion path's.
func (a faultAnswers) check(text string, fused bool) (wrong bool) {
	if text == a.full || text == a.fullSep {
		return false
	}
	if fused && text != "" && (text == a.fused1 || text == a.fused2) {
		return false
	}
	return true
}

// storeEvents snapshots the tiered store's counters worth reporting.
func storeEvents(st kvstore.Store) map[string]int64 {
	out := map[string]int64{}
	for _, t := range st.Stats() {
		for name, v := range map[string]int64{"hits": t.Hits, "misses": t.Misses, "corruptions": t.Corruptions,
			"errors": t.Errors, "skipped (down)": t.Skips, "went down": t.Downs} {
			out[t.Tier+" "+name] += v
		}
	}
	return out
}

func diffMetrics(a, b map[string]float64) map[string]float64 {
	out := map[string]float64{}
	for k, v := range b {
		if d := v - a[k]; d != 0 {
			out[k] = d
		}
	}
	return out
}

// load sends the requests while a controller walks the phases.
func (r *faultRun) load(ctx context.Context, client *http.Client) ([]faultRecord, []FaultPhase, error) {
	c := r.cfg
	var (
		recsMu sync.Mutex
		recs   []faultRecord
		next   atomic.Int64
		done   atomic.Int64
		phase  atomic.Int32
		stop   atomic.Bool
	)
	bar := NewProgress(c.Progress, "faults", c.Requests, c.Quiet)
	defer bar.Done()
	var wg sync.WaitGroup
	for range c.Concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() && ctx.Err() == nil {
				pi := int(next.Add(1)-1) % len(r.prompts)
				p := r.prompts[pi]
				rec := faultRecord{phase: int(phase.Load()), class: p.class, prompt: pi, start: time.Now()}
				rctx, cancel := context.WithTimeout(ctx, c.Timeout)
				a, err := StreamCompletion(rctx, client, r.st.loadURL, nil, completionBody("", p.text, c.MaxTokens))
				cancel()
				rec.end, rec.err = time.Now(), err
				if err == nil {
					rec.fused = a.CachedTokens > 0
					rec.text = a.Text
					rec.wrong = r.refs[pi].check(a.Text, rec.fused)
				}
				recsMu.Lock()
				recs = append(recs, rec)
				recsMu.Unlock()
				if done.Add(1) <= int64(c.Requests) {
					bar.Add(1)
				}
				if err != nil {
					time.Sleep(c.RetryPause)
				}
			}
		}()
	}
	metrics := func() map[string]float64 {
		m, _ := scrapeMetrics(client, r.st.loadURL)
		return m
	}
	phases := make([]FaultPhase, len(faultPhases))
	var ctlErr error
	threshold := 0.0
	for k, spec := range faultPhases {
		threshold += spec.share
		until := int64(threshold * float64(c.Requests))
		if k == len(faultPhases)-1 {
			until = int64(c.Requests)
		}
		m0, s0 := metrics(), storeEvents(r.st.store)
		phase.Store(int32(k))
		t0 := time.Now()
		ph := FaultPhase{Phase: spec.name, Fault: spec.fault}
		if spec.begin != nil && ctlErr == nil {
			note, err := spec.begin(ctx, r)
			ph.Note = note
			if err != nil {
				ctlErr = fmt.Errorf("bench: phase %s: %w", spec.name, err)
			}
		}
		last := k == len(faultPhases)-1
		for ctx.Err() == nil && (done.Load() < until || last && time.Since(t0) < c.After) {
			time.Sleep(2 * time.Millisecond)
		}
		if spec.end != nil && ctlErr == nil {
			if err := spec.end(ctx, r); err != nil {
				ctlErr = fmt.Errorf("bench: end of phase %s: %w", spec.name, err)
			}
		}
		ph.Seconds = time.Since(t0).Seconds()
		m1, s1 := metrics(), storeEvents(r.st.store)
		dm := diffMetrics(m0, m1)
		ph.Paths = metricByLabel(dm, "fusionrag_proxy_requests_total", "path")
		ph.Skips = metricByLabel(dm, "fusionrag_proxy_skips_total", "reason")
		ph.Fallbacks = metricByLabel(dm, "fusionrag_proxy_fallbacks_total", "reason")
		ph.Store = map[string]int64{}
		for name, v := range s1 {
			if d := v - s0[name]; d != 0 && !strings.HasSuffix(name, " hits") && !strings.HasSuffix(name, " misses") {
				ph.Store[name] = d
			}
		}
		phases[k] = ph
	}
	stop.Store(true)
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}
	return recs, phases, ctlErr
}

// summarise fills res from the records.
func (r *faultRun) summarise(res *FaultResult, recs []faultRecord, phases []FaultPhase) {
	for _, rec := range recs {
		ph := &phases[rec.phase]
		ph.Requests++
		switch {
		case rec.err != nil:
			cause := failureCause(rec.err)
			if r.inWindow(rec.start, rec.end) {
				ph.FailedEngineDown++
				cause += " (engine down)"
			} else {
				ph.Failed++
				if len(res.FirstErrors) < 5 {
					res.FirstErrors = append(res.FirstErrors, fmt.Sprintf("phase %s: %v", ph.Phase, rec.err))
				}
			}
			res.Causes[cause]++
		case rec.wrong:
			ph.Wrong++
			if len(res.WrongExamples) < 5 {
				a := r.refs[rec.prompt]
				res.WrongExamples = append(res.WrongExamples, fmt.Sprintf("phase %s, prompt %d (fused %v): got %q, want %q (engine) or %q (fused)",
					ph.Phase, rec.prompt, rec.fused, rec.text, a.full, a.fused2))
			}
		default:
			ph.OK++
		}
		if rec.err == nil && rec.fused {
			ph.Fused++
			if rec.class == ClassLocal {
				ph.FusedLocal++
			} else {
				ph.FusedRedis++
			}
		}
	}
	for i := range phases {
		ph := &phases[i]
		res.add(ph.FaultCounts)
		if ph.Seconds > 0 {
			ph.FusedPerS = float64(ph.Fused) / ph.Seconds
			ph.FusedLocalPerS = float64(ph.FusedLocal) / ph.Seconds
			ph.FusedRedisPerS = float64(ph.FusedRedis) / ph.Seconds
		}
	}
	res.Phases = phases
	res.PeakRSSMiB = float64(peakRSSKiB()) / 1024
	base, outage := phases[0], phases[1]
	ratio := 0.0
	if base.FusedLocalPerS > 0 {
		ratio = outage.FusedLocalPerS / base.FusedLocalPerS
	}
	res.Goals = []FaultGoal{
		{Goal: "0 wrong answers", Measured: fmt.Sprintf("%d wrong of %d answered", res.Wrong, res.Requests-res.Failed-res.FailedEngineDown), Met: res.Wrong == 0},
		{Goal: "0 failed outside engine-down windows", Measured: fmt.Sprintf("%d failed outside, %d inside", res.Failed, res.FailedEngineDown), Met: res.Failed == 0},
		{Goal: "fusion throughput during the Redis outage >= 50% of baseline, for chunks in other tiers",
			Measured: fmt.Sprintf("local-class fused %.1f/s during, %.1f/s before: %.0f%%", outage.FusedLocalPerS, base.FusedLocalPerS, 100*ratio),
			Met:      ratio >= 0.5},
	}
}

// failureCause names what a failed request got.
func failureCause(err error) string {
	var se *StatusError
	switch {
	case errors.As(err, &se):
		return fmt.Sprintf("HTTP %d", se.Code)
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	case errors.Is(err, ErrStream):
		return "bad event stream"
	default:
		return "transport error"
	}
}

// FaultTables renders the result.
func FaultTables(res *FaultResult) []Table {
	sum := Table{Title: "Fault-and-load run: totals",
		Header: []string{"requests", "ok", "failed in engine-down windows", "failed outside", "wrong", "fused", "peak RSS MiB", "seconds"},
		Rows: [][]string{{fmt.Sprint(res.Requests), fmt.Sprint(res.OK), fmt.Sprint(res.FailedEngineDown), fmt.Sprint(res.Failed),
			fmt.Sprint(res.Wrong), fmt.Sprint(res.Fused), f(res.PeakRSSMiB, 0), f(res.Seconds, 1)}}}
	sum.Notes = append(sum.Notes, "Peak RSS: VmHWM of the harness process, which holds the engine, both sidecars, the store's memory and disk "+
		"tiers and the clients (redis-server is a separate process, not counted). Fused: the engine's usage reported prompt tokens loaded "+
		"from KV the sidecar published.")
	if res.ReferenceNotFused > 0 || res.ReferenceUnstable > 0 {
		sum.Notes = append(sum.Notes, fmt.Sprintf("References: %d prompts not fused in a clean pass, %d with two different clean fused answers (both accepted).",
			res.ReferenceNotFused, res.ReferenceUnstable))
	}
	sum.Notes = append(sum.Notes, res.WrongExamples...)
	sum.Notes = append(sum.Notes, res.FirstErrors...)

	ph := Table{Title: "Fault-and-load run: phases",
		Header: []string{"phase", "requests", "ok", "failed (engine down)", "failed (outside)", "wrong", "fused", "fused/s",
			"local fused/s", "vs baseline", "Redis-class fused/s", "sidecar paths", "skips", "fallbacks", "store events"}}
	base := res.Phases[0].FusedLocalPerS
	for _, p := range res.Phases {
		vs := "-"
		if base > 0 {
			vs = fmt.Sprintf("%.0f%%", 100*p.FusedLocalPerS/base)
		}
		ph.Rows = append(ph.Rows, []string{p.Phase, fmt.Sprint(p.Requests), fmt.Sprint(p.OK), fmt.Sprint(p.FailedEngineDown),
			fmt.Sprint(p.Failed), fmt.Sprint(p.Wrong), fmt.Sprint(p.Fused), f(p.FusedPerS, 1), f(p.FusedLocalPerS, 1), vs,
			f(p.FusedRedisPerS, 1), counts(p.Paths), counts(p.Skips), counts(p.Fallbacks), counts(p.Store)})
	}
	for _, p := range res.Phases {
		line := fmt.Sprintf("%s: %s", p.Phase, p.Fault)
		if p.Note != "" {
			line += " (" + p.Note + ")"
		}
		ph.Notes = append(ph.Notes, line+fmt.Sprintf("; %.1f s.", p.Seconds))
	}
	ph.Notes = append(ph.Notes, "Local: prompts whose chunks are in the memory and disk tiers, not in Redis, when a Redis fault starts; "+
		"Redis-class: prompts whose chunks are then in Redis only. Throughput is fused requests per second of the phase's wall time, "+
		"a request counted in the phase it started in.")

	causes := Table{Title: "Fault-and-load run: failures by cause", Header: []string{"cause", "requests"}}
	for _, k := range slices.Sorted(maps.Keys(res.Causes)) {
		causes.Rows = append(causes.Rows, []string{k, fmt.Sprint(res.Causes[k])})
	}
	if len(causes.Rows) == 0 {
		causes.Rows = append(causes.Rows, []string{"none", "0"})
	}
	goals := Table{Title: "Fault-and-load run: goals (issue 18)", Header: []string{"goal", "measured", "met"}}
	for _, g := range res.Goals {
		met := "no"
		if g.Met {
			met = "yes"
		}
		goals.Rows = append(goals.Rows, []string{g.Goal, g.Measured, met})
	}
	return []Table{sum, ph, causes, goals}
}

// counts renders a map as "k n, k n" sorted by key, "-" when empty.
func counts[V int64 | float64](m map[string]V) string {
	if len(m) == 0 {
		return "-"
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s %v", k, m[k])
	}
	return strings.Join(parts, ", ")
}
