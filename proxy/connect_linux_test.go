package proxy

import (
	"encoding/json"
	"net"
	"net/http"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// blackhole returns the address of a listening socket that never accepts,
// with its accept queue already full, so further connection attempts hang
// in SYN_SENT: the only portable-enough way to provoke a connect timeout on
// loopback.
func blackhole(t *testing.T) string {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Skipf("socket: %v", err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Skipf("bind: %v", err)
	}
	if err := syscall.Listen(fd, 0); err != nil {
		t.Skipf("listen: %v", err)
	}
	sa, _ := syscall.Getsockname(fd)
	addr := "127.0.0.1:" + strconv.Itoa(sa.(*syscall.SockaddrInet4).Port)
	for i := 0; i < 4; i++ { // fill the queue
		c, err := net.DialTimeout("tcp", addr, 100*time.Millisecond)
		if err != nil {
			return addr // already full
		}
		t.Cleanup(func() { c.Close() })
	}
	if c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond); err == nil {
		c.Close()
		t.Skip("kernel accepts beyond the backlog; cannot provoke a connect timeout")
	}
	return addr
}

func TestConnectTimeout(t *testing.T) {
	addr := blackhole(t)
	cfg := upstreamConfig("http://" + addr)
	cfg.Timeouts.Connect = 200 * time.Millisecond
	_, base := startProxy(t, cfg)
	start := time.Now()
	resp, err := http.Get(base + "/v1/models")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var e struct{ Error struct{ Code string } }
	_ = json.NewDecoder(resp.Body).Decode(&e)
	if resp.StatusCode != 504 || e.Error.Code != "gateway_timeout" {
		t.Fatalf("got %d %q, want 504 gateway_timeout", resp.StatusCode, e.Error.Code)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("took %v with a 200ms connect timeout", d)
	}
}
