package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/fusionrag/fusionrag/adapters"
	_ "github.com/fusionrag/fusionrag/adapters/llamacpp"    // registers "llamacpp"
	_ "github.com/fusionrag/fusionrag/adapters/native"      // registers "native"
	_ "github.com/fusionrag/fusionrag/adapters/passthrough" // registers "passthrough"
	"github.com/fusionrag/fusionrag/fusion"
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
	cfg, backend, err := parseServe(args)
	if err != nil {
		return err
	}
	var opts []proxy.Option
	if cfg.Model != "" && !cfg.Fusion.Disabled {
		fp, err := buildFusionPath(cfg, backend)
		if err != nil {
			return err
		}
		defer fp.close()
		opts = append(opts, proxy.WithFuser(fp.fuser))
		if fp.queue != nil {
			opts = append(opts, proxy.WithDocuments(indexingQueue{fp.queue, fp.chunker, fp.fuser.Remember}))
		}
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

// fusionPath is what serve builds for --model: the fuser, and the ingest
// queue of POST /v1/fusion/documents.
type fusionPath struct {
	cfg     proxy.Config
	m       *model.Model
	store   kvstore.Store
	fuser   *proxy.RAGFuser
	queue   *fusion.Queue // nil without a store
	chunker *fusion.Chunker
}

// indexingQueue is the ingest queue that also adds the submitted chunks'
// ids to the submitting tenant's known-chunk index, so that they are
// recognised in that tenant's prompts that carry no markers (convention c),
// and never reveal to another tenant what was submitted. Chunking is
// deterministic: the ids are those the queue stores KV for.
type indexingQueue struct {
	*fusion.Queue
	chunker  *fusion.Chunker
	remember func(tenant string, chunk []int32)
}

func (q indexingQueue) HandleSubmit(tenant string, body []byte) (int, []byte) {
	status, out := q.Queue.HandleSubmit(tenant, body)
	if status >= 300 {
		return status, out
	}
	if docs, err := fusion.ParseDocuments(body); err == nil {
		for _, d := range docs {
			chunks, _ := q.chunker.Split(d)
			for _, c := range chunks {
				q.remember(tenant, c.Tokens)
			}
		}
	}
	return status, out
}

// buildFusionPath loads the model (--model) on backend (--backend), opens
// the store (--store) and
// builds the fusion path; the engine adapter is opened on first use, so the
// sidecar may start before the engine. The model must pass
// recompute.SelfCheck (chunk reuse equals prefix caching for it), or serve
// refuses to start.
func buildFusionPath(cfg proxy.Config, backend string) (*fusionPath, error) {
	m, err := model.Load(cfg.Model, model.LoadOptions{Backend: backend})
	if err != nil {
		return nil, fmt.Errorf("--model: %w", err)
	}
	fp := &fusionPath{cfg: cfg, m: m}
	fail := func(err error) (*fusionPath, error) {
		fp.close()
		return nil, err
	}
	if m.Tokenizer == nil {
		return fail(fmt.Errorf("--model %s: no tokenizer found beside it", cfg.Model))
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := recompute.SelfCheck(ctx, m); err != nil {
		return fail(fmt.Errorf("--model %s fails the reuse self-check: %w", cfg.Model, err))
	}
	if cfg.Store != "" {
		if fp.store, err = kvstore.Open(cfg.Store); err != nil {
			return fail(fmt.Errorf("--store: %w", err))
		}
	}
	url := cfg.Fusion.AdapterURL
	if url == "" {
		url = cfg.Upstream
	}
	// Model: adapters that prove the engine runs the same weights (llamacpp
	// compares a probe's KV) or write KV in the engine's layout need it.
	acfg := adapters.Config{URL: url, Transport: cfg.Fusion.Transport,
		ModelFingerprint: m.Fingerprint(), TokenizerFingerprint: m.Tokenizer.Fingerprint(),
		Model: m, SlotDir: cfg.Fusion.SlotDir}
	if cfg.Fusion.Transport == adapters.TransportStore {
		if fp.store == nil {
			return fail(errors.New("fusion.transport=store needs --store"))
		}
		acfg.Store = fp.store
	}
	fp.fuser, err = proxy.NewRAGFuser(proxy.FuserConfig{Proxy: cfg, Model: m, Store: fp.store,
		OpenEngine: func(ctx context.Context) (adapters.Engine, error) {
			c := acfg
			c.Timeout = cfg.Timeouts.Fusion
			return adapters.Open(cfg.Fusion.Adapter, c)
		}})
	if err != nil {
		return fail(err)
	}
	switch {
	case fp.store == nil:
	case cfg.Fusion.Similarity != "bm25":
		fmt.Fprintf(os.Stderr, "fusionrag serve: POST /v1/fusion/documents is off: ingest through the sidecar supports similarity bm25 only (configured %q); use fusionrag ingest\n", cfg.Fusion.Similarity)
	default:
		if err := fp.newQueue(); err != nil {
			return fail(fmt.Errorf("ingest queue: %w", err))
		}
	}
	return fp, nil
}

// newQueue builds the ingest queue of POST /v1/fusion/documents: fused KV
// of the submitted documents, computed after S = fusion.system, stored
// under the submitting tenant's keys with the configured fusion parameters
// (the ones the fuser looks up).
func (fp *fusionPath) newQueue() error {
	prefix := fusion.EncodePrefix(fp.m.Tokenizer, fp.cfg.Fusion.System)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	in, err := fusion.NewIngester(ctx, fusion.Config{Model: fp.m, Store: fp.store, Prefix: prefix,
		Neighbours: fp.cfg.Fusion.Neighbours, Workers: 1})
	if err != nil {
		return err
	}
	ch, err := fusion.NewChunker(fusion.Chunker{Tokenizer: fp.m.Tokenizer, MaxTokens: fp.m.Config.MaxPositions - len(prefix)})
	if err != nil {
		return err
	}
	fp.chunker = ch
	fp.queue, err = fusion.NewQueue(fusion.QueueConfig{Ingester: in, Chunker: ch, MaxJobsPerTenant: fp.cfg.Documents.MaxJobsPerTenant})
	return err
}

func (fp *fusionPath) close() {
	if fp.queue != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_ = fp.queue.Close(ctx)
		cancel()
	}
	if fp.fuser != nil {
		_ = fp.fuser.Close()
	}
	if fp.store != nil {
		_ = fp.store.Close()
	}
	_ = fp.m.Close()
}
