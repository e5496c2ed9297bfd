package proxy

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestDebugListener(t *testing.T) {
	for _, addr := range []string{"0.0.0.0:0", "192.0.2.1:6060", "example.com:6060", "6060", ""} {
		if d, err := startDebug(addr); !errors.Is(err, ErrDebugAddr) {
			_ = d.shutdown(context.Background())
			t.Errorf("startDebug(%q) = %v, want ErrDebugAddr", addr, err)
		}
	}
	t.Setenv(EnvPprof, "127.0.0.1:0")
	p, _ := startProxy(t, upstreamConfig("http://127.0.0.1:1"))
	if p.debug == nil {
		t.Fatalf("%s set, no debug listener", EnvPprof)
	}
	resp, err := http.Get("http://" + p.debug.addr + "/debug/pprof/")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(b), "goroutine") {
		t.Fatalf("GET /debug/pprof/: %d %.200q", resp.StatusCode, b)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := p.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := http.Get("http://" + p.debug.addr + "/debug/pprof/"); err == nil {
		t.Error("debug listener still serving after Shutdown")
	}
}
