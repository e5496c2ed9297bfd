package engine

import (
	"errors"
	"fmt"
	"net"
	"runtime"
	"time"
)

// Config is the engine's serving configuration. Build it with NewConfig (or
// call Normalize on a literal): zero fields get the documented defaults and
// out-of-range values are rejected.
type Config struct {
	// Listen is the TCP address of the HTTP API. Default "127.0.0.1:8000".
	Listen string
	// ModelName is the id served in /v1/models and accepted in requests'
	// "model" field (an empty field is accepted too). Default "fusionrag".
	ModelName string
	// MaxBatch is the number of requests decoded together (the running set of
	// the scheduler). Default 16.
	MaxBatch int
	// MaxQueue is the number of admitted requests waiting for a slot; beyond
	// it requests are refused with 503. Default 256.
	MaxQueue int
	// ContextLimit is the longest sequence (prompt + completion) in tokens. 0
	// means the model's own limit; a larger value is clamped to it.
	ContextLimit int
	// PrefillChunk is the most prompt tokens prefilled per scheduler step
	// (chunked prefill), per sequence and over all sequences together, so
	// long prompts do not stall the other sequences' decoding for their
	// whole prefill. Default 512.
	PrefillChunk int
	// Workers is how many sequences' steps run in parallel when the LM does
	// not batch (has no ExtendBatch); a batching LM parallelises inside its
	// call. Default GOMAXPROCS.
	Workers int
	// StoreURL is the shared KV store (kvstore.Open syntax, e.g.
	// "redis://127.0.0.1:6379/0") where a sidecar publishes KV. Empty: only
	// KV pushed over HTTP (PUT /v1/kv/{key}) is available.
	StoreURL string
	// PushStoreURL is the store that KV pushed over HTTP lands in.
	// Default "mem://?max=1GiB".
	PushStoreURL string
	// RequestTimeout bounds one request from admission to its last token.
	// Default 10 minutes.
	RequestTimeout time.Duration
	// MaxBodyBytes bounds JSON request bodies. Default 256 MiB.
	MaxBodyBytes int64
	// MaxKVBytes bounds one pushed KV blob (PUT /v1/kv/{key}). Default 4 GiB
	// (a 2K-token prompt of a Llama-3-8B-shaped model is 256 MiB in fp16).
	MaxKVBytes int64
}

// Defaults used by Normalize.
const (
	DefaultListen       = "127.0.0.1:8000"
	DefaultModelName    = "fusionrag"
	DefaultMaxBatch     = 16
	DefaultMaxQueue     = 256
	DefaultPrefillChunk = 512
	DefaultPushStoreURL = "mem://?max=1GiB"
	DefaultTimeout      = 10 * time.Minute
	DefaultMaxBody      = 256 << 20
	DefaultMaxKV        = 4 << 30
)

// ErrConfig is wrapped by every configuration error.
var ErrConfig = errors.New("engine: invalid config")

// NewConfig returns c with defaults filled in, or an error naming the first
// invalid field.
func NewConfig(c Config) (Config, error) {
	if err := c.Normalize(); err != nil {
		return Config{}, err
	}
	return c, nil
}

// Normalize fills defaults in place and validates.
func (c *Config) Normalize() error {
	if c.Listen == "" {
		c.Listen = DefaultListen
	}
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		return fmt.Errorf("%w: Listen %q: %v", ErrConfig, c.Listen, err)
	}
	if c.ModelName == "" {
		c.ModelName = DefaultModelName
	}
	ints := []struct {
		name string
		v    *int
		def  int
	}{
		{"MaxBatch", &c.MaxBatch, DefaultMaxBatch},
		{"MaxQueue", &c.MaxQueue, DefaultMaxQueue},
		{"PrefillChunk", &c.PrefillChunk, DefaultPrefillChunk},
		{"Workers", &c.Workers, runtime.GOMAXPROCS(0)},
	}
	for _, f := range ints {
		if *f.v == 0 {
			*f.v = f.def
		}
		if *f.v < 0 {
			return fmt.Errorf("%w: %s = %d, must be > 0", ErrConfig, f.name, *f.v)
		}
	}
	if c.ContextLimit < 0 {
		return fmt.Errorf("%w: ContextLimit = %d, must be >= 0", ErrConfig, c.ContextLimit)
	}
	if c.PushStoreURL == "" {
		c.PushStoreURL = DefaultPushStoreURL
	}
	if c.RequestTimeout == 0 {
		c.RequestTimeout = DefaultTimeout
	}
	if c.RequestTimeout < 0 {
		return fmt.Errorf("%w: RequestTimeout = %v, must be > 0", ErrConfig, c.RequestTimeout)
	}
	if c.MaxBodyBytes == 0 {
		c.MaxBodyBytes = DefaultMaxBody
	}
	if c.MaxBodyBytes < 0 {
		return fmt.Errorf("%w: MaxBodyBytes = %d, must be > 0", ErrConfig, c.MaxBodyBytes)
	}
	if c.MaxKVBytes == 0 {
		c.MaxKVBytes = DefaultMaxKV
	}
	if c.MaxKVBytes < 0 {
		return fmt.Errorf("%w: MaxKVBytes = %d, must be > 0", ErrConfig, c.MaxKVBytes)
	}
	return nil
}
