package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/fusionrag/fusionrag/engine"
	"github.com/fusionrag/fusionrag/internal/otelenv"
	"github.com/fusionrag/fusionrag/model"
)

func init() {
	register("engine", "run the small vLLM-style engine (OpenAI API + KV connector)", runEngine)
}

func runEngine(args []string) error {
	fs := newFlagSet("engine")
	modelPath := fs.String("model", "", "model to serve (required): "+modelFormats)
	tok := fs.String("tokenizer", "", "tokenizer file (default: found beside the model)")
	listen := fs.String("listen", engine.DefaultListen, "HTTP listen address")
	store := fs.String("store", "", "shared KV store URL(s) a sidecar publishes into, e.g. redis://127.0.0.1:6379/0")
	push := fs.String("push-store", engine.DefaultPushStoreURL, "store for KV pushed with PUT /v1/kv/{key}")
	maxBatch := fs.Int("max-batch", engine.DefaultMaxBatch, "requests decoded together")
	maxQueue := fs.Int("max-queue", engine.DefaultMaxQueue, "requests waiting for a slot before 503")
	ctxLimit := fs.Int("context", 0, "context limit in tokens (0: the model's)")
	name := fs.String("name", engine.DefaultModelName, "model id served in /v1/models")
	timeout := fs.Duration("timeout", engine.DefaultTimeout, "per-request timeout")
	backend := backendFlag(fs)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *modelPath == "" {
		return errors.New("--model is required")
	}
	cfg, err := engine.NewConfig(engine.Config{Listen: *listen, ModelName: *name, MaxBatch: *maxBatch,
		MaxQueue: *maxQueue, ContextLimit: *ctxLimit, StoreURL: *store, PushStoreURL: *push, RequestTimeout: *timeout})
	if err != nil {
		return err
	}
	m, err := model.Load(*modelPath, model.LoadOptions{Tokenizer: *tok, Backend: *backend})
	if err != nil {
		return err
	}
	defer m.Close()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var opts []engine.Option
	pusher, err := otelenv.MetricReader(ctx, os.LookupEnv)
	if err != nil {
		return err
	}
	if pusher != nil {
		opts = append(opts, engine.WithMetricReader(pusher))
		log.Printf("fusionrag engine: pushing metrics over OTLP (OTEL_EXPORTER_OTLP_* set)")
	}
	e, err := engine.NewFromModel(cfg, m, opts...)
	if err != nil {
		return err
	}
	errc := make(chan error, 1)
	go func() { errc <- e.ListenAndServe() }()
	log.Printf("fusionrag engine: serving %s (%s) on http://%s", cfg.ModelName, *modelPath, cfg.Listen)
	select {
	case err := <-errc:
		e.Close()
		return err
	case <-ctx.Done():
	}
	log.Printf("fusionrag engine: shutting down")
	sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := e.Shutdown(sctx); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	return <-errc
}
