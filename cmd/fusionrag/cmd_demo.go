package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/fusionrag/fusionrag/bench"
)

func init() {
	register("demo", "everything in one process: ingest, RAG queries through the sidecar, TTFT/fidelity table", runDemo)
}

// runDemo: fusionrag demo [--quick] [--model DIR] [--out DIR] ..., or
// fusionrag demo --write-model DIR (write the built-in model and exit).
func runDemo(args []string) error {
	fs := newFlagSet("demo")
	var c bench.DemoConfig
	fs.BoolVar(&c.Quick, "quick", false, "a smaller run (4 queries of ~1K tokens; 7 s instead of 11 s on this project's 2-core machine)")
	fs.StringVar(&c.Model, "model", "", "model (default: the built-in synthetic model): "+modelFormats)
	fs.StringVar(&c.Format, "format", bench.DemoFormatTokens, "prompts sent as token ids (tokens) or as text (text)")
	fs.StringVar(&c.Corpus, "corpus", bench.DemoCorpusAuto, "auto (NQ-open when $FUSIONRAG_DATA has it), nq or generated")
	fs.IntVar(&c.Queries, "queries", 0, "RAG queries, each sent once per strategy (default 6; --quick 4)")
	fs.IntVar(&c.ChunksPerQuery, "chunks", 0, "chunks per query (default 10; --quick 6)")
	fs.IntVar(&c.ChunkTokens, "chunk-tokens", 0, "document tokens per chunk (default 160; --quick 128)")
	fs.IntVar(&c.MaxTokens, "max-tokens", 0, "greedy answer length compared with full's (default 8; --quick 4)")
	fs.IntVar(&c.Neighbours, "neighbours", 0, "neighbours fused into each chunk offline (default 10)")
	ratio := fs.Float64("ratio", 15, "recompute ratio of cacheblend and fusionrag, percent")
	strategies := fs.String("strategies", strings.Join(bench.DemoStrategies, ","), "strategies compared (full is always measured)")
	out := fs.String("out", "out/demo", `write demo.json, demo.md and demo-ttft.png into DIR ("" for none)`)
	writeModel := fs.String("write-model", "", "only write the built-in synthetic model into DIR (kept when present) and exit")
	quiet := fs.Bool("quiet", false, "no progress bar or stage lines")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *writeModel != "" {
		if err := bench.WriteDemoModel(*writeModel); err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "fusionrag demo: built-in model in %s\n", *writeModel)
		return nil
	}
	if *ratio <= 0 || *ratio > 100 {
		return fmt.Errorf("--ratio %v outside (0, 100]", *ratio)
	}
	c.Ratio = *ratio / 100
	c.Strategies = strings.Split(*strategies, ",")
	c.Command = os.Args
	if !*quiet {
		c.Progress, c.Log = os.Stderr, os.Stderr
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	r, err := bench.RunDemo(ctx, c)
	if err != nil {
		return err
	}
	if err := r.WriteText(os.Stdout); err != nil {
		return err
	}
	if *out != "" {
		if err := r.WriteFiles(*out); err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "fusionrag demo: wrote %s/demo.json, demo.md and demo-ttft.png\n", *out)
	}
	return nil
}
