// Package redistest starts a real redis-server for a test: on a free
// loopback port, in the test's temporary directory, ended by tb.Cleanup.
// A test skips loudly when redis-server is not installed.
//
//	srv := redistest.Start(t)
//	st, err := kvstore.Open(srv.URL(0))
//
// Fault tests use Kill (a crash), Restart (back empty on the same port) and
// Stop/Cont (SIGSTOP/SIGCONT: a stalled server). Programs that must not
// import testing use package redisproc, which this one wraps.
package redistest

import (
	"errors"
	"testing"

	"github.com/fusionrag/fusionrag/internal/redisproc"
	"github.com/fusionrag/fusionrag/internal/skiplog"
)

// Option changes how Start starts the server.
type Option func(*redisproc.Config)

// Args appends redis-server arguments, e.g. Args("--maxmemory", "3mb").
func Args(args ...string) Option {
	return func(c *redisproc.Config) { c.Args = append(c.Args, args...) }
}

// Installed reports whether a redis-server binary is available, for tests
// that run other cases without it and skip only the Redis ones.
func Installed() bool {
	_, err := redisproc.Binary()
	return err == nil
}

// Server is a redis-server owned by one test. Its methods fail the test
// (tb.Fatal) on errors, so call them from the test's goroutine.
type Server struct {
	*redisproc.Server
	tb testing.TB
}

// Start starts redis-server for tb and waits until it answers PING. It skips
// the test when redis-server is not installed. At cleanup the server is
// killed and reaped (no process or goroutine outlives the test); when the
// test failed, the tail of the server's log is logged.
func Start(tb testing.TB, opts ...Option) *Server {
	tb.Helper()
	if !Installed() {
		skiplog.Record(skiplog.Redis, tb.Name())
		tb.Skipf("SKIPPING %s: redis-server not installed (apt-get install redis-server); this test needs a real Redis and is NOT run", tb.Name())
	}
	cfg := redisproc.Config{Dir: tb.TempDir()}
	for _, o := range opts {
		o(&cfg)
	}
	s, err := redisproc.Start(cfg)
	if errors.Is(err, redisproc.ErrNotInstalled) {
		skiplog.Record(skiplog.Redis, tb.Name())
		tb.Skipf("SKIPPING %s: %v", tb.Name(), err)
	}
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		s.Close()
		if tb.Failed() {
			tb.Logf("--- redis-server %s log (tail) ---\n%s", s.Addr, s.LogTail(4000))
		}
	})
	return &Server{Server: s, tb: tb}
}

// Restart kills the server and starts a new, empty one on the same port.
func (s *Server) Restart() {
	s.tb.Helper()
	if err := s.Server.Restart(); err != nil {
		s.tb.Fatal(err)
	}
}

// Stop freezes the server (SIGSTOP) until Cont.
func (s *Server) Stop() {
	s.tb.Helper()
	if err := s.Server.Stop(); err != nil {
		s.tb.Fatal(err)
	}
}

// Cont resumes a server frozen by Stop (SIGCONT).
func (s *Server) Cont() {
	s.tb.Helper()
	if err := s.Server.Cont(); err != nil {
		s.tb.Fatal(err)
	}
}
