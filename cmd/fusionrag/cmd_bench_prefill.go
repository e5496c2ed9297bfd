package main

import (
	"fmt"
	"os"
	"runtime"
	"strings"
	"time"

	"github.com/fusionrag/fusionrag/bench"
	"github.com/fusionrag/fusionrag/internal/llamaserver"
)

func init() {
	registerBench("prefill", "full-prefill throughput of the Go runtime, and of llama-server on the same GGUF and ids", benchPrefill)
}

func benchPrefill(args []string) error {
	fs := newFlagSet("bench prefill")
	var bf benchFlags
	bf.register(fs, "model path (a .gguf to compare with llama-server); default a synthetic 31M-parameter Llama (--quick: 5M)")
	sizes := fs.String("sizes", "512,1024,2048,4096", "prompt lengths in tokens (--quick: 256,512)")
	rounds := fs.Int("rounds", 5, "interleaved rounds per size; the fastest of each side is kept")
	server := fs.String("llama-server", "", "base URL of a llama-server running the same GGUF (its prefill is timed on the same ids); none is started then")
	var lf llamaServerFlags
	lf.register(fs)
	serverArgs := fs.String("llama-server-args", "", "extra arguments of the started llama-server, e.g. \"-ctk f32 -ctv f32 -fa off\"")
	bin, threads := &lf.bin, &lf.threads
	if err := parseFlags(fs, args); err != nil {
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
	// The synthetic model with its tokenizer: llama-server needs a
	// vocabulary in the GGUF it loads.
	m, name, err := bf.timingModel(true)
	if err != nil {
		return err
	}
	defer m.Close()
	ctx, stop := benchContext()
	defer stop()
	url, started := *server, false
	if url == "" && *bin != "" {
		gguf, cleanup, err := bf.serverGGUF(m, name)
		if err != nil {
			return err
		}
		defer cleanup()
		maxN := 0
		for _, n := range ns {
			maxN = max(maxN, n)
		}
		// The server's defaults otherwise (f16 KV cache, flash attention
		// auto): llama.cpp as users run it. Its f16 cache moves
		// log-probabilities by about 1e-2 against the Go runtime's f32;
		// --llama-server-args "-ctk f32 -ctv f32 -fa off" computes in f32.
		args := []string{"--override-kv", fmt.Sprintf("%s.context_length=int:%d", m.Config.GGUFArch(), max(maxN+16, m.Config.MaxPositions))}
		args = append(args, strings.Fields(*serverArgs)...)
		srv, err := llamaserver.Start(ctx, llamaserver.Config{Bin: *bin, Model: gguf, Context: maxN + 16, Threads: *threads, Args: args})
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
		notes = append(notes, fmt.Sprintf("llama-server %s started by the harness on the same weights (GGUF F32) with %d threads (-t, -tb) and args %q; Go GOMAXPROCS %d.", *bin, *threads, *serverArgs, runtime.GOMAXPROCS(0)))
	case url != "":
		notes = append(notes, fmt.Sprintf("llama-server at %s (its threads as it was started); Go GOMAXPROCS %d.", url, runtime.GOMAXPROCS(0)))
	}
	return bf.write("prefill", name, []bench.Table{bench.PrefillTable(rows, url, time.Since(start))}, rows, nil, notes...)
}
