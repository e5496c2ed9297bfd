package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/fusionrag/fusionrag/adapters"
	_ "github.com/fusionrag/fusionrag/adapters/native"      // registers "native"
	_ "github.com/fusionrag/fusionrag/adapters/passthrough" // registers "passthrough"
	"github.com/fusionrag/fusionrag/kvstore"
	"github.com/fusionrag/fusionrag/model"
	"github.com/fusionrag/fusionrag/proxy"
	"github.com/fusionrag/fusionrag/recompute"
)

func init() {
	register("serve", "run the sidecar in front of an OpenAI-compatible engine", runServe)
}

// runServe: fusionrag serve --upstream URL [--listen ADDR] [--model M]
// [--store URL] [--config FILE], plus one flag per configuration key (see
// docs/configuration.md).
func runServe(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	file := fs.String("config", os.Getenv("FUSIONRAG_CONFIG"), "YAML configuration file (env FUSIONRAG_CONFIG)")
	cf := proxy.RegisterFlags(fs)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	cfg, err := proxy.LoadConfig(*file, os.LookupEnv, cf.Visited())
	if err != nil {
		return err
	}
	var opts []proxy.Option
	if cfg.Model != "" && !cfg.Fusion.Disabled {
		fuser, closeFuser, err := buildFuser(cfg)
		if err != nil {
			return err
		}
		defer closeFuser()
		opts = append(opts, proxy.WithFuser(fuser))
	}
	p, err := proxy.New(cfg, opts...)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	errc := make(chan error, 1)
	go func() { errc <- p.ListenAndServe() }()
	fmt.Fprintf(os.Stderr, "fusionrag serve: listening on %s, forwarding to %s\n", cfg.Listen, cfg.Upstream)
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), cfg.Timeouts.Shutdown)
	defer cancel()
	if err := p.Shutdown(sctx); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// buildFuser loads the model (--model), opens the store (--store) and builds
// the fusion path; the engine adapter is opened on first use, so the sidecar
// may start before the engine. The model must pass recompute.SelfCheck
// (chunk reuse equals prefix caching for it), or serve refuses to start.
func buildFuser(cfg proxy.Config) (proxy.Fuser, func(), error) {
	m, err := model.Load(cfg.Model, model.LoadOptions{})
	if err != nil {
		return nil, nil, fmt.Errorf("--model: %w", err)
	}
	if m.Tokenizer == nil {
		m.Close()
		return nil, nil, fmt.Errorf("--model %s: no tokenizer found beside it", cfg.Model)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := recompute.SelfCheck(ctx, m); err != nil {
		m.Close()
		return nil, nil, fmt.Errorf("--model %s fails the reuse self-check: %w", cfg.Model, err)
	}
	var store kvstore.Store
	if cfg.Store != "" {
		if store, err = kvstore.Open(cfg.Store); err != nil {
			m.Close()
			return nil, nil, fmt.Errorf("--store: %w", err)
		}
	}
	url := cfg.Fusion.AdapterURL
	if url == "" {
		url = cfg.Upstream
	}
	acfg := adapters.Config{URL: url, Transport: cfg.Fusion.Transport,
		ModelFingerprint: m.Fingerprint(), TokenizerFingerprint: m.Tokenizer.Fingerprint()}
	if cfg.Fusion.Transport == adapters.TransportStore {
		if store == nil {
			m.Close()
			return nil, nil, errors.New("fusion.transport=store needs --store")
		}
		acfg.Store = store
	}
	f, err := proxy.NewRAGFuser(proxy.FuserConfig{Proxy: cfg, Model: m, Store: store,
		OpenEngine: func(ctx context.Context) (adapters.Engine, error) {
			c := acfg
			c.Timeout = cfg.Timeouts.Fusion
			return adapters.Open(cfg.Fusion.Adapter, c)
		}})
	if err != nil {
		m.Close()
		if store != nil {
			store.Close()
		}
		return nil, nil, err
	}
	return f, func() {
		_ = f.Close()
		if store != nil {
			_ = store.Close()
		}
		_ = m.Close()
	}, nil
}
