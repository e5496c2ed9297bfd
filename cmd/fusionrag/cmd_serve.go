package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"syscall"

	"github.com/fusionrag/fusionrag/proxy"
	"github.com/fusionrag/fusionrag/sidecar"
)

func init() {
	register("serve", "run the sidecar in front of an OpenAI-compatible engine", runServe)
}

// runServe: fusionrag serve --upstream URL [--listen ADDR] [--model M]
// [--store URL] [--config FILE], plus one flag per configuration key (see
// docs/configuration.md). The sidecar is built by package sidecar, as the
// demo and the benchmarks build it.
func runServe(args []string) error {
	cfg, backend, err := parseServe(args)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	sc, err := sidecar.New(ctx, sidecar.Config{Proxy: cfg, Backend: backend})
	if err != nil {
		return err
	}
	defer sc.Close()
	errc := make(chan error, 1)
	go func() { errc <- sc.ListenAndServe() }()
	fmt.Fprintf(os.Stderr, "fusionrag serve: listening on %s, forwarding to %s\n", cfg.Listen, cfg.Upstream)
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), sc.Config().Timeouts.Shutdown)
	defer cancel()
	if err := sc.Shutdown(sctx); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// parseServe reads serve's command line into the configuration: defaults,
// then --config FILE, then FUSIONRAG_* variables, then the flags. Each
// configuration key is a flag of its field's type (proxy.RegisterFlags):
// --fusion.disabled takes no value, --timeouts.read a duration.
func parseServe(args []string) (proxy.Config, string, error) {
	fs := newFlagSet("serve")
	file := fs.String("config", os.Getenv("FUSIONRAG_CONFIG"), "YAML configuration file (env FUSIONRAG_CONFIG)")
	backend := backendFlag(fs)
	cf := proxy.RegisterFlags(fs)
	if err := parseFlags(fs, args); err != nil {
		return proxy.Config{}, "", err
	}
	cfg, err := proxy.LoadConfig(*file, os.LookupEnv, cf.Visited())
	return cfg, *backend, err
}
