package bench

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"time"

	"github.com/fusionrag/fusionrag/engine"
	"github.com/fusionrag/fusionrag/model"
	"github.com/fusionrag/fusionrag/proxy"
)

// Stack is this project's engine serving a model and the sidecar in front of
// it, both in process on loopback ports: what the load and end-to-end TTFT
// benchmarks measure when no external endpoint is given.
type Stack struct {
	// EngineURL and SidecarURL are base URLs (http://127.0.0.1:port).
	EngineURL  string
	SidecarURL string

	eng   *engine.Engine
	px    *proxy.Proxy
	close []func()
}

// StartStack serves m (which needs a tokenizer) with engine config ecfg
// (Listen is ignored: a free loopback port is used) and a sidecar built from
// pcfg (Upstream and Listen are set here) with opts, e.g. proxy.WithFuser.
// Telemetry export is off whatever the environment says.
func StartStack(m *model.Model, ecfg engine.Config, pcfg proxy.Config, opts ...proxy.Option) (*Stack, error) {
	if m == nil || m.Tokenizer == nil {
		return nil, errors.New("bench: the engine needs a model with a tokenizer")
	}
	s := &Stack{}
	eln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	ecfg.Listen = eln.Addr().String()
	eng, err := engine.NewFromModel(ecfg, m)
	if err != nil {
		eln.Close()
		return nil, err
	}
	s.eng = eng
	go eng.Serve(eln)
	s.close = append(s.close, func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if eng.Shutdown(ctx) != nil {
			eng.Close()
		}
	})
	s.EngineURL = "http://" + eln.Addr().String()

	tel, err := proxy.NewTelemetry(context.Background(), func(string) (string, bool) { return "", false })
	if err != nil {
		s.Close()
		return nil, err
	}
	pcfg.Upstream = s.EngineURL
	pcfg.Listen = "127.0.0.1:0"
	opts = append([]proxy.Option{proxy.WithTelemetry(tel), proxy.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil)))}, opts...)
	px, err := proxy.New(pcfg, opts...)
	if err != nil {
		s.Close()
		return nil, err
	}
	pln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		s.Close()
		return nil, err
	}
	s.px = px
	go px.Serve(pln)
	s.close = append(s.close, func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		px.Shutdown(ctx)
		tel.Shutdown(context.Background())
	})
	s.SidecarURL = "http://" + pln.Addr().String()
	return s, nil
}

// Close stops the sidecar, then the engine.
func (s *Stack) Close() {
	for i := len(s.close) - 1; i >= 0; i-- {
		s.close[i]()
	}
	s.close = nil
}
