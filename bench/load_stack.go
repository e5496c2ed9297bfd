package bench

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"time"

	"github.com/fusionrag/fusionrag/adapters"
	_ "github.com/fusionrag/fusionrag/adapters/native" // the fusion sidecar's engine adapter
	"github.com/fusionrag/fusionrag/engine"
	"github.com/fusionrag/fusionrag/kvstore"
	"github.com/fusionrag/fusionrag/model"
	"github.com/fusionrag/fusionrag/proxy"
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
	// Fusion also starts a second sidecar with the fusion path: a RAGFuser
	// over a memory store that finds chunks at StackSeparator, recomputes
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
// the fusion sidecar. Telemetry export is off whatever the environment says.
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
	if s.SidecarURL, err = s.sidecar(proxy.DefaultConfig()); err != nil {
		s.Close()
		return nil, err
	}
	if !c.Fusion {
		return s, nil
	}
	store, err := kvstore.Open("mem://?max=2GiB")
	if err != nil {
		s.Close()
		return nil, err
	}
	s.close = append(s.close, func() { store.Close() })
	pcfg := proxy.DefaultConfig()
	pcfg.Upstream = s.EngineURL
	pcfg.Fusion.Separator = StackSeparator
	// Compute (and store) every missing chunk: the benchmark warms the store
	// with one pass over its prompts, as an ingest would.
	pcfg.Fusion.MaxMissingFraction = 1
	if err := pcfg.Validate(); err != nil {
		s.Close()
		return nil, err
	}
	acfg := adapters.Config{URL: s.EngineURL, Transport: adapters.TransportPush,
		ModelFingerprint: m.Fingerprint(), TokenizerFingerprint: m.Tokenizer.Fingerprint()}
	fuser, err := proxy.NewRAGFuser(proxy.FuserConfig{Proxy: pcfg, Model: m, Store: store,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		OpenEngine: func(ctx context.Context) (adapters.Engine, error) {
			return adapters.Open(pcfg.Fusion.Adapter, acfg)
		}})
	if err != nil {
		s.Close()
		return nil, err
	}
	s.close = append(s.close, func() { fuser.Close() })
	if s.FusionURL, err = s.sidecar(pcfg, proxy.WithFuser(fuser)); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// sidecar serves a proxy in front of the engine on a free loopback port.
func (s *Stack) sidecar(pcfg proxy.Config, opts ...proxy.Option) (string, error) {
	tel, err := proxy.NewTelemetry(context.Background(), func(string) (string, bool) { return "", false })
	if err != nil {
		return "", err
	}
	pcfg.Upstream = s.EngineURL
	pcfg.Listen = "127.0.0.1:0"
	opts = append([]proxy.Option{proxy.WithTelemetry(tel), proxy.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil)))}, opts...)
	px, err := proxy.New(pcfg, opts...)
	if err != nil {
		tel.Shutdown(context.Background())
		return "", err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tel.Shutdown(context.Background())
		return "", err
	}
	go px.Serve(ln)
	s.close = append(s.close, func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		px.Shutdown(ctx)
		tel.Shutdown(context.Background())
	})
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
