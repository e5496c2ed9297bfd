package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"strings"
	"time"

	_ "github.com/fusionrag/fusionrag/adapters/llamacpp" // the adapter measured
	"github.com/fusionrag/fusionrag/internal/llamaserver"
	"github.com/fusionrag/fusionrag/kvstore"
	"github.com/fusionrag/fusionrag/model"
	"github.com/fusionrag/fusionrag/proxy"
	"github.com/fusionrag/fusionrag/sidecar"
)

// LlamaCppConfig configures RunLlamaCpp: time to first token of RAG
// prompts answered by an unmodified llama-server, prefilling them itself
// (full) or fed by the sidecar through the llamacpp adapter (the sidecar's
// strategies), all in one run on one machine.
type LlamaCppConfig struct {
	// Model is the sidecar's model, loaded from GGUF (the file the server
	// loads, so both tokenize alike). Required, with its tokenizer.
	Model *model.Model
	// GGUF is the file llama-server loads: the one Model was loaded from.
	GGUF string
	// Bin is the llama-server binary. Required.
	Bin string
	// Name labels the model in the report.
	Name string
	// Contexts are the context sizes (tokens of the chunks, roughly);
	// default 2048, 4096.
	Contexts []int
	// Chunks per prompt; default 10.
	Chunks int
	// Strategies of the sidecar timed against the server's full prefill;
	// default reuse, fusionrag.
	Strategies []string
	// Ratio of the partial strategies; default 0.15.
	Ratio float64
	// Rounds: each (context, method) is timed this many times, methods
	// interleaved within a round; the fastest is kept. Default 3.
	Rounds int
	// Threads of llama-server (-t, -tb); 0: its default.
	Threads int
	// Progress, when set, receives one line per measurement.
	Progress io.Writer
	// Seed makes the prompts reproducible.
	Seed uint64
}

// LlamaCppRow is one method at one context size.
type LlamaCppRow struct {
	Model         string  `json:"model"`
	Method        string  `json:"method"` // "full (llama-server)" or the sidecar's strategy
	Ratio         float64 `json:"ratio"`
	ContextTokens int     `json:"context_tokens"`
	PromptTokens  int     `json:"prompt_tokens"`
	// CachedTokens is what the server reported it did not prefill
	// (usage.prompt_tokens_details.cached_tokens): the restored slot's
	// tokens on the fusion path, 0 for full.
	CachedTokens int `json:"cached_tokens"`
	// TTFTMs is the fastest client-side time to the first streamed token
	// of the requests the server answered from the restored slot (-1: none
	// was); FullTTFTMs the server's own full prefill's in the same run.
	TTFTMs     float64 `json:"ttft_ms"`
	FullTTFTMs float64 `json:"full_ttft_ms"`
	Speedup    float64 `json:"speedup"`
	// Fused counts the timed requests the server answered from a restored
	// slot (CachedTokens = prompt - 1); Rounds the requests timed.
	Fused  int `json:"fused"`
	Rounds int `json:"rounds"`
}

func (c *LlamaCppConfig) fill() error {
	if c.Model == nil || c.Model.Tokenizer == nil {
		return errors.New("bench: LlamaCppConfig.Model with its tokenizer is required")
	}
	if c.GGUF == "" || c.Bin == "" {
		return errors.New("bench: LlamaCppConfig needs GGUF and Bin")
	}
	if c.Contexts == nil {
		c.Contexts = []int{2048, 4096}
	}
	if c.Chunks <= 0 {
		c.Chunks = 10
	}
	if c.Strategies == nil {
		c.Strategies = []string{"reuse", "fusionrag"}
	}
	if c.Ratio == 0 {
		c.Ratio = 0.15
	}
	if c.Rounds <= 0 {
		c.Rounds = 3
	}
	if c.Name == "" {
		c.Name = "model"
	}
	return nil
}

// llamaWords is the vocabulary of the generated passages: plain English
// words, which any tokenizer splits into a handful of ids each.
var llamaWords = strings.Fields(`the a river town old new market bridge north south winter summer king queen
farmer teacher built found opened closed under over near far before after red green stone wood glass iron
school church mill harbour road hill valley lake forest field garden house tower wall gate year century people
trade grain wool salt fish horse cart ship storm fire flood festival song story letter map record council`)

// llamaPrompt is a RAG prompt in the separator convention of the stack
// (S sep C_1 sep ... sep C_k sep Q), with about ctx tokens of chunks. The
// sidecar removes the separators; each piece after S starts on a new line.
func llamaPrompt(tok interface{ Encode(string) []int32 }, rng *rand.Rand, ctx, chunks int) string {
	per := ctx / chunks
	var b strings.Builder
	b.WriteString("Answer the question from the passages below.")
	for range chunks {
		b.WriteString(StackSeparator)
		var p strings.Builder
		p.WriteString("\nPassage: ")
		for len(tok.Encode(p.String())) < per {
			for range 2 {
				p.WriteString(llamaWords[rng.IntN(len(llamaWords))])
				p.WriteByte(' ')
			}
		}
		b.WriteString(strings.TrimRight(p.String(), " "))
	}
	b.WriteString(StackSeparator)
	b.WriteString(fmt.Sprintf("\nQuestion: which %s was %s near the %s? Answer:", pick(rng, llamaWords), pick(rng, llamaWords), pick(rng, llamaWords)))
	return b.String()
}

// RunLlamaCpp starts llama-server on c.GGUF with a slot directory, a fusion
// sidecar in front of it with the llamacpp adapter over a memory store,
// warms the store with one pass over the prompts, then times each prompt
// sent straight to the server with its prompt cache off (the server's own
// full prefill) and through the sidecar with each strategy.
func RunLlamaCpp(ctx context.Context, c LlamaCppConfig) ([]LlamaCppRow, error) {
	if err := c.fill(); err != nil {
		return nil, err
	}
	m := c.Model
	rng := rand.New(rand.NewPCG(c.Seed, 0x11a3a))
	maxCtx := 0
	prompts := make([]string, len(c.Contexts))
	for i, n := range c.Contexts {
		prompts[i] = llamaPrompt(m.Tokenizer, rng, n, c.Chunks)
		maxCtx = max(maxCtx, len(m.Tokenizer.Encode(prompts[i]))+64)
	}
	if maxCtx > m.Config.MaxPositions {
		return nil, fmt.Errorf("bench: prompts need %d positions, the model holds %d", maxCtx, m.Config.MaxPositions)
	}
	slots, err := os.MkdirTemp("", "fusionrag-slots-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(slots)
	// Two slots: a released slot is erased in the background before it is
	// leased again (its fused KV must not serve a later request), so
	// back-to-back requests alternate between them instead of finding the
	// only slot busy. Each slot holds the largest prompt.
	srv, err := llamaserver.Start(ctx, llamaserver.Config{Bin: c.Bin, Model: c.GGUF, Context: 2 * maxCtx, Slots: 2, Threads: c.Threads,
		// --cache-ram 0: the server's RAM prompt cache off, as the llamacpp
		// adapter requires (docs/llamacpp.md).
		Args: []string{"--slot-save-path", slots, "--cache-ram", "0", "--override-kv", fmt.Sprintf("%s.context_length=int:%d", m.Config.GGUFArch(), m.Config.MaxPositions)}})
	if err != nil {
		return nil, err
	}
	defer srv.Close()

	store, err := kvstore.Open("mem://?max=4GiB")
	if err != nil {
		return nil, err
	}
	defer store.Close()
	pcfg := proxy.DefaultConfig()
	pcfg.Upstream = srv.URL
	pcfg.Fusion.Separator = StackSeparator
	pcfg.Fusion.Adapter = "llamacpp"
	pcfg.Fusion.SlotDir = slots
	pcfg.Fusion.MaxMissingFraction = 1 // the warm-up pass computes and stores every chunk
	pcfg.Timeouts.Fusion = 10 * time.Minute
	// Built as fusionrag serve builds it (package sidecar); the store is
	// this function's.
	stack := &Stack{EngineURL: srv.URL}
	defer stack.Close()
	sidecarURL, err := stack.sidecar(sidecar.Config{Proxy: pcfg, Model: m, Store: store})
	if err != nil {
		return nil, err
	}

	client := &http.Client{Timeout: 10 * time.Minute}
	body := func(prompt string, direct bool) ([]byte, error) {
		req := map[string]any{"model": c.Name, "prompt": prompt, "max_tokens": 1, "temperature": 0,
			"stream": true, "stream_options": map[string]any{"include_usage": true}}
		if direct {
			// The server's own prompt cache off: a full prefill every time,
			// as for RAG prompts that differ from request to request. The
			// sidecar strips separators before forwarding; the direct
			// request sends the text the server sees behind the sidecar.
			req["cache_prompt"] = false
			req["prompt"] = strings.ReplaceAll(prompt, StackSeparator, "")
		}
		return json.Marshal(req)
	}
	send := func(prompt, strategy string) (StreamResult, error) {
		b, err := body(prompt, strategy == "")
		if err != nil {
			return StreamResult{}, err
		}
		base := sidecarURL
		headers := map[string]string{"Accept": "text/event-stream"}
		if strategy == "" {
			base = srv.URL
		} else {
			headers[proxy.HeaderStrategy] = strategy
			headers[proxy.HeaderRatio] = fmt.Sprint(c.Ratio)
		}
		return StreamCompletion(ctx, client, base, headers, b)
	}
	// Warm-up: every chunk computed and stored, the server's graphs built.
	// The direct request tells how many tokens the server makes of the
	// prompt without separators: a fused request runs exactly those
	// (a fallback forwards the original, separators included).
	direct := make([]int, len(prompts))
	for i, p := range prompts {
		for _, s := range []string{"", "reuse"} {
			res, err := send(p, s)
			if err != nil {
				return nil, fmt.Errorf("bench: warm-up: %w", err)
			}
			if s == "" {
				direct[i] = res.PromptTokens
			}
		}
	}
	methods := append([]string{""}, c.Strategies...)
	defer func() {
		// Why sidecar requests were not fused: the sidecar's own counters.
		if c.Progress == nil {
			return
		}
		resp, err := client.Get(sidecarURL + "/metrics")
		if err != nil {
			return
		}
		defer resp.Body.Close()
		raw, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		for _, l := range strings.Split(string(raw), "\n") {
			if strings.HasPrefix(l, "fusionrag_proxy_skips") || strings.HasPrefix(l, "fusionrag_proxy_fallbacks") || strings.HasPrefix(l, "fusionrag_proxy_requests") {
				fmt.Fprintln(c.Progress, "sidecar:", l)
			}
		}
	}()
	var rows []LlamaCppRow
	for i, n := range c.Contexts {
		best := make([]LlamaCppRow, len(methods))
		for j, s := range methods {
			best[j] = LlamaCppRow{Model: c.Name, Method: s, ContextTokens: n, TTFTMs: -1}
			if s == "" {
				best[j].Method = "full (llama-server)"
			} else if s != "reuse" {
				best[j].Ratio = c.Ratio
			}
		}
		for r := range c.Rounds {
			for j, s := range methods {
				res, err := send(prompts[i], s)
				if err != nil {
					return nil, fmt.Errorf("bench: %s at %d: %w", best[j].Method, n, err)
				}
				row := &best[j]
				row.Rounds++
				// Fused: the server ran the separator-free prompt and found
				// all but its last token in the restored slot. (A fallback
				// that the server answers from its own cache of an earlier
				// fallback also shows cached = prompt - 1, with more tokens.)
				fused := s != "" && res.PromptTokens == direct[i] && res.CachedTokens == res.PromptTokens-1
				if fused {
					row.Fused++
				}
				// A sidecar request that fell back (the original forwarded
				// untouched) is counted, not timed as the strategy.
				if t := ms(res.TTFT); (s == "" || fused) && (row.TTFTMs < 0 || t < row.TTFTMs) {
					row.TTFTMs = t
					row.PromptTokens, row.CachedTokens = res.PromptTokens, res.CachedTokens
				}
				if c.Progress != nil {
					fmt.Fprintf(c.Progress, "llamacpp %d round %d/%d %s: TTFT %.1f ms, prompt %d, cached %d\n",
						n, r+1, c.Rounds, row.Method, ms(res.TTFT), res.PromptTokens, res.CachedTokens)
				}
			}
		}
		for j := range best {
			best[j].FullTTFTMs = best[0].TTFTMs
			if best[j].TTFTMs > 0 {
				best[j].Speedup = best[0].TTFTMs / best[j].TTFTMs
			}
		}
		rows = append(rows, best...)
	}
	return rows, nil
}

// LlamaCppTable renders rows as a Markdown table.
func LlamaCppTable(rows []LlamaCppRow, params int64, elapsed time.Duration) Table {
	t := Table{Header: []string{"context", "method", "ratio", "prompt tokens", "server prefilled", "TTFT ms", "full ms", "speedup", "fused"}}
	if len(rows) > 0 {
		t.Title = fmt.Sprintf("TTFT through llama-server on %s (%.1fM parameters): its own full prefill vs the sidecar's strategies (llamacpp adapter)",
			rows[0].Model, float64(params)/1e6)
	}
	for _, r := range rows {
		ratio := "-"
		if r.Ratio > 0 {
			ratio = pct(r.Ratio)
		}
		ttft, speedup := f(r.TTFTMs, 1), f(r.Speedup, 2)+"x"
		if r.TTFTMs < 0 {
			ttft, speedup = "none fused", "-"
		}
		fused := fmt.Sprintf("%d/%d", r.Fused, r.Rounds)
		if r.Method == "full (llama-server)" {
			fused = "-"
		}
		t.Rows = append(t.Rows, []string{fmt.Sprint(r.ContextTokens), r.Method, ratio, fmt.Sprint(r.PromptTokens),
			fmt.Sprint(r.PromptTokens - r.CachedTokens), ttft, f(r.FullTTFTMs, 1), speedup, fused})
	}
	t.Notes = append(t.Notes, "TTFT: client-side time to the first streamed token, fastest of the rounds; methods interleaved within a round. "+
		"full: the prompt sent straight to llama-server with cache_prompt off (it prefills every token with its own kernels). "+
		"Other rows: the same prompt through the sidecar, which loads chunk KV from its memory store, recomputes with the strategy on the "+
		"Go runtime, writes the prompt's KV as a slot file, restores it into a server slot and pins the request there; "+
		"'server prefilled' is prompt tokens minus the server's cached_tokens, 'fused' the requests the server answered from the restored slot.",
		fmt.Sprintf("Measured in %s.", elapsed.Round(time.Millisecond)))
	return t
}
