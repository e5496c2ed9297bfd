package main

import (
	"fmt"
	"os"
	"time"

	"github.com/fusionrag/fusionrag/bench"
)

func init() {
	registerBench("faults", "fault-and-load run: Redis killed/stalled, blobs flipped and truncated, engine restarted under load; wrong answers, failures, fused/s per phase, peak RSS", benchFaults)
}

func benchFaults(args []string) error {
	fs := newFlagSet("bench faults")
	var bf benchFlags
	bf.register(fs, `model of the in-process engine and sidecar: "stories260K" (default), "synthetic", or a model path`)
	requests := fs.Int("requests", 3200, "requests over the phases, at least (--quick: 400)")
	conc := fs.Int("concurrency", 16, "closed-loop clients")
	prompts := fs.Int("prompts", 64, "distinct RAG prompts, half with chunks kept locally, half in Redis only (--quick: 16)")
	maxTokens := fs.Int("max-tokens", 8, "completion tokens per request (greedy)")
	down := fs.Duration("engine-down", time.Second, "how long the engine stays down when restarted")
	after := fs.Duration("after", 12*time.Second, "least duration of the last phase (the breaker stays open 10 s by default) (--quick: 3s)")
	quiet := fs.Bool("quiet", false, "no progress bar")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if bf.quick {
		if !flagSet(fs, "requests") {
			*requests = 400
		}
		if !flagSet(fs, "prompts") {
			*prompts = 16
		}
		if !flagSet(fs, "after") {
			*after = 3 * time.Second
		}
	}
	m, name, closeModel, err := benchModel(bf.model, bf.backend, 0)
	if err != nil {
		return err
	}
	defer closeModel()
	ctx, stop := benchContext()
	defer stop()
	res, err := bench.RunFaults(ctx, bench.FaultConfig{Model: m, Requests: *requests, Concurrency: *conc, Prompts: *prompts,
		MaxTokens: *maxTokens, EngineDown: *down, After: *after, Progress: os.Stderr, Quiet: *quiet})
	if err != nil {
		return err
	}
	note := fmt.Sprintf("Stack, all on loopback: this project's engine serving %s over HTTP, a redis-server child process, the fusion "+
		"sidecar (proxy defaults: max_missing_fraction 0.5, breaker 5 failures / 10 s open, fusion deadline 5 s) over a tiered store "+
		"mem (256 MiB) + disk + Redis (%v command timeout), and a second sidecar on the same store computing every missing chunk, "+
		"which warms the store before the run. %d clients send %d distinct prompts of 4 separated chunks round-robin, %d greedy "+
		"tokens each, pausing 100 ms after a failure. Every answer is checked against the prompt's references, computed before the "+
		"run: the engine alone on the prompt with and without separators, and the fusion path in two clean passes.",
		name, bench.FaultRedisTimeout, *conc, *prompts, *maxTokens)
	if err := bf.write("faults", name, bench.FaultTables(res), res, nil, note); err != nil {
		return err
	}
	for _, g := range res.Goals {
		if !g.Met {
			fmt.Fprintf(os.Stderr, "goal missed: %s: %s\n", g.Goal, g.Measured)
		}
	}
	return nil
}
