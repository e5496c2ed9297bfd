package bench

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/fusionrag/fusionrag/proxy"
)

// demoMeasure sends every query once per strategy through the sidecar (and
// once straight to the engine, as a reference), rotating the order of the
// strategies from one query to the next so that none always runs first.
func demoMeasure(ctx context.Context, cfg *DemoConfig, st *demoStack, rec *demoRecorder, corpus *demoCorpus, prompts []demoPrompt,
	modelName string, bar *Progress) ([]DemoQueryResult, []time.Duration, error) {
	client := &http.Client{Timeout: 5 * time.Minute}
	defer client.CloseIdleConnections()
	sidecar, direct := st.sidecarURL, st.engineURL

	// Warm-up: opens the adapter and the connections, not measured.
	if len(prompts) > 0 {
		body, err := CompletionBody(modelName, "warm-up", demoPayload(cfg, prompts[0]), 1)
		if err != nil {
			return nil, nil, err
		}
		if _, err := demoComplete(ctx, client, sidecar, body, "reuse", cfg.Ratio); err != nil {
			return nil, nil, fmt.Errorf("demo: warm-up request: %w", err)
		}
		rec.take("warm-up")
	}

	cfg.stage("sending %d queries × %d strategies through the sidecar", len(prompts), len(cfg.Strategies))
	var out []DemoQueryResult
	var directTTFT []time.Duration
	for qi, p := range prompts {
		q := corpus.Queries[qi]
		ids := p.Tokens()
		ctxTokens := len(ids) - len(p.Prefix) - len(p.Question)
		order := slices.Clone(cfg.Strategies)
		order = append(order, "direct")
		k := qi % len(order)
		order = append(order[k:], order[:k]...)
		for _, s := range order {
			user := q.ID + "/" + s
			body, err := CompletionBody(modelName, user, demoPayload(cfg, p), cfg.MaxTokens)
			if err != nil {
				return nil, nil, err
			}
			if s == "direct" {
				c, err := demoComplete(ctx, client, direct, body, "", 0)
				if err != nil {
					return nil, nil, fmt.Errorf("demo: query %s straight to the engine: %w", q.ID, err)
				}
				directTTFT = append(directTTFT, c.FirstChoice)
				bar.Add(1)
				continue
			}
			c, err := demoComplete(ctx, client, sidecar, body, s, cfg.Ratio)
			if err != nil {
				return nil, nil, fmt.Errorf("demo: query %s, strategy %s: %w", q.ID, s, err)
			}
			o, ok := rec.take(user)
			qr := DemoQueryResult{Query: q.ID, Strategy: s, TTFTMs: ms(c.FirstChoice), PromptTokens: c.PromptTokens,
				ContextTokens: ctxTokens, CachedTokens: c.CachedTokens, Answer: c.Text}
			switch {
			case !ok:
				qr.Path = proxy.PathPassthrough
			case o.err != nil:
				qr.Path = proxy.PathFallback + ": " + o.err.Error()
			case c.CachedTokens == 0:
				qr.Path = proxy.PathFallback + ": the engine loaded no published KV"
			default:
				qr.Path = proxy.PathFusion
				qr.Hits, qr.Misses, qr.Recomputed = o.stats.Hits, o.stats.Misses, o.stats.RecomputedTokens
			}
			if s == "full" && qr.Path == proxy.PathFusion {
				qr.Recomputed = ctxTokens
			}
			out = append(out, qr)
			bar.Add(1)
		}
	}
	return out, directTTFT, nil
}

// demoPayload is the "prompt" member of p's requests.
func demoPayload(cfg *DemoConfig, p demoPrompt) any {
	if cfg.Format == DemoFormatText {
		return p.Text
	}
	return p.Tokens()
}

// aggregateDemo turns results into one row per strategy.
func aggregateDemo(strategies []string, ratio float64, results []DemoQueryResult) []DemoRow {
	answers := map[string]string{} // query -> full's answer
	for _, r := range results {
		if r.Strategy == "full" {
			answers[r.Query] = r.Answer
		}
	}
	var rows []DemoRow
	for _, s := range strategies {
		row := DemoRow{Strategy: s, Ratio: ratio}
		var ttft, fid []float64
		hits, lookups := 0, 0
		reasons := map[string]bool{}
		for _, r := range results {
			if r.Strategy != s {
				continue
			}
			row.Requests++
			ttft = append(ttft, r.TTFTMs)
			if r.Path == proxy.PathFusion {
				row.Fused++
				hits += r.Hits
				lookups += r.Hits + r.Misses
				if r.ContextTokens > 0 {
					row.Recomputed += float64(r.Recomputed) / float64(r.ContextTokens)
				}
			} else {
				reasons[r.Path] = true
			}
			if r.PromptTokens > 0 {
				row.CachedShare += float64(r.CachedTokens) / float64(r.PromptTokens)
			}
			if r.Top1 {
				row.Top1++
			}
			row.KL += r.KL
			row.LogitErr += r.LogitErr
			fid = append(fid, r.Fidelity)
			if a, ok := answers[r.Query]; ok && a == r.Answer {
				row.SameAnswer++
			}
		}
		if row.Requests > 0 {
			n := float64(row.Requests)
			row.CachedShare /= n
			row.Top1 /= n
			row.KL /= n
			row.LogitErr /= n
			row.Fidelity = demoMedian(fid)
			row.SameAnswer /= n
			row.TTFTMedianMs = demoMedian(ttft)
			row.TTFTMeanMs = mean(ttft)
		}
		if row.Fused > 0 {
			row.Recomputed /= float64(row.Fused)
		}
		if lookups > 0 {
			row.HitRate = float64(hits) / float64(lookups)
		}
		for r := range reasons {
			row.FallbackReasons = append(row.FallbackReasons, r)
		}
		sort.Strings(row.FallbackReasons)
		rows = append(rows, row)
	}
	if len(rows) > 0 && rows[0].Strategy == "full" {
		for i := range rows {
			if rows[i].TTFTMedianMs > 0 {
				rows[i].Speedup = rows[0].TTFTMedianMs / rows[i].TTFTMedianMs
			}
		}
	}
	return rows
}

func demoNotes(cfg *DemoConfig, r *DemoReport, direct []time.Duration) []string {
	var ds []float64
	for _, d := range direct {
		ds = append(ds, ms(d))
	}
	n := []string{
		fmt.Sprintf("TTFT: wall time from sending a streamed /v1/completions request to the sidecar to its first token, median over %d queries; "+
			"the sidecar's fusion path (look up chunk KV, recompute, publish the prompt's KV to the engine) is inside it. "+
			"Speedup = full's median / the strategy's, measured in this run. For reference, the engine alone (no sidecar, plain prefill): %.1f ms median.",
			r.Queries, demoMedian(ds)),
		"full: the sidecar prefills the whole prompt and publishes it; reuse: stored chunk KV as is (0% recomputed); " +
			fmt.Sprintf("cacheblend and fusionrag recompute %.0f%% of the context tokens (fused chunk KV from the offline stage).", 100*cfg.Ratio),
		"hit rate: chunks found in the store by the fusion path; recomputed: context tokens recomputed through all layers; " +
			"engine cached: prompt tokens the engine loaded from published KV (usage.prompt_tokens_details.cached_tokens).",
		"logit err, fidelity, top-1 = full: the last prompt position's logits compared with full prefill's, measured in process with package recompute " +
			"over the same store and chunk KV (the engine returns no logprobs): relative L2 error, the normalised score 100 × (1 − err / err of reuse on raw chunk KV, the paper's baseline) " +
			"(median over queries; raw reuse 0, full 100; the reuse row, on fused KV, sits above 0), and agreement of the argmax (KL of the distributions in demo.json). " +
			"same answer: the greedy completion through the sidecar equals full's.",
		fmt.Sprintf("Offline stage: %d chunks, raw and fused KV (%d neighbours, BM25) in %s.", r.Ingest.Chunks, cfg.Neighbours,
			r.Ingest.Total.Round(100*time.Millisecond)),
	}
	if cfg.Model == "" {
		n = append(n, "The built-in model has random weights: its answers mean nothing and its next-token distributions are nearly one-hot "+
			"(so top-1, KL and same answer saturate); the logit error and the normalised fidelity are what tell the strategies apart.")
	}
	for _, row := range r.Rows {
		if row.Fused < row.Requests {
			n = append(n, fmt.Sprintf("WARNING: %s: %d of %d requests did not take the fusion path (%s); their TTFT is the engine's own prefill.",
				row.Strategy, row.Requests-row.Fused, row.Requests, strings.Join(row.FallbackReasons, "; ")))
		}
	}
	return n
}

func demoMedian(x []float64) float64 {
	if len(x) == 0 {
		return 0 // JSON has no NaN
	}
	s := slices.Clone(x)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func mean(x []float64) float64 {
	if len(x) == 0 {
		return 0
	}
	t := 0.0
	for _, v := range x {
		t += v
	}
	return t / float64(len(x))
}
