package kvstore

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// redisServer is a real redis-server started for one test on a free loopback
// port with a temporary directory.
type redisServer struct {
	cmd  *exec.Cmd
	addr string
	done chan struct{}
}

const redisBin = "/usr/bin/redis-server"

func findRedis(t testing.TB) string {
	t.Helper()
	if p, err := exec.LookPath("redis-server"); err == nil {
		return p
	}
	if _, err := os.Stat(redisBin); err == nil {
		return redisBin
	}
	t.Skip("SKIPPING REDIS TESTS: redis-server not installed (apt-get install redis-server); the Redis tier is NOT tested")
	return ""
}

func startRedis(t testing.TB, args ...string) *redisServer {
	t.Helper()
	bin := findRedis(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	argv := append([]string{
		"--port", fmt.Sprint(port), "--bind", "127.0.0.1", "--dir", t.TempDir(),
		"--save", "", "--appendonly", "no", "--protected-mode", "no",
		"--enable-debug-command", "local", "--loglevel", "warning",
	}, args...)
	cmd := exec.Command(bin, argv...)
	var stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting redis-server: %v", err)
	}
	s := &redisServer{cmd: cmd, addr: fmt.Sprintf("127.0.0.1:%d", port), done: make(chan struct{})}
	go func() { cmd.Wait(); close(s.done) }()
	t.Cleanup(func() { s.kill(); <-s.done })
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", s.addr, time.Second)
		if err == nil {
			fmt.Fprint(c, "PING\r\n")
			line, _ := bufio.NewReader(c).ReadString('\n')
			c.Close()
			if strings.HasPrefix(line, "+PONG") {
				return s
			}
		}
		select {
		case <-s.done:
			t.Fatalf("redis-server exited: %s", stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("redis-server did not come up on %s: %s", s.addr, stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (s *redisServer) kill() {
	s.cmd.Process.Signal(syscall.SIGCONT) // a stopped process must run to die
	s.cmd.Process.Kill()
}

// client is a plain go-redis client for tests that reach behind the tier.
func (s *redisServer) client(t testing.TB) *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: s.addr})
	t.Cleanup(func() { c.Close() })
	return c
}

func openRedisTier(t testing.TB, s *redisServer, query string) *Redis {
	t.Helper()
	st, err := Open("redis://" + s.addr + "/0?" + query)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st.(*Redis)
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}
