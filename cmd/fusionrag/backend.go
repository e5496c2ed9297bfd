package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/fusionrag/fusionrag/bench"
	"github.com/fusionrag/fusionrag/internal/llamaserver"

	"github.com/fusionrag/fusionrag/model"
)

// modelFormats ends the --model help of the commands that load a model
// file: model.Load takes all three formats.
const modelFormats = "a Hugging Face directory, a GGUF file (.gguf) or a llama2.c checkpoint (.bin, with its tok*.bin beside it)"

// envBackend is the environment default of every --backend flag.
const envBackend = "FUSIONRAG_BACKEND"

func backendHelp() string {
	return fmt.Sprintf("compute backend, one of %v (default %s; env %s)", model.Backends(), model.DefaultBackend, envBackend)
}

// backendFlag adds --backend, the compute backend of the model the command
// loads, defaulting to $FUSIONRAG_BACKEND (serve, engine, ingest, generate
// and the bench harnesses alike).
func backendFlag(fs *flag.FlagSet) *string {
	return fs.String("backend", os.Getenv(envBackend), backendHelp())
}

// syntheticSeeded returns the synthetic model of cfg and seed on backend
// (--backend): model.Synthetic builds it on the cpu backend; any other
// backend (openblas, cuda) loads it from a temporary HF directory through
// model.Load, the path real models take, so that --backend is honoured
// for synthetic models too.
//
// With tokenizer the model is always loaded that way, which gives it the
// synthetic tokenizer WriteSynthetic writes beside the weights.
func syntheticSeeded(cfg model.Config, seed uint64, backend string, tokenizer bool) (*model.Model, error) {
	if !tokenizer && (backend == "" || backend == model.DefaultBackend) {
		return model.Synthetic(cfg, seed)
	}
	if _, err := model.NewBackend(backend); err != nil {
		return nil, err // before writing the model: unknown or refused backend
	}
	dir, err := os.MkdirTemp("", "fusionrag-synthetic-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir) // the mapping stays valid after unlink
	if err := model.WriteSynthetic(dir, cfg, seed, model.SaveOptions{}); err != nil {
		return nil, err
	}
	return model.Load(dir, model.LoadOptions{Backend: backend})
}

// timingModel resolves the --model of the timing harnesses (ttft, prefill,
// llamacpp): the file, else the synthetic 31M-parameter Llama (--quick:
// 5M) with seed 1, on --backend; it returns the model and its label.
func (b *benchFlags) timingModel(tokenizer bool) (*model.Model, string, error) {
	switch {
	case b.model != "":
		m, err := model.Load(b.model, model.LoadOptions{Backend: b.backend})
		return m, filepath.Base(b.model), err
	case b.quick:
		m, err := syntheticSeeded(bench.TTFTQuickModel(), 1, b.backend, tokenizer)
		return m, "synthetic-llama-5M", err
	default:
		m, err := syntheticSeeded(bench.TTFTModel(), 1, b.backend, tokenizer)
		return m, "synthetic-llama-31M", err
	}
}

// llamaServerFlags are the flags of the harnesses that start llama-server
// (prefill, llamacpp) as the peer they measure against.
type llamaServerFlags struct {
	bin     string
	threads int
}

func (l *llamaServerFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&l.bin, "llama-server-bin", llamaserver.Find(),
		"llama-server binary the harness starts (default $FUSIONRAG_LLAMA_SERVER, else llama-server on PATH)")
	fs.IntVar(&l.threads, "threads", runtime.GOMAXPROCS(0), "threads of the started llama-server (-t, -tb); the Go side uses GOMAXPROCS")
}

// serverGGUF is the file llama-server loads for the harness's model m:
// --model itself when it is a GGUF, else m written as an F32 GGUF into a
// temporary directory that cleanup removes.
func (b *benchFlags) serverGGUF(m *model.Model, name string) (path string, cleanup func(), err error) {
	if strings.HasSuffix(b.model, ".gguf") {
		return b.model, func() {}, nil
	}
	dir, err := os.MkdirTemp("", "fusionrag-bench-gguf-")
	if err != nil {
		return "", nil, err
	}
	path = filepath.Join(dir, "model.gguf")
	if err := m.WriteGGUF(path, model.GGUFOptions{Name: name}); err != nil {
		os.RemoveAll(dir)
		return "", nil, fmt.Errorf("writing the model as GGUF for llama-server: %w", err)
	}
	return path, func() { os.RemoveAll(dir) }, nil
}
