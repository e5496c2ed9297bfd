// Package passthrough is the adapter for engines that cannot take KV from
// outside: Publish reports adapters.ErrNoPublish, and the sidecar degrades
// to plain forwarding. Importing
// the package registers it as "passthrough".
package passthrough

import (
	"context"

	"github.com/fusionrag/fusionrag/adapters"
)

// Name is the registered adapter name.
const Name = "passthrough"

func init() {
	adapters.Register(Name, func(cfg adapters.Config) (adapters.Engine, error) { return Open(cfg) })
}

// Adapter forwards requests and publishes nothing.
type Adapter struct {
	*adapters.Forwarder
}

// Open returns a passthrough adapter for the engine at cfg.URL (only URL,
// Timeout and MaxConns are used).
func Open(cfg adapters.Config) (*Adapter, error) {
	cfg.Transport, cfg.Store, cfg.StoreURL = adapters.TransportPush, nil, ""
	if err := cfg.Normalize(); err != nil {
		return nil, err
	}
	fw, err := adapters.NewForwarder(cfg)
	if err != nil {
		return nil, err
	}
	return &Adapter{Forwarder: fw}, nil
}

// Publish implements adapters.Engine: always adapters.ErrNoPublish.
func (a *Adapter) Publish(context.Context, adapters.Publication) (adapters.Lease, error) {
	return nil, adapters.ErrNoPublish
}
