package main

import (
	"errors"
	"os"
	"strings"
	"time"

	"github.com/fusionrag/fusionrag/bench"
	"github.com/fusionrag/fusionrag/model"
)

func init() {
	registerBench("llamacpp", "TTFT through an unmodified llama-server: its own full prefill vs the sidecar's strategies (llamacpp adapter)", benchLlamaCpp)
}

func benchLlamaCpp(args []string) error {
	fs := newFlagSet("bench llamacpp")
	var bf benchFlags
	bf.register(fs, "model path (GGUF, or any model, written as GGUF for the server); default a synthetic 31M-parameter Llama (--quick: 5M)")
	contexts := fs.String("contexts", "2048,4096", "context sizes in tokens (--quick: 512,1024)")
	ratio := fs.Float64("ratio", 15, "recompute ratio of the partial strategies, percent")
	rounds := fs.Int("rounds", 3, "interleaved rounds per context; the fastest of each method is kept")
	strategies := fs.String("strategies", "reuse,fusionrag", "sidecar strategies timed against the server's full prefill")
	var lf llamaServerFlags
	lf.register(fs)
	bin, threads := &lf.bin, &lf.threads
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *bin == "" {
		return errors.New("no llama-server: set --llama-server-bin or $FUSIONRAG_LLAMA_SERVER (build llama.cpp's llama-server outside the repo, see DESIGN.md, Peers)")
	}
	if bf.quick && !flagSet(fs, "contexts") {
		*contexts = "512,1024"
	}
	ctxs, err := parseInts(*contexts)
	if err != nil {
		return err
	}
	src, name, err := bf.timingModel(true)
	if err != nil {
		return err
	}
	// Both sides load one GGUF, so that they tokenize alike: the server
	// the file, the sidecar the model read back from it.
	gguf, cleanup, err := bf.serverGGUF(src, name)
	if err != nil {
		src.Close()
		return err
	}
	defer cleanup()
	m := src
	if gguf != bf.model {
		src.Close()
		if m, err = model.Load(gguf, model.LoadOptions{Backend: bf.backend, MaxPositions: src.Config.MaxPositions}); err != nil {
			return err
		}
	}
	defer m.Close()
	ctx, stop := benchContext()
	defer stop()
	start := time.Now()
	rows, err := bench.RunLlamaCpp(ctx, bench.LlamaCppConfig{Model: m, GGUF: gguf, Bin: *bin, Name: name, Contexts: ctxs,
		Strategies: strings.Split(*strategies, ","), Ratio: *ratio / 100, Rounds: *rounds, Threads: *threads, Progress: os.Stderr})
	if err != nil {
		return err
	}
	return bf.write("llamacpp", name, []bench.Table{bench.LlamaCppTable(rows, m.Config.Params(), time.Since(start))}, rows, nil)
}
