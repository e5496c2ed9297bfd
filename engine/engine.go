// Package engine is a small vLLM-style inference engine: an OpenAI-compatible
// HTTP API (/v1/completions, /v1/chat/completions, /v1/models, /health,
// /metrics) in front of a scheduler that decodes the running requests
// together, with a KV connector that, like vLLM's KVConnectorBase_V1, asks
// for the longest prefix of a request's token ids whose KV has been
// published, loads it, and prefills only the rest.
//
// Routes: POST /v1/completions (string or token-id prompt) and
// POST /v1/chat/completions (rendered with the model's chat template),
// streaming (OpenAI's SSE chunks, stream_options.include_usage, a final
// "data: [DONE]") or not; GET /v1/models, /health, /metrics (Prometheus
// text); GET /v1/kv (what a KV publisher must match) and PUT /v1/kv/{key}
// (push one KV blob). Errors use OpenAI's body
// {"error": {"message", "type", "param", "code"}}; httpError maps them.
//
// Scheduling: continuous batching. Requests wait FIFO (at most MaxQueue,
// then 503) for one of MaxBatch slots; every iteration advances all running
// requests by one step (a prefill chunk or one decode token) in one batched
// model call (BatchLM; ModelLM runs model.ForwardBatch), so a decode step for
// 16 requests costs about one pass over the weights. Requests join and leave
// at iteration boundaries; a client that disconnects frees its slot before
// the next step. See the scheduler type.
//
// KV connector: see Connector and the protocol comment in connector.go.
//
// It serves the demo and the end-to-end tests, and it is the reference for
// what an adapter (package adapters) must deliver to a production engine.
package engine

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/fusionrag/fusionrag/internal/otelenv"
	"github.com/fusionrag/fusionrag/model/tokenizer"
	"github.com/fusionrag/fusionrag/prompt"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
)

// Engine serves one model over HTTP.
type Engine struct {
	cfg     Config
	lm      LM
	tok     tokenizer.Tokenizer
	chat    ChatTemplate
	stopIDs []int32
	limit   int
	conn    *Connector
	kv      kvLoader // e.conn, or nil
	sched   *scheduler
	met     *metrics
	readers []sdkmetric.Reader // WithMetricReader's, besides the page
	created int64

	srvMu sync.Mutex
	srv   *http.Server
}

// Option customises New.
type Option func(*Engine)

// WithChatTemplate sets the chat template (default: prompt.TemplateOf(tok)).
func WithChatTemplate(c ChatTemplate) Option { return func(e *Engine) { e.chat = c } }

// WithStopIDs replaces the ids that end generation (default: the
// tokenizer's EOS ids).
func WithStopIDs(ids []int32) Option { return func(e *Engine) { e.stopIDs = ids } }

// WithConnector gives the engine a KV connector (see NewConnector); without
// one, requests with kv_transfer_params are served by full prefill and
// PUT /v1/kv/{key} answers 404.
func WithConnector(c *Connector) Option { return func(e *Engine) { e.conn = c } }

// WithMetricReader adds an OpenTelemetry metric reader beside the /metrics
// page, e.g. the OTLP push of otelenv.MetricReader. Shutdown and Close shut
// it down, which pushes a last time.
func WithMetricReader(r sdkmetric.Reader) Option {
	return func(e *Engine) { e.readers = append(e.readers, r) }
}

// New builds an engine over lm and tok. cfg is normalised (defaults filled,
// validated); the context limit is clamped to the model's.
func New(cfg Config, lm LM, tok tokenizer.Tokenizer, opts ...Option) (*Engine, error) {
	if err := cfg.Normalize(); err != nil {
		return nil, err
	}
	if lm == nil || tok == nil {
		return nil, fmt.Errorf("%w: a model and a tokenizer are required", ErrConfig)
	}
	if tok.VocabSize() > lm.VocabSize() {
		return nil, fmt.Errorf("%w: tokenizer has %d ids but the model only %d", ErrConfig, tok.VocabSize(), lm.VocabSize())
	}
	e := &Engine{cfg: cfg, lm: lm, tok: tok, stopIDs: tok.EOS(), created: time.Now().Unix()}
	for _, o := range opts {
		o(e)
	}
	res, err := otelenv.Resource(context.Background(), "fusionrag-engine")
	if err != nil {
		return nil, err
	}
	e.met = newMetrics(res, e.readers...)
	if e.chat == nil {
		t, err := prompt.TemplateOf(tok)
		if err != nil {
			return nil, fmt.Errorf("%w: chat template: %v", ErrConfig, err)
		}
		e.chat = t
	}
	e.limit = lm.MaxPositions()
	if cfg.ContextLimit > 0 && cfg.ContextLimit < e.limit {
		e.limit = cfg.ContextLimit
	}
	if e.conn != nil {
		e.conn.met = e.met
		e.kv = e.conn
	}
	e.sched = newScheduler(e.cfg, lm, tok, e.met)
	counts := e.sched.counts
	e.met.counts.Store(&counts)
	return e, nil
}

// Config returns the normalised configuration.
func (e *Engine) Config() Config { return e.cfg }

// ContextLimit is the longest sequence (prompt + completion) served.
func (e *Engine) ContextLimit() int { return e.limit }

// Stats is a snapshot of the scheduler.
type Stats struct {
	Running int // requests in the running batch
	Waiting int // requests queued for a slot
}

// Stats returns the current scheduler occupancy.
func (e *Engine) Stats() Stats {
	r, w := e.sched.counts()
	return Stats{Running: r, Waiting: w}
}

// Serve serves the API on l until Shutdown or Close.
func (e *Engine) Serve(l net.Listener) error {
	e.srvMu.Lock()
	if e.srv == nil {
		e.srv = &http.Server{Handler: e.Handler(), ReadHeaderTimeout: 30 * time.Second}
	}
	srv := e.srv
	e.srvMu.Unlock()
	err := srv.Serve(l)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// ListenAndServe listens on Config.Listen and serves.
func (e *Engine) ListenAndServe() error {
	l, err := net.Listen("tcp", e.cfg.Listen)
	if err != nil {
		return err
	}
	return e.Serve(l)
}

// Shutdown stops accepting connections, waits for in-flight requests (until
// ctx ends), then stops the scheduler and the connector.
func (e *Engine) Shutdown(ctx context.Context) error {
	e.srvMu.Lock()
	srv := e.srv
	e.srvMu.Unlock()
	var err error
	if srv != nil {
		err = srv.Shutdown(ctx)
	}
	e.sched.close()
	if e.conn != nil {
		err = errors.Join(err, e.conn.Close())
	}
	return errors.Join(err, e.met.shutdown(ctx))
}

// Close stops everything now: running requests fail with ErrClosed.
func (e *Engine) Close() error {
	e.srvMu.Lock()
	srv := e.srv
	e.srvMu.Unlock()
	e.sched.close()
	var err error
	if srv != nil {
		err = srv.Close()
	}
	if e.conn != nil {
		err = errors.Join(err, e.conn.Close())
	}
	ctx, cancel := context.WithTimeout(context.Background(), closeFlush)
	defer cancel()
	return errors.Join(err, e.met.shutdown(ctx))
}

// closeFlush bounds the last metrics push of Close.
const closeFlush = 5 * time.Second

// Handler returns the HTTP API.
func (e *Engine) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
		endpoint := e.route(rec, r)
		e.met.request(endpoint, rec.status)
	})
}

// route dispatches and returns the endpoint label for metrics.
func (e *Engine) route(w http.ResponseWriter, r *http.Request) string {
	method := func(m string) bool {
		if r.Method != m {
			writeError(w, fmt.Errorf("%w: %s %s (use %s)", ErrMethod, r.Method, r.URL.Path, m))
			return false
		}
		return true
	}
	switch p := r.URL.Path; {
	case p == "/v1/completions":
		if method(http.MethodPost) {
			e.handleGenerate(w, r, false)
		}
		return p
	case p == "/v1/chat/completions":
		if method(http.MethodPost) {
			e.handleGenerate(w, r, true)
		}
		return p
	case p == "/v1/models":
		if method(http.MethodGet) {
			e.handleModels(w)
		}
		return p
	case p == "/health":
		if r.Method == http.MethodGet || r.Method == http.MethodHead {
			e.handleHealth(w)
		} else {
			method(http.MethodGet)
		}
		return p
	case p == "/metrics":
		if method(http.MethodGet) {
			e.met.serve(w, r)
		}
		return p
	case p == "/v1/kv":
		if method(http.MethodGet) {
			e.handleKVInfo(w)
		}
		return p
	case len(p) > len(kvPathPrefix) && p[:len(kvPathPrefix)] == kvPathPrefix:
		if method(http.MethodPut) {
			e.handlePutKV(w, r, p[len(kvPathPrefix):])
		}
		return kvPathPrefix + "{key}"
	default:
		writeError(w, fmt.Errorf("%w: %s %s", ErrNotFound, r.Method, p))
		return "other"
	}
}

// kvPathPrefix is the route of pushed KV: PUT /v1/kv/{key}.
const kvPathPrefix = "/v1/kv/"

type statusRecorder struct {
	http.ResponseWriter
	status int
	wrote  bool
}

func (s *statusRecorder) WriteHeader(code int) {
	if !s.wrote {
		s.status, s.wrote = code, true
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusRecorder) Write(b []byte) (int, error) {
	s.wrote = true
	return s.ResponseWriter.Write(b)
}

func (s *statusRecorder) Unwrap() http.ResponseWriter { return s.ResponseWriter }

func (s *statusRecorder) Flush() {
	if f, ok := s.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (e *Engine) handleHealth(w http.ResponseWriter) {
	e.sched.mu.Lock()
	closed := e.sched.closed
	e.sched.mu.Unlock()
	if closed {
		writeError(w, ErrClosed)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	io.WriteString(w, `{"status":"ok"}`+"\n")
}

func (e *Engine) handleModels(w http.ResponseWriter) {
	writeJSON(w, http.StatusOK, map[string]any{
		"object": "list",
		"data": []map[string]any{{
			"id": e.cfg.ModelName, "object": "model", "created": e.created, "owned_by": "fusionrag",
			"root": e.cfg.ModelName, "max_model_len": e.limit,
		}},
	})
}

// readBody reads at most limit bytes of the request body.
func readBody(r *http.Request, limit int64) ([]byte, error) {
	if r.ContentLength > limit {
		return nil, fmt.Errorf("%w: %d bytes, the limit is %d", ErrTooLarge, r.ContentLength, limit)
	}
	if r.ContentLength > 0 { // known size: one allocation, no regrowth
		b := make([]byte, r.ContentLength)
		if _, err := io.ReadFull(r.Body, b); err != nil {
			return nil, fmt.Errorf("%w: reading body: %v", ErrBadRequest, err)
		}
		return b, nil
	}
	b, err := io.ReadAll(io.LimitReader(r.Body, limit+1))
	if err != nil {
		return nil, fmt.Errorf("%w: reading body: %v", ErrBadRequest, err)
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%w: more than %d bytes", ErrTooLarge, limit)
	}
	return b, nil
}

func newID(prefix string) string {
	var b [12]byte
	rand.Read(b[:])
	return prefix + hex.EncodeToString(b[:])
}
