// Package redisproc runs a real redis-server as a child process on a
// loopback port, for tests and benchmarks that need a Redis of their own.
//
// The server keeps nothing on disk (no RDB snapshots, no AOF), binds
// 127.0.0.1 only, and writes its log to a file in its working directory.
// A Server can be killed (a crash), restarted empty on the same port,
// frozen with SIGSTOP and resumed with SIGCONT, which is what fault tests
// need. Close ends it and removes what Start created.
//
// Tests use package redistest, which wraps this one with testing.TB; code
// that must not import testing (benchmark commands) uses this package
// directly.
package redisproc

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// ErrNotInstalled is returned by Binary and Start when no redis-server
// binary is found.
var ErrNotInstalled = errors.New("redisproc: redis-server not installed (apt-get install redis-server)")

// fallbackBin is where Debian's redis-server package puts the binary; it is
// tried when PATH does not name one (PATH of some test runners is minimal).
const fallbackBin = "/usr/bin/redis-server"

// Binary returns the path of redis-server: found in PATH, else
// /usr/bin/redis-server, else ErrNotInstalled.
func Binary() (string, error) {
	if p, err := exec.LookPath("redis-server"); err == nil {
		return p, nil
	}
	if _, err := os.Stat(fallbackBin); err == nil {
		return fallbackBin, nil
	}
	return "", ErrNotInstalled
}

// Config says how to start a server. The zero value is valid.
type Config struct {
	// Bin is the redis-server binary; "" finds it with Binary.
	Bin string
	// Dir is the server's working directory (its log goes there); "" makes
	// a temporary directory that Close removes.
	Dir string
	// Port is the loopback port; 0 picks a free one (and retries on
	// another when the pick is taken before the server binds it).
	Port int
	// Args are extra redis-server arguments appended after the defaults,
	// e.g. "--maxmemory", "3mb"; a later argument overrides an earlier one.
	Args []string
	// StartTimeout bounds the wait for the first PONG; 0 means 10 s.
	StartTimeout time.Duration
}

// defaultArgs are the arguments every server gets before Config.Args:
// loopback only, no persistence (a restarted server comes back empty).
var defaultArgs = []string{
	"--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
	"--protected-mode", "no", "--loglevel", "warning",
}

// startAttempts is how often Start tries a fresh free port when the server
// it started exits before answering (the port was taken meanwhile).
const startAttempts = 3

// Server is a running redis-server child process. Its methods are safe for
// concurrent use.
type Server struct {
	// Addr is "127.0.0.1:port"; it stays the same across Restart.
	Addr string

	bin     string
	dir     string
	ownsDir bool
	port    int
	args    []string
	timeout time.Duration

	mu     sync.Mutex
	cmd    *exec.Cmd
	done   chan struct{} // closed when cmd has exited and been reaped
	closed bool
}

// Start starts redis-server and waits until it answers PING.
func Start(cfg Config) (*Server, error) {
	bin := cfg.Bin
	if bin == "" {
		var err error
		if bin, err = Binary(); err != nil {
			return nil, err
		}
	}
	s := &Server{bin: bin, dir: cfg.Dir, port: cfg.Port, args: cfg.Args, timeout: cfg.StartTimeout}
	if s.timeout <= 0 {
		s.timeout = 10 * time.Second
	}
	if s.dir == "" {
		d, err := os.MkdirTemp("", "fusionrag-redis-")
		if err != nil {
			return nil, err
		}
		s.dir, s.ownsDir = d, true
	}
	attempts := 1
	if cfg.Port == 0 {
		attempts = startAttempts
	}
	var err error
	for range attempts {
		if cfg.Port == 0 {
			if s.port, err = freePort(); err != nil {
				break
			}
		}
		s.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port))
		if err = s.start(); err == nil {
			return s, nil
		}
	}
	if s.ownsDir {
		os.RemoveAll(s.dir)
	}
	return nil, err
}

// freePort asks the kernel for a free loopback TCP port.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// LogPath is the file that receives the server's stdout and stderr.
func (s *Server) LogPath() string { return filepath.Join(s.dir, "redis.log") }

// start runs one process on s.port and waits for its PONG; on failure the
// process is gone and reaped.
func (s *Server) start() error {
	log, err := os.OpenFile(s.LogPath(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	argv := append([]string{"--port", strconv.Itoa(s.port), "--dir", s.dir}, defaultArgs...)
	cmd := exec.Command(s.bin, append(argv, s.args...)...)
	// An *os.File is handed to the child as is: no copying goroutines.
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		log.Close()
		return fmt.Errorf("redisproc: starting %s: %w", s.bin, err)
	}
	log.Close() // the child holds its own descriptor
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	s.mu.Lock()
	s.cmd, s.done = cmd, done
	s.mu.Unlock()
	if err := waitPong(s.Addr, done, s.timeout); err != nil {
		s.kill()
		return fmt.Errorf("redisproc: redis-server on %s: %w; log tail:\n%s", s.Addr, err, s.LogTail(2000))
	}
	return nil
}

// waitPong polls addr with PING until +PONG, the process exits, or timeout.
func waitPong(addr string, exited <-chan struct{}, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			_ = c.SetDeadline(time.Now().Add(time.Second))
			fmt.Fprint(c, "PING\r\n")
			line, _ := bufio.NewReader(c).ReadString('\n')
			c.Close()
			if line == "+PONG\r\n" {
				return nil
			}
		}
		select {
		case <-exited:
			return errors.New("exited before answering PING")
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no PONG after %v", timeout)
		}
	}
}

// Done is closed when the current process has exited (a Restart makes a new
// process with a new channel).
func (s *Server) Done() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.done
}

// Pid is the process id of the current process.
func (s *Server) Pid() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cmd.Process.Pid
}

// Port is the loopback port.
func (s *Server) Port() int { return s.port }

// URL is the kvstore URL of database db ("redis://127.0.0.1:port/db").
func (s *Server) URL(db int) string { return fmt.Sprintf("redis://%s/%d", s.Addr, db) }

// Kill ends the process at once, like a crash (SIGKILL; a stopped process
// is continued first so that it can die), and waits until it is reaped.
// Killing a dead server does nothing.
func (s *Server) Kill() { s.kill() }

func (s *Server) kill() {
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	select {
	case <-done:
		return
	default:
	}
	_ = cmd.Process.Signal(syscall.SIGCONT)
	_ = cmd.Process.Kill()
	<-done
}

// Restart kills the process and starts a new, empty one on the same port
// with the same arguments.
func (s *Server) Restart() error {
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return errors.New("redisproc: restart of a closed server")
	}
	s.kill()
	return s.start()
}

// Stop freezes the process (SIGSTOP): connections stay open, nothing
// answers, as with a stalled server. Cont resumes it.
func (s *Server) Stop() error { return s.signal(syscall.SIGSTOP) }

// Cont resumes a process frozen by Stop (SIGCONT).
func (s *Server) Cont() error { return s.signal(syscall.SIGCONT) }

func (s *Server) signal(sig os.Signal) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cmd.Process.Signal(sig)
}

// LogTail returns at most the last n bytes of the server's log.
func (s *Server) LogTail(n int64) string {
	f, err := os.Open(s.LogPath())
	if err != nil {
		return ""
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Size() > n {
		_, _ = f.Seek(fi.Size()-n, io.SeekStart)
	}
	b, _ := io.ReadAll(f)
	return string(b)
}

// Close kills the server and removes the working directory if Start made
// it. It is idempotent and always returns nil; the error is for io.Closer.
func (s *Server) Close() error {
	s.mu.Lock()
	closed := s.closed
	s.closed = true
	s.mu.Unlock()
	if closed {
		return nil
	}
	s.kill()
	if s.ownsDir {
		os.RemoveAll(s.dir)
	}
	return nil
}
