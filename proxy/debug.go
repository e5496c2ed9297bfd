package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"time"
)

// EnvPprof names the environment variable that turns on the debug
// listener: a loopback address (e.g. 127.0.0.1:6060) on which New serves
// Go's runtime profiles (net/http/pprof) on a listener of their own, apart
// from the proxy's port, until Shutdown. Unset (the default), nothing is
// listened on. Profile a running sidecar under load with
//
//	go tool pprof 'http://127.0.0.1:6060/debug/pprof/profile?seconds=10'
//
// The profiles reveal internals (goroutine stacks, heap contents' call
// sites): only loopback addresses are accepted.
const EnvPprof = "FUSIONRAG_PPROF"

// ErrDebugAddr is returned by New for a FUSIONRAG_PPROF address that is not
// a loopback host:port.
var ErrDebugAddr = errors.New("proxy: " + EnvPprof + " must be a loopback host:port")

// debugServer is the pprof listener started from FUSIONRAG_PPROF.
type debugServer struct {
	srv  *http.Server
	addr string
}

// startDebug listens on addr (a loopback host:port) and serves the pprof
// handlers there.
func startDebug(addr string) (*debugServer, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("%w: %q: %v", ErrDebugAddr, addr, err)
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return nil, fmt.Errorf("%w: %q", ErrDebugAddr, addr)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("proxy: debug listener: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	d := &debugServer{srv: &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}, addr: ln.Addr().String()}
	go func() { _ = d.srv.Serve(ln) }()
	return d, nil
}

func (d *debugServer) shutdown(ctx context.Context) error {
	if d == nil {
		return nil
	}
	if err := d.srv.Shutdown(ctx); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
