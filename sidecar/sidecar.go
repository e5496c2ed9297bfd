// Package sidecar is the composition root of the fusion sidecar: from one
// Config it builds what `fusionrag serve` runs (the KV store, the model and
// its reuse self-check, the RAG fuser with its engine adapter, the documents
// queue of POST /v1/fusion/documents, telemetry, and the proxy in front of the
// engine), so that serve, the demo and the load and fault benchmarks all
// measure the same assembly.
//
// Only cmd/fusionrag and bench import this package; it is the one place that
// knows every other package of the online path, and it registers the engine
// adapters compiled into the binary (blank imports below).
package sidecar

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/fusionrag/fusionrag/adapters"
	_ "github.com/fusionrag/fusionrag/adapters/llamacpp"    // registers "llamacpp"
	_ "github.com/fusionrag/fusionrag/adapters/native"      // registers "native"
	_ "github.com/fusionrag/fusionrag/adapters/passthrough" // registers "passthrough"
	"github.com/fusionrag/fusionrag/fusion"
	"github.com/fusionrag/fusionrag/kvstore"
	"github.com/fusionrag/fusionrag/model"
	"github.com/fusionrag/fusionrag/proxy"
	"github.com/fusionrag/fusionrag/rag"
	"github.com/fusionrag/fusionrag/recompute"
)

// The fusion path this package builds: the only lines that name its
// package, so that moving the fuser out of proxy changes them alone.
type (
	// Fuser is the RAG fusion path: segmentation, chunk KV lookup,
	// recompute and publishing to the engine through the adapter.
	Fuser       = rag.Fuser
	fuserConfig = rag.Config
)

var newFuser = rag.New

// Config configures New. The zero value of every field but Proxy means
// "as fusionrag serve has it".
type Config struct {
	// Proxy is the sidecar's configuration (docs/configuration.md); New
	// validates it and fills its defaults. Proxy.Model (a path) and
	// Proxy.Store (a store URL) are used unless Model or Store below are
	// given. Without a model, or with Proxy.Fusion.Disabled, there is no
	// fusion path: every request is passed through.
	Proxy proxy.Config

	// Model, when not nil, is the fusion path's model instead of loading
	// Proxy.Model; it needs a tokenizer. The caller keeps it: Close does
	// not close it.
	Model *model.Model
	// Backend is the compute backend Proxy.Model is loaded on
	// (model.LoadOptions.Backend; "" the default one).
	Backend string
	// Store, when not nil, holds the chunk and prefix KV instead of
	// opening Proxy.Store. The caller keeps it: Close does not close it.
	Store kvstore.Store

	// Logger (default slog.Default()).
	Logger *slog.Logger
	// Env is where telemetry reads its OTEL_* settings (proxy.NewTelemetry).
	// Nil: the process environment (os.LookupEnv), as serve has it; NoEnv:
	// no exporter, whatever the environment says.
	Env func(string) (string, bool)

	// SkipSelfCheck skips recompute.SelfCheck of the model at start. serve
	// never skips it: a model whose RoPE the runtime gets wrong must not
	// serve reused KV.
	SkipSelfCheck bool
	// NoDocuments leaves POST /v1/fusion/documents to the engine (no ingest
	// queue). The queue needs a store and similarity bm25 anyway.
	NoDocuments bool

	// WrapFuser, when not nil, wraps the fusion path handed to the proxy:
	// the demo records what it did for each request. It must forward every
	// call unchanged.
	WrapFuser func(proxy.Fuser) proxy.Fuser
}

// NoEnv is the Config.Env of an empty environment: telemetry exports
// nothing.
func NoEnv(string) (string, bool) { return "", false }

// selfCheckTimeout bounds the reuse self-check at start (a few short
// prefills: well under a second on the models this project tests with).
const selfCheckTimeout = time.Minute

// queueCloseTimeout bounds how long Close waits for the ingest job in
// progress.
const queueCloseTimeout = 10 * time.Second

// Sidecar is the assembled sidecar. Serve it with Serve or ListenAndServe;
// Close stops it and releases what New opened.
type Sidecar struct {
	cfg   proxy.Config
	log   *slog.Logger
	proxy *proxy.Proxy
	tel   *proxy.Telemetry

	m        *model.Model
	ownModel bool
	store    kvstore.Store
	ownStore bool
	fuser    *Fuser
	queue    *fusion.Queue // nil: POST /v1/fusion/documents goes to the engine
	chunker  *fusion.Chunker

	shutdownOnce sync.Once
	shutdownErr  error
	closeOnce    sync.Once
	closeErr     error
}

// New validates cfg, fills its defaults and builds the sidecar: the model
// (loaded and self-checked), the store, the fuser (its adapter opened on
// first use, so the sidecar may start before the engine), the documents
// queue, telemetry and the proxy. ctx bounds the start (the self-check and
// the ingester's prefill of S). On error, everything built is released.
func New(ctx context.Context, cfg Config) (_ *Sidecar, err error) {
	if err := cfg.Proxy.Validate(); err != nil {
		return nil, err
	}
	s := &Sidecar{cfg: cfg.Proxy, log: cfg.Logger}
	if s.log == nil {
		s.log = slog.Default()
	}
	defer func() {
		if err != nil {
			s.release()
		}
	}()
	env := cfg.Env
	if env == nil {
		env = os.LookupEnv
	}
	// Not ctx: the exporters outlive the start.
	if s.tel, err = proxy.NewTelemetry(context.Background(), env); err != nil {
		return nil, err
	}
	opts := []proxy.Option{proxy.WithTelemetry(s.tel), proxy.WithLogger(s.log)}
	if fusing := (cfg.Model != nil || s.cfg.Model != "") && !s.cfg.Fusion.Disabled; fusing {
		if err := s.buildFusionPath(ctx, cfg); err != nil {
			return nil, err
		}
		var f proxy.Fuser = s.fuser
		if cfg.WrapFuser != nil {
			f = cfg.WrapFuser(f)
		}
		opts = append(opts, proxy.WithFuser(f))
		if s.queue != nil {
			opts = append(opts, proxy.WithDocuments(indexingQueue{s.queue, s.chunker, s.fuser.Remember}))
		}
	}
	if s.proxy, err = proxy.New(s.cfg, opts...); err != nil {
		return nil, err
	}
	return s, nil
}

// buildFusionPath loads (or takes) the model and checks it, opens (or
// takes) the store, and builds the fuser and the documents queue.
func (s *Sidecar) buildFusionPath(ctx context.Context, cfg Config) error {
	name := s.cfg.Model
	if s.m = cfg.Model; s.m == nil {
		m, err := model.Load(name, model.LoadOptions{Backend: cfg.Backend})
		if err != nil {
			return fmt.Errorf("sidecar: model: %w", err)
		}
		s.m, s.ownModel = m, true
	} else if name == "" {
		name = "(given)"
	}
	if s.m.Tokenizer == nil {
		return fmt.Errorf("sidecar: model %s: no tokenizer found beside it", name)
	}
	if !cfg.SkipSelfCheck {
		cctx, cancel := context.WithTimeout(ctx, selfCheckTimeout)
		err := recompute.SelfCheck(cctx, s.m)
		cancel()
		if err != nil {
			return fmt.Errorf("sidecar: model %s fails the reuse self-check: %w", name, err)
		}
	}
	if s.store = cfg.Store; s.store == nil && s.cfg.Store != "" {
		st, err := kvstore.Open(s.cfg.Store)
		if err != nil {
			return fmt.Errorf("sidecar: store: %w", err)
		}
		s.store, s.ownStore = st, true
	}
	acfg, err := s.adapterConfig()
	if err != nil {
		return err
	}
	if s.fuser, err = newFuser(fuserConfig{Proxy: s.cfg, Model: s.m, Store: s.store, Logger: s.log,
		OpenEngine: func(context.Context) (adapters.Engine, error) {
			return adapters.Open(s.cfg.Fusion.Adapter, acfg)
		}}); err != nil {
		return err
	}
	switch {
	case cfg.NoDocuments || s.store == nil:
	case s.cfg.Fusion.Similarity != "bm25":
		s.log.Warn("POST /v1/fusion/documents is off: ingest through the sidecar supports similarity bm25 only; use fusionrag ingest",
			"similarity", s.cfg.Fusion.Similarity)
	default:
		if err := s.newQueue(ctx); err != nil {
			return fmt.Errorf("sidecar: ingest queue: %w", err)
		}
	}
	return nil
}

// adapterConfig is the engine adapter's configuration: the adapter URL
// (default the upstream), the KV transport, and the model, which adapters
// that prove the engine runs the same weights (llamacpp compares a probe's
// KV) or write KV in the engine's layout need.
func (s *Sidecar) adapterConfig() (adapters.Config, error) {
	url := s.cfg.Fusion.AdapterURL
	if url == "" {
		url = s.cfg.Upstream
	}
	acfg := adapters.Config{URL: url, Transport: s.cfg.Fusion.Transport,
		ModelFingerprint: s.m.Fingerprint(), TokenizerFingerprint: s.m.Tokenizer.Fingerprint(),
		Model: s.m, SlotDir: s.cfg.Fusion.SlotDir, Timeout: s.cfg.Timeouts.Fusion}
	if s.cfg.Fusion.Transport == adapters.TransportStore {
		if s.store == nil {
			return acfg, errors.New("sidecar: fusion.transport=store needs a store")
		}
		acfg.Store = s.store
	}
	return acfg, nil
}

// newQueue builds the ingest queue of POST /v1/fusion/documents: fused KV
// of the submitted documents, computed after S = fusion.system, stored
// under the submitting tenant's keys with the configured fusion parameters
// (the ones the fuser looks up).
func (s *Sidecar) newQueue(ctx context.Context) error {
	prefix := fusion.EncodePrefix(s.m.Tokenizer, s.cfg.Fusion.System)
	cctx, cancel := context.WithTimeout(ctx, selfCheckTimeout)
	defer cancel()
	in, err := fusion.NewIngester(cctx, fusion.Config{Model: s.m, Store: s.store, Prefix: prefix,
		Neighbours: s.cfg.Fusion.Neighbours, Workers: 1})
	if err != nil {
		return err
	}
	tmpl, err := fusion.TemplateNamed(s.cfg.Documents.Template)
	if err != nil {
		return fmt.Errorf("sidecar: documents.template: %w", err)
	}
	chunker := fusion.Chunker{Tokenizer: s.m.Tokenizer, Template: tmpl, MaxTokens: s.m.Config.MaxPositions - len(prefix)}
	if tmpl.Whole {
		// Chunks cut on the whole document's ids must be the passages the
		// fuser finds when the document is presented whole (convention d).
		chunker.Size = s.cfg.Fusion.ParagraphMaxTokens
	}
	ch, err := fusion.NewChunker(chunker)
	if err != nil {
		return err
	}
	s.chunker = ch
	s.queue, err = fusion.NewQueue(fusion.QueueConfig{Ingester: in, Chunker: ch, MaxJobsPerTenant: s.cfg.Documents.MaxJobsPerTenant})
	return err
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

// Count implements proxy.Documents: the documents the queue would ingest
// from body (fusion.ParseDocuments).
func (q indexingQueue) Count(body []byte) (int, error) {
	docs, err := fusion.ParseDocuments(body)
	return len(docs), err
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

// Serve accepts connections on ln until Shutdown or Close.
func (s *Sidecar) Serve(ln net.Listener) error { return s.proxy.Serve(ln) }

// ListenAndServe listens on Config.Proxy.Listen and serves.
func (s *Sidecar) ListenAndServe() error { return s.proxy.ListenAndServe() }

// Handler is the sidecar's request handler, for serving it on a listener
// or server of one's own.
func (s *Sidecar) Handler() fasthttp.RequestHandler { return s.proxy.Handler }

// Shutdown stops accepting and waits for the requests in flight until ctx
// ends; only the first call does anything. Close must still be called.
func (s *Sidecar) Shutdown(ctx context.Context) error {
	s.shutdownOnce.Do(func() { s.shutdownErr = s.proxy.Shutdown(ctx) })
	return s.shutdownErr
}

// Close shuts the proxy down unless Shutdown did (waiting up to
// timeouts.shutdown for the requests in flight), then closes the documents queue, the fuser and its
// adapter, flushes telemetry, and closes the store and the model when New
// opened them. It is safe to call more than once.
func (s *Sidecar) Close() error {
	s.closeOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), s.cfg.Timeouts.Shutdown)
		defer cancel()
		s.closeErr = errors.Join(s.Shutdown(ctx), s.release())
	})
	return s.closeErr
}

// release closes everything but the proxy, in the reverse order of New.
func (s *Sidecar) release() error {
	var err error
	if s.queue != nil {
		ctx, cancel := context.WithTimeout(context.Background(), queueCloseTimeout)
		err = errors.Join(err, s.queue.Close(ctx))
		cancel()
	}
	if s.fuser != nil {
		err = errors.Join(err, s.fuser.Close())
	}
	if s.tel != nil {
		ctx, cancel := context.WithTimeout(context.Background(), s.cfg.Timeouts.Shutdown)
		err = errors.Join(err, s.tel.Shutdown(ctx))
		cancel()
	}
	if s.store != nil && s.ownStore {
		err = errors.Join(err, s.store.Close())
	}
	if s.m != nil && s.ownModel {
		err = errors.Join(err, s.m.Close())
	}
	return err
}

// Config is the validated proxy configuration, defaults filled.
func (s *Sidecar) Config() proxy.Config { return s.cfg }

// Proxy is the front door (its breaker state, telemetry).
func (s *Sidecar) Proxy() *proxy.Proxy { return s.proxy }

// Fuser is the fusion path; nil without a model or with fusion disabled.
func (s *Sidecar) Fuser() *Fuser { return s.fuser }

// Model is the fusion path's model; nil without one.
func (s *Sidecar) Model() *model.Model { return s.m }

// Store is the KV store; nil without one.
func (s *Sidecar) Store() kvstore.Store { return s.store }
