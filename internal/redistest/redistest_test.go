package redistest

import (
	"bufio"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"
)

func ping(addr string, d time.Duration) bool {
	c, err := net.DialTimeout("tcp", addr, d)
	if err != nil {
		return false
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(d))
	fmt.Fprint(c, "PING\r\n")
	line, _ := bufio.NewReader(c).ReadString('\n')
	return strings.HasPrefix(line, "+PONG")
}

// TestServer: the wrapper answers, stalls, resumes, restarts, and its
// process is gone once the test's cleanup has run.
func TestServer(t *testing.T) {
	var s *Server
	t.Run("run", func(t *testing.T) {
		s = Start(t, Args("--maxmemory", "3mb"))
		if !ping(s.Addr, time.Second) {
			t.Fatal("no PONG")
		}
		s.Stop()
		if ping(s.Addr, 200*time.Millisecond) {
			t.Error("stopped server answered")
		}
		s.Cont()
		s.Restart()
		if !ping(s.Addr, time.Second) {
			t.Error("no PONG after restart")
		}
	})
	if s == nil {
		return // skipped
	}
	select {
	case <-s.Done():
	default:
		t.Error("server still running after its test's cleanup")
	}
	if ping(s.Addr, 200*time.Millisecond) {
		t.Error("server answers after its test's cleanup")
	}
}
