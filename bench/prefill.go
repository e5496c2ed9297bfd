package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net/http"
	"runtime"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/fusionrag/fusionrag/model"
	"github.com/fusionrag/fusionrag/recompute"
)

// PrefillConfig configures RunPrefill, which fills zero fields with the
// defaults documented here.
//
// The harness answers one question: how fast does this runtime prefill a
// prompt compared with the engine in front of which the sidecar runs? A
// fused request pays only when the sidecar's recompute costs less than the
// engine prefilling everything itself, so the engine's own prefill is the
// bar. Both sides run the same token ids on the same weights (the server
// must have loaded the GGUF the model was loaded from, or written by
// `fusionrag convert`); the top logits of the last position are compared so
// that a table of two different models cannot pass for a comparison.
type PrefillConfig struct {
	// Model is the Go runtime timed. Required.
	Model *model.Model
	// Name labels the model in the report.
	Name string
	// Sizes are the prompt lengths in tokens; default 512, 1024, 2048, 4096.
	Sizes []int
	// Rounds: every size is timed this many times on each side, the two
	// sides interleaved (Go, server, Go, server...) so that a noisy
	// neighbour hits both alike; the fastest run of each side is kept.
	// Default 5.
	Rounds int
	// Server is a llama-server base URL ("http://127.0.0.1:8080"); empty:
	// the Go runtime alone. Its prefill time is the server's own
	// timings.prompt_ms of a completion with cache_prompt off.
	Server string
	// Client talks to Server; default a client with a 10-minute timeout.
	Client *http.Client
	// TopK logits compared between the two sides; default 10.
	TopK int
	// Seed makes the token ids reproducible.
	Seed uint64
	// Progress, when set, receives one line per measurement.
	Progress io.Writer
}

// PrefillRow is one prompt length.
type PrefillRow struct {
	Model   string `json:"model"`
	Backend string `json:"backend"`
	Tokens  int    `json:"tokens"`
	// GFLOP is the work of the prefill (recompute.PassCost: GEMMs,
	// causal attention, one row of logits), the same for both sides.
	GFLOP float64 `json:"gflop"`
	// GoMs is the fastest Model.Forward of the whole prompt (one row of
	// logits); GoTokS and GoGFLOPS follow from it.
	GoMs     float64 `json:"go_ms"`
	GoTokS   float64 `json:"go_tok_s"`
	GoGFLOPS float64 `json:"go_gflops"`
	// Server* are the server's (0 without a server): fastest
	// timings.prompt_ms of the same ids.
	ServerMs     float64 `json:"server_ms,omitempty"`
	ServerTokS   float64 `json:"server_tok_s,omitempty"`
	ServerGFLOPS float64 `json:"server_gflops,omitempty"`
	// Ratio is GoTokS / ServerTokS: above 1 the Go runtime prefills faster.
	Ratio float64 `json:"ratio,omitempty"`
	// TopAgree counts how many of the server's top-K ids at the last
	// position are in the Go runtime's top-K, of TopCompared: the ids the
	// server gave a non-zero probability (a random-weight model's
	// distribution is so peaked that the others underflow to 0 in the
	// server's float32 softmax); Top1 whether the first agree;
	// MaxLogprobDiff the largest |log-prob difference| over the ids both
	// listed.
	TopAgree       int     `json:"top_agree,omitempty"`
	TopCompared    int     `json:"top_compared,omitempty"`
	Top1           bool    `json:"top1,omitempty"`
	MaxLogprobDiff float64 `json:"max_logprob_diff,omitempty"`
}

func (c *PrefillConfig) fill() error {
	if c.Model == nil {
		return errors.New("bench: PrefillConfig.Model is nil")
	}
	if c.Sizes == nil {
		c.Sizes = []int{512, 1024, 2048, 4096}
	}
	if c.Rounds <= 0 {
		c.Rounds = 5
	}
	if c.TopK <= 0 {
		c.TopK = 10
	}
	if c.Name == "" {
		c.Name = "model"
	}
	if c.Client == nil {
		c.Client = &http.Client{Timeout: 10 * time.Minute}
	}
	c.Server = strings.TrimRight(c.Server, "/")
	for _, n := range c.Sizes {
		if n < 2 || n > c.Model.Config.MaxPositions {
			return fmt.Errorf("bench: prefill size %d outside [2, %d] (the model's positions)", n, c.Model.Config.MaxPositions)
		}
	}
	return nil
}

// prefillIDs is a prompt of n ids: the model's BOS when it has one, then
// ids drawn uniformly from [3, vocab) (clear of the usual special ids).
func prefillIDs(m *model.Model, n int, rng *rand.Rand) []int32 {
	ids := make([]int32, n)
	for i := range ids {
		ids[i] = int32(3 + rng.IntN(m.Config.Vocab-3))
	}
	if m.Tokenizer != nil && m.Tokenizer.BOS() >= 0 {
		ids[0] = m.Tokenizer.BOS()
	}
	return ids
}

// RunPrefill times full prefills of the Go runtime and, when c.Server is
// set, of that llama-server, on the same ids.
func RunPrefill(ctx context.Context, c PrefillConfig) ([]PrefillRow, error) {
	if err := c.fill(); err != nil {
		return nil, err
	}
	rng := rand.New(rand.NewPCG(c.Seed, 0x9e3779b97f4a7c15))
	m := c.Model
	// Warm-up: the first pass maps weights and grows the buffer pools.
	warm := prefillIDs(m, min(64, m.Config.MaxPositions), rng)
	if _, err := goPrefill(ctx, m, warm); err != nil {
		return nil, err
	}
	if c.Server != "" {
		if _, err := serverPrefill(ctx, c, warm); err != nil {
			return nil, err
		}
	}
	var rows []PrefillRow
	for _, n := range c.Sizes {
		ids := prefillIDs(m, n, rng)
		pos := make([]int32, n)
		for i := range pos {
			pos[i] = int32(i)
		}
		row := PrefillRow{Model: c.Name, Backend: m.Backend().Name(), Tokens: n,
			GFLOP: recompute.PassCost(m.Config, nil, pos, m.Config.Layers, 1).Total() / 1e9}
		goBest, srvBest := time.Duration(math.MaxInt64), time.Duration(math.MaxInt64)
		var goLogits []float32
		var srv serverResult
		for r := range c.Rounds {
			t, logits, err := timeGoPrefill(ctx, m, ids)
			if err != nil {
				return nil, err
			}
			goBest, goLogits = min(goBest, t), logits
			if c.Server != "" {
				if srv, err = serverPrefill(ctx, c, ids); err != nil {
					return nil, err
				}
				srvBest = min(srvBest, srv.prompt)
			}
			if c.Progress != nil {
				line := fmt.Sprintf("prefill %d tokens round %d/%d: go %.1f ms", n, r+1, c.Rounds, ms(t))
				if c.Server != "" {
					line += fmt.Sprintf(", server %.1f ms", ms(srv.prompt))
				}
				fmt.Fprintln(c.Progress, line)
			}
		}
		row.GoMs = ms(goBest)
		row.GoTokS = float64(n) / goBest.Seconds()
		row.GoGFLOPS = row.GFLOP / goBest.Seconds()
		if c.Server != "" {
			row.ServerMs = ms(srvBest)
			row.ServerTokS = float64(n) / srvBest.Seconds()
			row.ServerGFLOPS = row.GFLOP / srvBest.Seconds()
			row.Ratio = row.GoTokS / row.ServerTokS
			row.TopAgree, row.TopCompared, row.Top1, row.MaxLogprobDiff = compareTop(goLogits, srv.top, c.TopK)
		}
		rows = append(rows, row)
	}
	return rows, nil
}

func goPrefill(ctx context.Context, m *model.Model, ids []int32) ([]float32, error) {
	pos := make([]int32, len(ids))
	for i := range pos {
		pos[i] = int32(i)
	}
	res, err := m.Forward(ctx, nil, model.Batch{Tokens: ids, Pos: pos}, model.ForwardOptions{Logits: []int{len(ids) - 1}})
	if err != nil {
		return nil, err
	}
	return res.Logits[0], nil
}

func timeGoPrefill(ctx context.Context, m *model.Model, ids []int32) (time.Duration, []float32, error) {
	runtime.GC() // the previous round's garbage is not this one's cost
	start := time.Now()
	logits, err := goPrefill(ctx, m, ids)
	return time.Since(start), logits, err
}

// serverResult is what one llama-server completion told.
type serverResult struct {
	prompt time.Duration // timings.prompt_ms
	top    []serverProb  // the first generated token's top log-probs
}

type serverProb struct {
	ID      int32   `json:"id"`
	Logprob float64 `json:"logprob"`
}

// serverPrefill runs one completion of ids on the server with its prompt
// cache off (every id prefilled) and one predicted token, whose top
// log-probabilities are those of the prompt's last position.
func serverPrefill(ctx context.Context, c PrefillConfig, ids []int32) (serverResult, error) {
	body, err := json.Marshal(map[string]any{"prompt": ids, "n_predict": 1, "temperature": 0,
		"cache_prompt": false, "n_probs": c.TopK, "post_sampling_probs": false})
	if err != nil {
		return serverResult{}, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.Server+"/completion", bytes.NewReader(body))
	if err != nil {
		return serverResult{}, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.Client.Do(req)
	if err != nil {
		return serverResult{}, fmt.Errorf("bench: llama-server: %w", err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return serverResult{}, fmt.Errorf("bench: llama-server: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return serverResult{}, fmt.Errorf("bench: llama-server answered %d: %.300s", resp.StatusCode, raw)
	}
	var out struct {
		Timings struct {
			PromptN  int     `json:"prompt_n"`
			PromptMs float64 `json:"prompt_ms"`
		} `json:"timings"`
		Probs []struct {
			Top []serverProb `json:"top_logprobs"`
		} `json:"completion_probabilities"`
	}
	if err := json.Unmarshal(raw, &out); err != nil {
		return serverResult{}, fmt.Errorf("bench: llama-server answer: %w", err)
	}
	if out.Timings.PromptN != len(ids) {
		// Anything else means the server reused a cache or added tokens:
		// the time would not be a prefill of these ids.
		return serverResult{}, fmt.Errorf("bench: llama-server prefilled %d tokens of a %d-token prompt (prompt cache on, or a BOS added?)",
			out.Timings.PromptN, len(ids))
	}
	r := serverResult{prompt: time.Duration(out.Timings.PromptMs * float64(time.Millisecond))}
	if len(out.Probs) > 0 {
		r.top = out.Probs[0].Top
	}
	return r, nil
}

// compareTop compares the server's top log-probabilities with the Go
// runtime's logits: how many of the server's top-k ids are among Go's
// top-k, whether the first agree, and the largest log-probability
// difference over the server's ids.
func compareTop(logits []float32, top []serverProb, k int) (agree, compared int, top1 bool, maxDiff float64) {
	if len(top) == 0 || len(logits) == 0 {
		return 0, 0, false, 0
	}
	// log-softmax in float64.
	mx := math.Inf(-1)
	for _, v := range logits {
		mx = math.Max(mx, float64(v))
	}
	var sum float64
	for _, v := range logits {
		sum += math.Exp(float64(v) - mx)
	}
	lse := mx + math.Log(sum)
	order := make([]int, len(logits))
	for i := range order {
		order[i] = i
	}
	sort.SliceStable(order, func(a, b int) bool { return logits[order[a]] > logits[order[b]] })
	goTop := order[:min(k, len(order))]
	for i, p := range top {
		if p.ID < 0 || int(p.ID) >= len(logits) || p.Logprob < -1e30 {
			continue // the server writes the lowest float for a probability of 0
		}
		compared++
		if slices.Contains(goTop, int(p.ID)) {
			agree++
		}
		if i == 0 {
			top1 = int(p.ID) == goTop[0]
		}
		maxDiff = math.Max(maxDiff, math.Abs(float64(logits[p.ID])-lse-p.Logprob))
	}
	return agree, compared, top1, maxDiff
}

// PrefillTable renders rows as a Markdown table.
func PrefillTable(rows []PrefillRow, server string, elapsed time.Duration) Table {
	t := Table{Header: []string{"prompt tokens", "GFLOP", "Go ms", "Go tok/s", "Go GFLOP/s"}}
	if server != "" {
		t.Header = append(t.Header, "llama.cpp ms", "llama.cpp tok/s", "llama.cpp GFLOP/s", "Go / llama.cpp", "top-k agree", "max |Δ logprob|")
	}
	if len(rows) > 0 {
		t.Title = fmt.Sprintf("Full prefill of %s, backend %s, GOMAXPROCS %d", rows[0].Model, rows[0].Backend, runtime.GOMAXPROCS(0))
	}
	for _, r := range rows {
		row := []string{fmt.Sprint(r.Tokens), f(r.GFLOP, 1), f(r.GoMs, 1), f(r.GoTokS, 0), f(r.GoGFLOPS, 1)}
		if server != "" {
			row = append(row, f(r.ServerMs, 1), f(r.ServerTokS, 0), f(r.ServerGFLOPS, 1), f(r.Ratio, 2),
				fmt.Sprintf("%d/%d%s", r.TopAgree, r.TopCompared, map[bool]string{true: " (top-1 same)", false: " (top-1 differs)"}[r.Top1]),
				f(r.MaxLogprobDiff, 4))
		}
		t.Rows = append(t.Rows, row)
	}
	t.Notes = append(t.Notes, "Fastest of the interleaved rounds on each side. Go: Model.Forward of the whole prompt with one row of logits, "+
		"wall clock. llama.cpp: the server's own timings.prompt_ms for the same ids (cache_prompt off, prompt_n checked), "+
		"so HTTP and JSON are not counted against it. GFLOP: GEMMs + causal attention + one row of logits (recompute.PassCost). "+
		"top-k agree: the server's top-k ids at the last position (those with a non-zero probability) found in the Go runtime's top-k.",
		fmt.Sprintf("Measured in %s.", elapsed.Round(time.Millisecond)))
	return t
}
