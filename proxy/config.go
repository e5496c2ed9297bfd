package proxy

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/fusionrag/fusionrag/adapters"
	"github.com/fusionrag/fusionrag/recompute"
)

// Config is the sidecar's configuration. Every leaf field has a YAML key (its
// dotted path, e.g. timeouts.read), an environment variable (FUSIONRAG_ + the
// key upper-cased with dots as underscores, e.g. FUSIONRAG_TIMEOUTS_READ) and a
// flag (-timeouts.read). Precedence: flags > environment > file > defaults.
// Zero values mean "use the default"; New validates and fills them in.
// docs/configuration.md is generated from this struct (see Reference).
type Config struct {
	Listen      string `yaml:"listen" doc:"Address the sidecar listens on, host:port." default:"127.0.0.1:8080"`
	Upstream    string `yaml:"upstream" doc:"Base URL of the OpenAI-compatible engine, http://host:port (required). Every route is forwarded there."`
	Model       string `yaml:"model" doc:"Model the fusion path serves: a Hugging Face directory, a llama2.c .bin or a .gguf file (with the llamacpp adapter, the very file llama-server loads). Empty: pass-through only."`
	Store       string `yaml:"store" doc:"KV store URLs for the fusion path, comma-separated tiers: mem://?max=2GiB, disk:///path?max=50GiB, redis://host:port/db."`
	MetricsPath string `yaml:"metrics_path" doc:"Path of the Prometheus text exposition served by the sidecar itself (not forwarded). \"-\" forwards it to the engine instead." default:"/metrics"`
	HealthPath  string `yaml:"health_path" doc:"Path of the sidecar's health check (checks that the engine is reachable). \"-\" forwards it to the engine instead." default:"/healthz"`

	Limits    Limits          `yaml:"limits"`
	Timeouts  Timeouts        `yaml:"timeouts"`
	Fusion    Fusion          `yaml:"fusion"`
	Breaker   Breaker         `yaml:"breaker"`
	Tenant    Tenant          `yaml:"tenant"`
	Documents DocumentsConfig `yaml:"documents"`
	Telemetry TelemetryConfig `yaml:"telemetry"`
}

// TelemetryConfig is what the sidecar tells clients about its work (metrics
// and traces are configured by the standard OTEL_* variables, see
// docs/observability.md).
type TelemetryConfig struct {
	CacheHeader string `yaml:"cache_header" doc:"Response header, on every answer to POST /v1/chat/completions and /v1/completions, saying what the cache did (e.g. path=fusion hit=3/4 recomputed=19, or path=passthrough reason=too_many_missing hit=0/4; see docs/observability.md). The sidecar's value replaces any the engine sent. \"-\": no header (and the engine's X-Fusionrag-Cache is removed)." default:"X-Fusionrag-Cache"`
}

// DocumentsConfig guards the ingest route POST /v1/fusion/documents, which makes
// the sidecar compute and store KV (CPU, disk, Redis) for whoever calls it.
// It is closed unless admin_key is set (the request carries it in
// X-Fusionrag-Admin-Key) or tenant.header names a trusted gateway header
// that the request carries (the gateway vouches for the tenant). Bodies
// must be JSON or JSONL (a cross-site form or text/plain post is refused),
// and each tenant's submissions are bounded in documents, bytes and rate.
type DocumentsConfig struct {
	AdminKey             string `yaml:"admin_key" doc:"Key that opens POST /v1/fusion/documents to a request carrying it in the X-Fusionrag-Admin-Key header (compared in constant time); the documents are stored for the request's tenant (tenant header or Authorization key). Empty, and no trusted tenant.header on the request: the route answers 403. Keep it secret like an API key."`
	MaxDocuments         int    `yaml:"max_documents" doc:"Most documents in one submission; more: 413." default:"1024"`
	MaxBytes             int64  `yaml:"max_bytes" doc:"Largest submission body, bytes; larger: 413 (before the body is read when Content-Length says so)." default:"8388608"`
	TenantBytesPerMinute int64  `yaml:"tenant_bytes_per_minute" doc:"Submission bytes one tenant may send per minute (a token bucket holding max(this, max_bytes)); over it: 429 with Retry-After. 0: no rate limit." default:"33554432"`
	Template             string `yaml:"template" doc:"How submitted documents are laid out when their KV is computed, which must be how prompts present them: document (each chunk as \"\\n\\nDocument: {title}\\n{text}\", the project's own convention) or passage (the document's text whole after a blank line, cut into chunks of fusion.paragraph_max_tokens on its own ids, as LangChain, LlamaIndex and Haystack lay out retrieved text; see docs/recognition.md)." default:"document"`
	MaxJobsPerTenant     int    `yaml:"max_jobs_per_tenant" doc:"Most ingest jobs one tenant may have queued or running; more: 429 with Retry-After (about one job's run time). Jobs run one at a time, taken round-robin over the tenants with jobs waiting, so one tenant's backlog never holds another's job behind it." default:"4"`
}

// Limits bound what one request may cost the sidecar.
type Limits struct {
	MaxRequestBody  int64 `yaml:"max_request_body" doc:"Largest request body accepted, bytes; larger ones are answered 413 (before contacting the engine when Content-Length says so; chunked bodies are cut when they cross it)." default:"33554432"`
	BufferBody      int   `yaml:"buffer_body" doc:"Request bodies up to this many bytes are read whole before forwarding (and may be retried on a stale upstream connection); larger ones are streamed to the engine." default:"1048576"`
	MaxFusionBody   int64 `yaml:"max_fusion_body" doc:"Largest body of an eligible route (POST /v1/completions, /v1/chat/completions) the sidecar reads; larger ones are answered 413, since the sidecar must parse a body to fuse it and to remove a client's kv_transfer_params." default:"8388608"`
	MaxChunks       int   `yaml:"max_chunks" doc:"Most chunks one request may carry into the fusion path; more and the request is passed through." default:"64"`
	MaxUpstreamConn int   `yaml:"max_upstream_conns" doc:"Most concurrent keep-alive connections to the engine." default:"1024"`
	MaxFusions      int   `yaml:"max_concurrent_fusions" doc:"Most fusion-path runs at once, abandoned ones (past their deadline, not yet returned) included; beyond it requests are passed through." default:"64"`
	FusionMemory    int64 `yaml:"fusion_memory" doc:"Budget of the fusion path's memory in flight, bytes: each run reserves its estimate (three times the KV of the whole prompt, layers x 2 x kv_heads x head_dim x 4 bytes per token: the assembled cache, the chunks' KV and the adapter's encoded copy; plus the recompute pass's activations) before it recomputes and releases it once published; a request whose reservation does not fit is forwarded untouched (skip reason over_budget, not a failure). 0: half the memory the process may use (its cgroup limit, else the machine's), 4 GiB when neither is known; -1: no budget."`
	IndexedChunks   int   `yaml:"indexed_chunks" doc:"Most chunks the known-chunk index (unmarked prompts, convention c) holds for all tenants together; past it, the oldest chunk of the tenant holding the most is dropped, so one tenant's flood never evicts a tenant under its share." default:"65536"`
	IndexPerTenant  int   `yaml:"indexed_chunks_per_tenant" doc:"Most chunks the known-chunk index holds for one tenant; past it, the tenant's oldest chunk is dropped for the new one." default:"8192"`
}

// Timeouts are per phase. Read and Write are idle timeouts (time allowed
// between two successful reads or writes), so that a long SSE stream lives as
// long as the engine keeps sending.
type Timeouts struct {
	Connect    time.Duration `yaml:"connect" doc:"Dialling the engine; past it the client gets 502." default:"2s"`
	Read       time.Duration `yaml:"read" doc:"Longest silence from the engine while waiting for or reading a response (time to first byte included); past it 504, or the stream is cut." default:"5m0s"`
	Write      time.Duration `yaml:"write" doc:"Longest stall while writing a request to the engine." default:"1m0s"`
	Idle       time.Duration `yaml:"idle" doc:"Idle keep-alive connections to the engine are closed after this. Keep it below the engine's own keep-alive timeout (vLLM, uvicorn: 5s), so that the sidecar closes an idle connection before the engine does; one the engine closed first is found stale on use, and the request is retried on a new connection." default:"4s"`
	ClientRead time.Duration `yaml:"client_read" doc:"Reading a client's whole request, streamed body included." default:"1m0s"`
	ClientIdle time.Duration `yaml:"client_idle" doc:"Idle client keep-alive connections are closed after this." default:"2m0s"`
	Fusion     time.Duration `yaml:"fusion" doc:"Deadline of the fusion path (segment, look up, recompute, publish); past it the original request is forwarded." default:"5s"`
	Shutdown   time.Duration `yaml:"shutdown" doc:"Grace period for in-flight requests on shutdown." default:"10s"`
}

// Fusion configures the fusion path's defaults; a request may override the
// strategy and ratio (headers X-Fusionrag-Strategy, X-Fusionrag-Ratio or the
// body field "fusionrag") unless IgnoreOverrides is set.
type Fusion struct {
	Disabled           bool    `yaml:"disabled" doc:"Pass every request through; the fusion path is never tried."`
	Strategy           string  `yaml:"strategy" doc:"Default recompute strategy: full, reuse, cacheblend, epic or fusionrag." default:"fusionrag"`
	Ratio              float64 `yaml:"ratio" doc:"Default fraction of context tokens recomputed, in (0, 1]." default:"0.15"`
	MaxMissingFraction float64 `yaml:"max_missing_fraction" doc:"Chunks missing from the store are computed and stored, unless more than this fraction of a request's chunks is missing: then the request skips fusion." default:"0.5"`
	Separator          string  `yaml:"separator" doc:"Chunk separator matched at token level in prompts (e.g. \" # # \"). Empty: none."`
	MarkerOpen         string  `yaml:"marker_open" doc:"Opening marker of a chunk (e.g. <doc>), matched at token level. Needs marker_close."`
	MarkerClose        string  `yaml:"marker_close" doc:"Closing marker of a chunk (e.g. </doc>)."`
	KeepMarkers        bool    `yaml:"keep_markers" doc:"Keep separators and markers in the sequence the engine sees (default: strip them)."`
	IgnoreOverrides    bool    `yaml:"ignore_overrides" doc:"Ignore per-request strategy and ratio overrides (the body field is still removed)."`
	Neighbours         int     `yaml:"neighbours" doc:"Fusion parameter n the chunk KV was ingested with (neighbours fused into each chunk); part of every chunk key, so it must match the ingest's --neighbours." default:"10"`
	Similarity         string  `yaml:"similarity" doc:"Neighbour similarity the chunk KV was ingested with (bm25, or emb:<model>); part of every chunk key like neighbours." default:"bm25"`
	NoParagraphs       bool    `yaml:"no_paragraphs" doc:"Turn off the recognition of passages in unmarked prompts (convention d, docs/recognition.md): blocks of text between blank lines, of paragraph_min_tokens tokens or more, anywhere in the rendered prompt (system or user message), are chunks. Chunks met before are still recognised."`
	ParagraphMinTokens int     `yaml:"paragraph_min_tokens" doc:"Fewest tokens a blank-line block of an unmarked prompt needs to be a chunk; shorter blocks (a metadata line, a rule, Context:) are glue of the chunk after them, or part of S or Q." default:"32"`
	ParagraphMaxTokens int     `yaml:"paragraph_max_tokens" doc:"Most tokens of one chunk found in an unmarked prompt; a longer block (a whole document) is cut into windows of at most this many tokens on the prompt's own ids, before a word where it can." default:"256"`
	System             string  `yaml:"system" doc:"System text S that documents ingested through POST /v1/fusion/documents are computed after (BOS alone when empty); chat requests must start with the same system message to hit them."`
	Adapter            string  `yaml:"adapter" doc:"Engine adapter that receives the assembled KV, one of those registered in the binary: native (this project's engine), llamacpp (an unmodified llama-server: KV restored into a slot the request is pinned to; needs slot_dir, see docs/deploy.md) or passthrough (publishes nothing: every request is forwarded untouched)." default:"native"`
	AdapterURL         string  `yaml:"adapter_url" doc:"Base URL the adapter talks to (KV info, KV push, slot actions). Empty: the upstream."`
	Transport          string  `yaml:"transport" doc:"How the native adapter hands KV to the engine: push (PUT /v1/kv/{key}) or store (written into the store, which the engine must share)." default:"push"`
	SlotDir            string  `yaml:"slot_dir" doc:"Directory, as the sidecar sees it, that llama-server reads and writes slot files in (its --slot-save-path, a volume both share); absolute. Required by the llamacpp adapter."`
}

// Breaker configures the circuit breaker around the fusion path. When it is
// open, requests go straight to the engine.
type Breaker struct {
	ConsecutiveFailures uint32        `yaml:"consecutive_failures" doc:"Consecutive fusion-path failures that open the breaker." default:"5"`
	OpenTimeout         time.Duration `yaml:"open_timeout" doc:"How long the breaker stays open before letting trial requests through (half-open)." default:"10s"`
	HalfOpenRequests    uint32        `yaml:"half_open_requests" doc:"Trial requests allowed while half-open; that many successes close the breaker." default:"1"`
	Interval            time.Duration `yaml:"interval" doc:"Period after which the failure counts of a closed breaker are cleared." default:"1m0s"`
}

// Tenant says how requests are assigned to tenants. The tenant is part of every
// cache key, so one tenant can never hit another's KV.
//
// By default no header is trusted: a client reaching the sidecar could name
// any tenant in one, and read or fill that tenant's cache. The tenant is then
// an xxh3 hash of the request's bearer key, or the one anonymous tenant
// without a key. Header is an opt-in for deployments where a gateway in front
// of the sidecar authenticates clients and sets (or strips) that header on
// every request. The sidecar forwards the header to the engine like any other
// header, trusted or not: stripping it could not tell a gateway's value from a
// client's, so keeping clients' values out is the gateway's job.
type Tenant struct {
	Header string `yaml:"header" doc:"Header whose value names the tenant (e.g. X-Fusionrag-Tenant). Set this only when a trusted gateway sets or strips this header on every request: any client that reaches the sidecar can claim any tenant with it. \"-\" (the default): no header is trusted, and the tenant is an xxh3 hash of the Authorization bearer key (never the key itself), or anonymous (one tenant shared by every request without a key). The header is forwarded to the engine either way." default:"-"`
}

// validStrategy reports whether s names a recompute strategy registered in
// this binary (recompute.Register); the configuration and the per-request
// overrides are checked against the registry, never against a list of our own.
func validStrategy(s string) bool { return slices.Contains(recompute.Strategies(), s) }

// strategyNames is the registered strategies as error messages list them.
func strategyNames() string { return strings.Join(recompute.Strategies(), ", ") }

// DefaultConfig returns the configuration with every default filled in except
// Upstream, which has none.
func DefaultConfig() Config {
	var c Config
	if err := c.fillDefaults(); err != nil {
		panic("proxy: bad default tag: " + err.Error()) // broken invariant: the tags are constants
	}
	return c
}

// fillDefaults sets every zero leaf that has a default tag.
func (c *Config) fillDefaults() error {
	return walkConfig(reflect.ValueOf(c).Elem(), "", func(f setting) error {
		if f.def == "" || !f.v.IsZero() {
			return nil
		}
		return f.set(f.def)
	})
}

// Validate fills defaults and checks every field; the error names the key.
func (c *Config) Validate() error {
	if err := c.fillDefaults(); err != nil {
		return err
	}
	var errs []error
	bad := func(key, format string, a ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", key, fmt.Sprintf(format, a...)))
	}
	if c.Upstream == "" {
		bad("upstream", "required (the engine's base URL, e.g. http://127.0.0.1:8000)")
	} else if _, err := upstreamAddr(c.Upstream); err != nil {
		bad("upstream", "%v", err)
	}
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		bad("listen", "%v", err)
	}
	for key, p := range map[string]string{"metrics_path": c.MetricsPath, "health_path": c.HealthPath} {
		if p != "-" && !strings.HasPrefix(p, "/") {
			bad(key, "%q must start with / (or be - to disable)", p)
		}
	}
	if c.Limits.MaxRequestBody < 0 || c.Limits.BufferBody < 0 || c.Limits.MaxFusionBody < 0 || c.Limits.MaxChunks < 0 || c.Limits.MaxUpstreamConn < 0 || c.Limits.MaxFusions < 0 {
		bad("limits", "negative limit")
	}
	for key, d := range map[string]time.Duration{
		"timeouts.connect": c.Timeouts.Connect, "timeouts.read": c.Timeouts.Read, "timeouts.write": c.Timeouts.Write,
		"timeouts.idle": c.Timeouts.Idle, "timeouts.client_read": c.Timeouts.ClientRead, "timeouts.client_idle": c.Timeouts.ClientIdle,
		"timeouts.fusion": c.Timeouts.Fusion, "timeouts.shutdown": c.Timeouts.Shutdown,
		"breaker.open_timeout": c.Breaker.OpenTimeout, "breaker.interval": c.Breaker.Interval,
	} {
		if d < 0 {
			bad(key, "negative duration %v", d)
		}
	}
	if !validStrategy(c.Fusion.Strategy) {
		bad("fusion.strategy", "%q is not one of the registered strategies %s", c.Fusion.Strategy, strategyNames())
	}
	if !(c.Fusion.Ratio > 0 && c.Fusion.Ratio <= 1) {
		bad("fusion.ratio", "%v is not in (0, 1]", c.Fusion.Ratio)
	}
	if !(c.Fusion.MaxMissingFraction >= 0 && c.Fusion.MaxMissingFraction <= 1) {
		bad("fusion.max_missing_fraction", "%v is not in [0, 1]", c.Fusion.MaxMissingFraction)
	}
	// Adapters register themselves from their packages (cmd/fusionrag
	// imports every one), so the names are whatever this binary holds.
	if names := adapters.Names(); !c.Fusion.Disabled && !slices.Contains(names, c.Fusion.Adapter) {
		bad("fusion.adapter", "%q is not one of the registered adapters %v", c.Fusion.Adapter, names)
	}
	if c.Fusion.SlotDir != "" && !filepath.IsAbs(c.Fusion.SlotDir) {
		bad("fusion.slot_dir", "%q is not an absolute path", c.Fusion.SlotDir)
	}
	if why := adapters.NeedsOf(c.Fusion.Adapter).SlotDir; why != "" && c.Fusion.SlotDir == "" && !c.Fusion.Disabled {
		bad("fusion.slot_dir", "required by the %s adapter (%s)", c.Fusion.Adapter, why)
	}
	if c.Fusion.Transport != adapters.TransportPush && c.Fusion.Transport != adapters.TransportStore {
		bad("fusion.transport", "%q is not %s or %s", c.Fusion.Transport, adapters.TransportPush, adapters.TransportStore)
	}
	if c.Fusion.AdapterURL != "" {
		if _, err := upstreamAddr(c.Fusion.AdapterURL); err != nil {
			bad("fusion.adapter_url", "%v", err)
		}
	}
	if (c.Fusion.MarkerOpen == "") != (c.Fusion.MarkerClose == "") {
		bad("fusion.marker_open", "marker_open and marker_close go together")
	}
	if c.Fusion.ParagraphMinTokens < 1 || c.Fusion.ParagraphMaxTokens < c.Fusion.ParagraphMinTokens {
		bad("fusion.paragraph_min_tokens", "%d and paragraph_max_tokens %d: want 1 <= min <= max", c.Fusion.ParagraphMinTokens, c.Fusion.ParagraphMaxTokens)
	}
	if c.Documents.MaxDocuments < 0 || c.Documents.MaxBytes < 0 || c.Documents.TenantBytesPerMinute < 0 || c.Documents.MaxJobsPerTenant < 0 {
		bad("documents", "negative limit")
	}
	if c.Limits.IndexedChunks < 0 || c.Limits.IndexPerTenant < 0 {
		bad("limits", "negative known-chunk index bound")
	}
	if c.Limits.FusionMemory < -1 {
		bad("limits.fusion_memory", "%d: bytes, 0 for the default or -1 for no budget", c.Limits.FusionMemory)
	}
	if c.Telemetry.CacheHeader != "-" && !validHeaderName(c.Telemetry.CacheHeader) {
		bad("telemetry.cache_header", "%q is not a valid header name (or - for none)", c.Telemetry.CacheHeader)
	}
	if c.Tenant.Header != "-" && !validHeaderName(c.Tenant.Header) {
		bad("tenant.header", "%q is not a valid header name", c.Tenant.Header)
	}
	return errors.Join(errs...)
}

func validHeaderName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c == '-' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || strings.IndexByte("!#$%&'*+.^_`|~", c) >= 0) {
			return false
		}
	}
	return true
}

// upstreamAddr returns host:port of an http:// upstream URL.
func upstreamAddr(raw string) (string, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return "", err
	}
	if u.Scheme != "http" {
		return "", fmt.Errorf("%q: only http:// upstreams are supported", raw)
	}
	if u.Host == "" {
		return "", fmt.Errorf("%q has no host", raw)
	}
	if u.Path != "" && u.Path != "/" {
		return "", fmt.Errorf("%q: upstream must be a base URL without a path (routes are forwarded as they come)", raw)
	}
	host, port := u.Hostname(), u.Port()
	if port == "" {
		port = "80"
	}
	return net.JoinHostPort(host, port), nil
}

// LoadConfig builds a configuration with precedence flags > environment > file
// > defaults, then validates it. file may be empty; env looks a variable up
// (os.LookupEnv); flags holds the values of flags set on the command line, by
// key (see FlagSet.Visited).
func LoadConfig(file string, env func(string) (string, bool), flags map[string]string) (Config, error) {
	var c Config
	if file != "" {
		b, err := os.ReadFile(file)
		if err != nil {
			return c, fmt.Errorf("config: %w", err)
		}
		dec := yaml.NewDecoder(bytes.NewReader(b))
		dec.KnownFields(true)
		if err := dec.Decode(&c); err != nil && !errors.Is(err, errEOF) {
			return c, fmt.Errorf("config %s: %w", file, err)
		}
	}
	err := walkConfig(reflect.ValueOf(&c).Elem(), "", func(f setting) error {
		if env != nil {
			if v, ok := env(f.env()); ok {
				if err := f.set(v); err != nil {
					return fmt.Errorf("%s: %w", f.env(), err)
				}
			}
		}
		if v, ok := flags[f.key]; ok {
			if err := f.set(v); err != nil {
				return fmt.Errorf("-%s: %w", f.key, err)
			}
		}
		return nil
	})
	if err != nil {
		return c, fmt.Errorf("config: %w", err)
	}
	if err := c.Validate(); err != nil {
		return c, fmt.Errorf("config: %w", err)
	}
	return c, nil
}

// errEOF is what yaml.v3 returns for an empty document.
var errEOF = func() error {
	var x struct{}
	return yaml.NewDecoder(bytes.NewReader(nil)).Decode(&x)
}()

// ConfigFlags holds one flag per configuration key, of the key's type.
type ConfigFlags struct {
	fs   *flag.FlagSet
	keys map[string]bool
}

// RegisterFlags adds a flag for every configuration key to fs (-listen,
// -upstream, -timeouts.read, ...), typed by its field: a bool flag takes no
// value (-fusion.disabled; -fusion.disabled=false to turn it off over the
// environment), durations and numbers are parsed as such with the command
// line. Their values only count when set.
func RegisterFlags(fs *flag.FlagSet) *ConfigFlags {
	cf := &ConfigFlags{fs: fs, keys: map[string]bool{}}
	var c Config
	_ = walkConfig(reflect.ValueOf(&c).Elem(), "", func(f setting) error {
		usage := f.doc
		if f.def != "" {
			usage += " (default " + f.def + ")"
		}
		cf.keys[f.key] = true
		// Zero flag defaults: the default is the config's (in usage), and a
		// flag counts only when set. f.set range-checks the field's width.
		switch {
		case f.v.Type() == durationType:
			fs.Duration(f.key, 0, usage)
		case f.v.Kind() == reflect.Bool:
			fs.Bool(f.key, false, usage)
		case f.v.CanInt():
			fs.Int64(f.key, 0, usage)
		case f.v.CanUint():
			fs.Uint64(f.key, 0, usage)
		case f.v.CanFloat():
			fs.Float64(f.key, 0, usage)
		default:
			fs.String(f.key, "", usage)
		}
		return nil
	})
	return cf
}

// Visited returns the values of the flags set on the command line, by key,
// formatted as LoadConfig parses them.
func (cf *ConfigFlags) Visited() map[string]string {
	m := map[string]string{}
	cf.fs.Visit(func(f *flag.Flag) {
		if cf.keys[f.Name] {
			m[f.Name] = f.Value.String()
		}
	})
	return m
}

// setting is one leaf of Config met by walkConfig.
type setting struct {
	key, doc, def string
	v             reflect.Value
}

func (f setting) env() string {
	return "FUSIONRAG_" + strings.ToUpper(strings.ReplaceAll(f.key, ".", "_"))
}

var durationType = reflect.TypeFor[time.Duration]()

func (f setting) typeName() string {
	if f.v.Type() == durationType {
		return "duration"
	}
	return f.v.Kind().String()
}

func (f setting) set(s string) error {
	s = strings.TrimSpace(s)
	switch {
	case f.v.Type() == durationType:
		d, err := time.ParseDuration(s)
		if err != nil {
			return err
		}
		f.v.SetInt(int64(d))
	case f.v.Kind() == reflect.String:
		f.v.SetString(s)
	case f.v.Kind() == reflect.Bool:
		b, err := strconv.ParseBool(s)
		if err != nil {
			return err
		}
		f.v.SetBool(b)
	case f.v.CanInt():
		n, err := strconv.ParseInt(s, 10, f.v.Type().Bits())
		if err != nil {
			return err
		}
		f.v.SetInt(n)
	case f.v.CanUint():
		n, err := strconv.ParseUint(s, 10, f.v.Type().Bits())
		if err != nil {
			return err
		}
		f.v.SetUint(n)
	case f.v.CanFloat():
		x, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return err
		}
		f.v.SetFloat(x)
	default:
		panic("proxy: config field of unsupported kind " + f.v.Kind().String()) // broken invariant
	}
	return nil
}

// walkConfig calls fn for every leaf of the struct v, keys joined by dots.
func walkConfig(v reflect.Value, prefix string, fn func(setting) error) error {
	t := v.Type()
	for i := 0; i < t.NumField(); i++ {
		sf := t.Field(i)
		name, _, _ := strings.Cut(sf.Tag.Get("yaml"), ",")
		if name == "" || name == "-" {
			continue
		}
		key := prefix + name
		fv := v.Field(i)
		if fv.Kind() == reflect.Struct {
			if err := walkConfig(fv, key+".", fn); err != nil {
				return err
			}
			continue
		}
		if err := fn(setting{key: key, doc: sf.Tag.Get("doc"), def: sf.Tag.Get("default"), v: fv}); err != nil {
			return err
		}
	}
	return nil
}

// Reference returns docs/configuration.md: every key with its environment
// variable, flag, type, default and meaning.
func Reference() string {
	var b strings.Builder
	b.WriteString(`# fusionrag serve: configuration

<!-- Generated from proxy.Config by "go test ./proxy -run TestReference -update". Do not edit by hand. -->

` + "`fusionrag serve`" + ` reads its configuration from, in increasing precedence: the defaults below, a YAML
file (` + "`--config FILE` or `FUSIONRAG_CONFIG`" + `), environment variables, and flags. Every key is a YAML path
(` + "`timeouts.read`" + ` is ` + "`timeouts:` / `read:`" + ` in the file), an environment variable and a flag. Durations are Go
durations (` + "`250ms`, `5s`, `1m30s`" + `); sizes are bytes. A zero or empty value means the default. Unknown YAML keys
are an error.

The fusion path is tried for ` + "`POST /v1/chat/completions` and `POST /v1/completions`" + `; every other route, and every
request the fusion path cannot serve, is forwarded to the engine untouched. A request may override the
strategy and ratio with the headers ` + "`X-Fusionrag-Strategy` and `X-Fusionrag-Ratio`" + `, or with a body field
` + "`\"fusionrag\": {\"strategy\": \"epic\", \"ratio\": 0.3}`" + ` that the sidecar removes before forwarding.

Every cache key includes the request's tenant: an xxh3 hash of its bearer API key, or one anonymous tenant
for requests without a key. No header is trusted for the tenant unless ` + "`tenant.header`" + ` names one: set it
(e.g. ` + "`tenant.header: X-Fusionrag-Tenant`, `FUSIONRAG_TENANT_HEADER=X-Fusionrag-Tenant` or" + `
` + "`-tenant.header X-Fusionrag-Tenant`" + `) only when a trusted gateway in front of the sidecar sets or strips that
header on every request, since any client reaching the sidecar could otherwise claim any tenant. Unconfigured,
` + "`X-Fusionrag-Tenant`" + ` is an ordinary header, forwarded to the engine; the sidecar never strips it.

Tracing uses the standard OpenTelemetry variables: ` + "`OTEL_TRACES_EXPORTER` (`otlp` or `none`)" + `,
` + "`OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`" + ` (OTLP/gRPC), ` + "`OTEL_EXPORTER_OTLP_INSECURE`" + `,
` + "`OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`" + `. With none of them set, no spans are exported.
Metrics are always on ` + "`metrics_path`" + ` and, with an OTLP endpoint set (` + "`OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`" + ` too;
` + "`OTEL_METRICS_EXPORTER=none`" + ` turns it off), pushed over OTLP/gRPC as well: see docs/observability.md, which also
describes the ` + "`X-Fusionrag-Cache`" + ` response header.

| key | environment | flag | type | default | meaning |
|---|---|---|---|---|---|
`)
	var c Config
	_ = walkConfig(reflect.ValueOf(&c).Elem(), "", func(f setting) error {
		def := f.def
		if def == "" {
			def = "—"
		} else {
			def = "`" + def + "`"
		}
		fmt.Fprintf(&b, "| `%s` | `%s` | `-%s` | %s | %s | %s |\n", f.key, f.env(), f.key, f.typeName(), def,
			strings.ReplaceAll(f.doc, "|", `\|`))
		return nil
	})
	return b.String()
}
