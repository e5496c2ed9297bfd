package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/fusionrag/fusionrag/adapters"
	"github.com/fusionrag/fusionrag/engine"
	"github.com/fusionrag/fusionrag/kvstore"
	"github.com/fusionrag/fusionrag/model"
	"github.com/fusionrag/fusionrag/proxy"
	"github.com/fusionrag/fusionrag/sidecar"
)

// demoStack is the engine and the sidecar with its fusion path, in process on
// loopback ports.
type demoStack struct {
	engineURL, sidecarURL string
	fuser                 *sidecar.Fuser
	closers               []func()
}

func (s *demoStack) close() {
	for i := len(s.closers) - 1; i >= 0; i-- {
		s.closers[i]()
	}
	s.closers = nil
}

// startDemoStack serves m with the engine and puts the sidecar in front of it,
// built as fusionrag serve builds it (package sidecar: reuse self-check,
// documents queue) with the real fusion path over store, publishing KV to
// the engine with the native adapter (HTTP push, PUT /v1/kv/{key}). rec
// records what the fusion path did for each request.
func startDemoStack(m *model.Model, cfg *DemoConfig, store kvstore.Store) (_ *demoStack, _ *demoRecorder, err error) {
	s := &demoStack{}
	defer func() {
		if err != nil {
			s.close()
		}
	}()
	url, stop, err := startEngine(engine.Config{MaxBatch: 4, PushStoreURL: "mem://?max=2GiB"}, m)
	if err != nil {
		return nil, nil, fmt.Errorf("demo: %w", err)
	}
	s.closers = append(s.closers, stop)
	s.engineURL = url

	pln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, nil, fmt.Errorf("demo: %w", err)
	}
	pcfg := proxy.DefaultConfig()
	pcfg.Listen, pcfg.Upstream = pln.Addr().String(), s.engineURL
	pcfg.Fusion.Adapter, pcfg.Fusion.Transport = "native", adapters.TransportPush
	pcfg.Fusion.Strategy = "fusionrag"
	pcfg.Fusion.Ratio = cfg.Ratio
	pcfg.Fusion.Neighbours = cfg.Neighbours
	// Every chunk is ingested: a miss means something is wrong, and the
	// request should say so rather than compute it on the spot.
	pcfg.Fusion.MaxMissingFraction = 0
	pcfg.Timeouts.Fusion = 2 * time.Minute
	rec := &demoRecorder{byUser: map[string]demoOutcome{}}
	sc, err := sidecar.New(context.Background(), sidecar.Config{Proxy: pcfg, Model: m, Store: store,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Env:    sidecar.NoEnv, // no telemetry export, whatever the environment says
		WrapFuser: func(f proxy.Fuser) proxy.Fuser {
			rec.inner = f
			return rec
		}})
	if err != nil {
		pln.Close()
		return nil, nil, fmt.Errorf("demo: %w", err)
	}
	s.fuser = sc.Fuser()
	go sc.Serve(pln)
	s.closers = append(s.closers, func() { sc.Close() })
	s.sidecarURL = "http://" + pln.Addr().String()
	return s, rec, nil
}

// demoOutcome is what the fusion path did for one request.
type demoOutcome struct {
	stats proxy.Stats
	err   error
}

// demoRecorder wraps the fusion path to keep, per request ("user" field of the
// body, unique per request in the demo), the stats it reported or its error.
// It changes nothing in what the sidecar does.
type demoRecorder struct {
	inner  proxy.Fuser
	mu     sync.Mutex
	byUser map[string]demoOutcome
}

// Fuse implements proxy.Fuser.
func (r *demoRecorder) Fuse(ctx context.Context, req *proxy.Request) (*proxy.Plan, error) {
	plan, err := r.inner.Fuse(ctx, req)
	var body struct {
		User string `json:"user"`
	}
	if json.Unmarshal(req.Body, &body) == nil && body.User != "" {
		o := demoOutcome{err: err}
		if err == nil && plan != nil {
			o.stats = plan.Stats
		}
		r.mu.Lock()
		r.byUser[body.User] = o
		r.mu.Unlock()
	}
	return plan, err
}

func (r *demoRecorder) take(user string) (demoOutcome, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	o, ok := r.byUser[user]
	delete(r.byUser, user)
	return o, ok
}
