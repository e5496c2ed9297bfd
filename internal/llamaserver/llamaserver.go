// Package llamaserver starts and finds llama.cpp's llama-server, the peer
// that benchmarks measure against and that the llamacpp adapter's tests run
// behind the sidecar. It is never part of the product: llama.cpp is built
// outside the repository (see DESIGN.md, "Peers") and named by
// FUSIONRAG_LLAMA_SERVER or found on PATH.
package llamaserver

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"time"

	"github.com/fusionrag/fusionrag/internal/skiplog"
)

// Server is a llama-server process started by Start.
type Server struct {
	// URL is its base URL on loopback.
	URL  string
	cmd  *exec.Cmd
	log  *bytes.Buffer
	mu   sync.Mutex
	done chan struct{} // closed when the process has exited
}

// Config configures Start.
type Config struct {
	// Bin is the llama-server binary. Required.
	Bin string
	// Model is the GGUF file it loads. Required.
	Model string
	// Context is -c, the context size of all slots together; default 4096.
	Context int
	// Threads is -t and -tb; default GOMAXPROCS-like 0 = the server's default.
	Threads int
	// Slots is -np; default 1.
	Slots int
	// Args are appended to the command line (e.g. "--slot-save-path", dir).
	Args []string
	// Ready bounds the wait for /health; default 2 minutes.
	Ready time.Duration
}

// Start starts llama-server on a free loopback port and waits
// until its /health answers 200. Stop it with Close.
func Start(ctx context.Context, c Config) (*Server, error) {
	if c.Bin == "" || c.Model == "" {
		return nil, errors.New("llamaserver: Start needs Bin and Model")
	}
	if c.Context <= 0 {
		c.Context = 4096
	}
	if c.Slots <= 0 {
		c.Slots = 1
	}
	if c.Ready <= 0 {
		c.Ready = 2 * time.Minute
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	args := []string{"-m", c.Model, "--host", "127.0.0.1", "--port", strconv.Itoa(port),
		"-c", strconv.Itoa(c.Context), "-np", strconv.Itoa(c.Slots)}
	if c.Threads > 0 {
		args = append(args, "-t", strconv.Itoa(c.Threads), "-tb", strconv.Itoa(c.Threads))
	}
	args = append(args, c.Args...)
	s := &Server{URL: fmt.Sprintf("http://127.0.0.1:%d", port), log: &bytes.Buffer{}}
	s.cmd = exec.Command(c.Bin, args...)
	s.cmd.Stdout, s.cmd.Stderr = s, s
	if err := s.cmd.Start(); err != nil {
		return nil, fmt.Errorf("llamaserver: starting %s: %w", c.Bin, err)
	}
	s.done = make(chan struct{})
	var waitErr error
	go func() { waitErr = s.cmd.Wait(); close(s.done) }()
	deadline := time.Now().Add(c.Ready)
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, s.URL+"/health", nil)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return s, nil
			}
		}
		select {
		case <-s.done:
			return nil, fmt.Errorf("llamaserver: llama-server exited (%v): %s", waitErr, s.tail())
		case <-ctx.Done():
			s.kill()
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			s.kill()
			return nil, fmt.Errorf("llamaserver: llama-server not ready after %v: %s", c.Ready, s.tail())
		}
	}
}

// Write collects the server's output (the last 64 KiB are kept for errors).
func (s *Server) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.log.Write(p)
	if s.log.Len() > 64<<10 {
		b := append([]byte(nil), s.log.Bytes()[s.log.Len()-32<<10:]...)
		s.log.Reset()
		s.log.Write(b)
	}
	return len(p), nil
}

func (s *Server) tail() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	b := s.log.Bytes()
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return string(b)
}

func (s *Server) kill() {
	_ = s.cmd.Process.Signal(os.Interrupt)
	select {
	case <-s.done:
	case <-time.After(3 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.done
	}
}

// Close stops the server.
func (s *Server) Close() error {
	s.kill()
	return nil
}

// EnvBin names the llama-server binary for tests and benchmarks.
const EnvBin = "FUSIONRAG_LLAMA_SERVER"

// Find returns the llama-server binary: $FUSIONRAG_LLAMA_SERVER, else
// llama-server on PATH; "" when neither exists.
func Find() string {
	if p := os.Getenv(EnvBin); p != "" {
		if _, err := os.Stat(p); err == nil {
			return p
		}
		return ""
	}
	if p, err := exec.LookPath("llama-server"); err == nil {
		return p
	}
	return ""
}

// Skipper is the part of testing.TB that Bin uses (this package is also
// linked into the binary, which must not import testing).
type Skipper interface {
	Helper()
	Name() string
	Skip(args ...any)
}

// Bin returns Find() or skips the test loudly.
func Bin(tb Skipper) string {
	tb.Helper()
	p := Find()
	if p == "" {
		msg := "SKIPPING: llama-server not found (set " + EnvBin + " to the binary or put llama-server on PATH; see DESIGN.md, Peers)"
		fmt.Fprintln(os.Stderr, tb.Name()+": "+msg)
		skiplog.Record(skiplog.LlamaServer, tb.Name())
		tb.Skip(msg)
	}
	return p
}
