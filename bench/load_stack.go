package bench

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"time"

	"github.com/fusionrag/fusionrag/engine"
	"github.com/fusionrag/fusionrag/model"
	"github.com/fusionrag/fusionrag/proxy"
	"github.com/fusionrag/fusionrag/sidecar"
)

// StackSeparator is the chunk separator of the stack's fusion sidecar and of
// the prompts sent to it (the LMCache convention S sep C_1 sep ... sep Q);
// the sidecar strips it, so the engine sees the same text as without it.
const StackSeparator = " # # "

// StackConfig configures StartStack.
type StackConfig struct {
	// Model is served by the engine and, with Fusion, computes the fusion
	// path's KV. It needs a tokenizer. Required.
	Model *model.Model
	// Engine is the engine's configuration (Listen is ignored).
	Engine engine.Config
	// Fusion also starts a second sidecar with the fusion path: the RAG
	// fuser over a memory store that finds chunks at StackSeparator, recomputes
	// with the request's strategy (default fusionrag at 15%) and pushes the
	// prompt's KV to the engine through the native adapter.
	Fusion bool
}

// Stack is this project's engine serving a model and sidecars in front of
// it, all in process on loopback ports: what the load and end-to-end TTFT
// benchmarks measure when no external endpoint is given.
type Stack struct {
	// EngineURL, SidecarURL (pass-through only: no fuser) and FusionURL
	// (with the fusion path; empty without StackConfig.Fusion) are base URLs.
	EngineURL  string
	SidecarURL string
	FusionURL  string

	close []func()
}

// StartStack starts the engine, the pass-through sidecar and, when asked,
// the fusion sidecar, both built as fusionrag serve builds them (package
// sidecar: reuse self-check, documents queue). Telemetry export is off
// whatever the environment says.
func StartStack(c StackConfig) (*Stack, error) {
	m := c.Model
	if m == nil || m.Tokenizer == nil {
		return nil, errors.New("bench: the engine needs a model with a tokenizer")
	}
	s := &Stack{}
	url, stop, err := startEngine(c.Engine, m)
	if err != nil {
		return nil, err
	}
	s.close = append(s.close, stop)
	s.EngineURL = url
	// No model: serve without --model, every request passed through.
	if s.SidecarURL, err = s.sidecar(sidecar.Config{Proxy: proxy.DefaultConfig()}); err != nil {
		s.Close()
		return nil, err
	}
	if !c.Fusion {
		return s, nil
	}
	pcfg := proxy.DefaultConfig()
	pcfg.Store = "mem://?max=2GiB"
	pcfg.Fusion.Separator = StackSeparator
	// Compute (and store) every missing chunk: the benchmark warms the store
	// with one pass over its prompts, as an ingest would.
	pcfg.Fusion.MaxMissingFraction = 1
	if s.FusionURL, err = s.sidecar(sidecar.Config{Proxy: pcfg, Model: m}); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// sidecar builds a sidecar from c (its upstream the engine, its logger
// quiet, no telemetry export) and serves it on a free loopback port.
func (s *Stack) sidecar(c sidecar.Config) (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	c.Proxy.Upstream = s.EngineURL
	c.Proxy.Listen = ln.Addr().String()
	c.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	c.Env = sidecar.NoEnv
	sc, err := sidecar.New(context.Background(), c)
	if err != nil {
		ln.Close()
		return "", err
	}
	go sc.Serve(ln)
	s.close = append(s.close, func() { sc.Close() })
	return "http://" + ln.Addr().String(), nil
}

// Close stops the sidecars, then the engine.
func (s *Stack) Close() {
	for i := len(s.close) - 1; i >= 0; i-- {
		s.close[i]()
	}
	s.close = nil
}

// startEngine serves the engine of cfg (its Listen replaced by a free
// loopback port) for m. It returns the engine's base URL and a stop
// function that shuts it down (closing it if the graceful shutdown takes
// over 5 s).
func startEngine(cfg engine.Config, m *model.Model) (url string, stop func(), err error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	cfg.Listen = ln.Addr().String()
	eng, err := engine.NewFromModel(cfg, m)
	if err != nil {
		ln.Close()
		return "", nil, err
	}
	go eng.Serve(ln)
	stop = func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if eng.Shutdown(ctx) != nil {
			eng.Close()
		}
	}
	return "http://" + cfg.Listen, stop, nil
}
