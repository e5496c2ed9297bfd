package redisproc

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/fusionrag/fusionrag/internal/skiplog"
)

func needRedis(t *testing.T) {
	t.Helper()
	if _, err := Binary(); err != nil {
		skiplog.Record(skiplog.Redis, t.Name())
		t.Skip("SKIPPING: redis-server not installed (apt-get install redis-server); redisproc is NOT tested")
	}
}

// do sends one inline command and returns the first reply line, or the
// error of a connection that does not answer within d.
func do(addr, cmd string, d time.Duration) (string, error) {
	c, err := net.DialTimeout("tcp", addr, d)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(d))
	fmt.Fprint(c, cmd+"\r\n")
	line, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimRight(line, "\r\n"), err
}

func mustDo(t *testing.T, addr, cmd, want string) {
	t.Helper()
	got, err := do(addr, cmd, 2*time.Second)
	if err != nil || got != want {
		t.Fatalf("%s: got %q, %v; want %q", cmd, got, err, want)
	}
}

// TestLifecycle: start, Stop stalls, Cont resumes, Restart comes back empty
// on the same port, Kill is a crash, Close removes the directory; no
// goroutine outlives Close.
func TestLifecycle(t *testing.T) {
	needRedis(t)
	base := runtime.NumGoroutine()
	s, err := Start(Config{Args: []string{"--maxmemory", "7mb"}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if want := fmt.Sprintf("redis://127.0.0.1:%d/3", s.Port()); s.URL(3) != want {
		t.Errorf("URL(3) = %q, want %q", s.URL(3), want)
	}
	mustDo(t, s.Addr, "SET k v", "+OK")
	mustDo(t, s.Addr, "CONFIG GET maxmemory", "*2") // extra Args reached the server
	if got, _ := do(s.Addr, "CONFIG GET save", time.Second); got != "*2" {
		t.Errorf("CONFIG GET save: %q", got)
	}

	if err := s.Stop(); err != nil {
		t.Fatal(err)
	}
	if got, err := do(s.Addr, "PING", 300*time.Millisecond); err == nil {
		t.Errorf("stopped server answered %q", got)
	}
	if err := s.Cont(); err != nil {
		t.Fatal(err)
	}
	mustDo(t, s.Addr, "EXISTS k", ":1")

	addr, pid := s.Addr, s.Pid()
	if err := s.Restart(); err != nil {
		t.Fatal(err)
	}
	if s.Addr != addr || s.Pid() == pid {
		t.Errorf("restart: addr %s pid %d, was %s pid %d", s.Addr, s.Pid(), addr, pid)
	}
	mustDo(t, s.Addr, "EXISTS k", ":0") // no persistence: back empty

	if err := s.Stop(); err != nil { // a stopped server still dies on Kill
		t.Fatal(err)
	}
	s.Kill()
	select {
	case <-s.Done():
	default:
		t.Fatal("Done not closed after Kill")
	}
	if _, err := do(s.Addr, "PING", 300*time.Millisecond); err == nil {
		t.Error("killed server answered")
	}
	s.Kill() // twice is harmless

	if err := s.Restart(); err != nil { // a crashed server can come back
		t.Fatal(err)
	}
	mustDo(t, s.Addr, "PING", "+PONG")
	dir := s.dir
	s.Close()
	s.Close()
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("temporary directory %s left behind: %v", dir, err)
	}
	if err := s.Restart(); err == nil {
		t.Error("restart after Close succeeded")
	}
	for deadline := time.Now().Add(5 * time.Second); runtime.NumGoroutine() > base; {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("goroutine leak: %d > %d\n%s", runtime.NumGoroutine(), base, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestStartErrors(t *testing.T) {
	t.Run("missing binary", func(t *testing.T) {
		t.Setenv("PATH", t.TempDir())
		_, err := Binary()
		if _, statErr := os.Stat(fallbackBin); statErr == nil {
			if err != nil {
				t.Errorf("Binary with %s present: %v", fallbackBin, err)
			}
			return
		}
		if !errors.Is(err, ErrNotInstalled) {
			t.Errorf("Binary: %v, want ErrNotInstalled", err)
		}
		if _, err := Start(Config{}); !errors.Is(err, ErrNotInstalled) {
			t.Errorf("Start: %v, want ErrNotInstalled", err)
		}
	})
	t.Run("bad binary", func(t *testing.T) {
		_, err := Start(Config{Bin: "/nonexistent/redis-server"})
		if err == nil || !strings.Contains(err.Error(), "starting") {
			t.Errorf("Start: %v, want a start error", err)
		}
	})
	t.Run("server refuses its arguments", func(t *testing.T) {
		needRedis(t)
		dir := t.TempDir()
		_, err := Start(Config{Dir: dir, Args: []string{"--no-such-option", "1"}})
		if err == nil || !strings.Contains(err.Error(), "exited before answering PING") {
			t.Fatalf("Start: %v, want an early exit", err)
		}
		if !strings.Contains(err.Error(), "no-such-option") {
			t.Errorf("error lacks the server's log: %v", err)
		}
		if _, err := os.Stat(dir); err != nil {
			t.Errorf("caller's directory removed: %v", err)
		}
	})
	t.Run("port taken", func(t *testing.T) {
		needRedis(t)
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		port := l.Addr().(*net.TCPAddr).Port
		if _, err := Start(Config{Port: port, StartTimeout: 2 * time.Second}); err == nil {
			t.Error("started on a taken port")
		}
	})
}
