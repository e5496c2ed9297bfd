package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/fusionrag/fusionrag/bench"
	"github.com/fusionrag/fusionrag/internal/llamaserver"
	"github.com/fusionrag/fusionrag/model"
)

func init() {
	registerBench("prefill", "full-prefill throughput of the Go runtime, and of llama-server on the same GGUF and ids", benchPrefill)
}

func benchPrefill(args []string) error {
	fs := flag.NewFlagSet("bench prefill", flag.ContinueOnError)
	var bf benchFlags
	bf.register(fs, "model path (a .gguf to compare with llama-server); default a synthetic 31M-parameter Llama (--quick: 5M)")
	sizes := fs.String("sizes", "512,1024,2048,4096", "prompt lengths in tokens (--quick: 256,512)")
	rounds := fs.Int("rounds", 5, "interleaved rounds per size; the fastest of each side is kept")
	server := fs.String("llama-server", "", "base URL of a llama-server running the same GGUF (its prefill is timed on the same ids)")
	bin := fs.String("llama-server-bin", llamaserver.Find(),
		"start this llama-server binary on --model (a .gguf) for the run (default $FUSIONRAG_LLAMA_SERVER, else llama-server on PATH); ignored with --llama-server")
	threads := fs.Int("threads", runtime.GOMAXPROCS(0), "threads of the started llama-server (-t, -tb); the Go side uses GOMAXPROCS")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if bf.quick && !flagSet(fs, "sizes") {
		*sizes = "256,512"
	}
	if bf.quick && !flagSet(fs, "rounds") {
		*rounds = 2
	}
	ns, err := parseInts(*sizes)
	if err != nil {
		return err
	}
	var m *model.Model
	name := "synthetic-llama-31M"
	switch {
	case bf.model != "":
		m, err = model.Load(bf.model, model.LoadOptions{Backend: bf.backend})
		name = filepath.Base(bf.model)
	case bf.quick:
		m, err = syntheticOn(bench.TTFTQuickModel(), bf.backend)
		name = "synthetic-llama-5M"
	default:
		m, err = syntheticOn(bench.TTFTModel(), bf.backend)
	}
	if err != nil {
		return err
	}
	defer m.Close()
	ctx, stop := benchContext()
	defer stop()
	url, started := *server, false
	if url == "" && *bin != "" && flagSet(fs, "llama-server-bin") || url == "" && *bin != "" && strings.HasSuffix(bf.model, ".gguf") {
		if !strings.HasSuffix(bf.model, ".gguf") {
			return fmt.Errorf("--llama-server-bin needs --model FILE.gguf, the file both sides load (write one with: fusionrag convert --model M --out FILE.gguf)")
		}
		maxN := 0
		for _, n := range ns {
			maxN = max(maxN, n)
		}
		srv, err := llamaserver.Start(ctx, llamaserver.Config{Bin: *bin, Model: bf.model, Context: maxN + 16, Threads: *threads})
		if err != nil {
			return err
		}
		defer srv.Close()
		url, started = srv.URL, true
	}
	start := time.Now()
	rows, err := bench.RunPrefill(ctx, bench.PrefillConfig{Model: m, Name: name, Sizes: ns, Rounds: *rounds, Server: url, Progress: os.Stderr})
	if err != nil {
		return err
	}
	var notes []string
	switch {
	case started:
		notes = append(notes, fmt.Sprintf("llama-server %s started by the harness on %s with %d threads (-t, -tb); Go GOMAXPROCS %d.", *bin, bf.model, *threads, runtime.GOMAXPROCS(0)))
	case url != "":
		notes = append(notes, fmt.Sprintf("llama-server at %s (its threads as it was started); Go GOMAXPROCS %d.", url, runtime.GOMAXPROCS(0)))
	}
	return bf.write("prefill", name, []bench.Table{bench.PrefillTable(rows, url, time.Since(start))}, rows, nil, notes...)
}

// syntheticOn returns the synthetic model of cfg (seed 1) on backend:
// model.Synthetic builds it on the cpu backend; any other backend loads it
// from a temporary HF directory through model.Load, the path real models
// take.
func syntheticOn(cfg model.Config, backend string) (*model.Model, error) {
	if backend == "" || backend == model.DefaultBackend {
		return model.Synthetic(cfg, 1)
	}
	dir, err := os.MkdirTemp("", "fusionrag-synthetic-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	if err := model.WriteSynthetic(dir, cfg, 1, model.SaveOptions{}); err != nil {
		return nil, err
	}
	return model.Load(dir, model.LoadOptions{Backend: backend})
}
