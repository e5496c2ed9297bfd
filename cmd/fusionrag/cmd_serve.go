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

	"github.com/fusionrag/fusionrag/proxy"
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
	// TODO(lead): build the Fuser (fingerprint + kvstore + recompute +
	// adapters) from cfg.Model and cfg.Store and pass proxy.WithFuser; until
	// then every request is passed through.
	if cfg.Model != "" {
		fmt.Fprintln(os.Stderr, "fusionrag serve: warning: the fusion path is not wired into serve yet; passing every request through")
	}
	p, err := proxy.New(cfg)
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
