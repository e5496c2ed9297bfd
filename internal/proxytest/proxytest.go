// Package proxytest serves a proxy.Proxy on a loopback port, for the tests
// of the packages above proxy (rag, deploy, the llamacpp adapter). Package
// proxy's own tests keep their copy of Start: a test inside package proxy
// cannot import a package that imports proxy.
package proxytest

import (
	"context"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/fusionrag/fusionrag/proxy"
)

// Telemetry builds the proxy's providers without any exporter, whatever
// the environment of the test process says; they are shut down when the
// test ends.
func Telemetry(t testing.TB) *proxy.Telemetry {
	t.Helper()
	tel, err := proxy.NewTelemetry(context.Background(), func(string) (string, bool) { return "", false })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tel.Shutdown(context.Background()) })
	return tel
}

// Start serves a proxy for cfg (Upstream must be set) on a loopback port
// until the test ends (then shut down, within 5 s) and returns it with its
// base URL. It runs with Telemetry(t) and a logger that discards, unless
// opts say otherwise.
func Start(t testing.TB, cfg proxy.Config, opts ...proxy.Option) (*proxy.Proxy, string) {
	t.Helper()
	cfg.Listen = "127.0.0.1:0"
	opts = append([]proxy.Option{proxy.WithTelemetry(Telemetry(t)), proxy.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil)))}, opts...)
	p, err := proxy.New(cfg, opts...)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = p.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = p.Shutdown(ctx)
	})
	return p, "http://" + ln.Addr().String()
}
