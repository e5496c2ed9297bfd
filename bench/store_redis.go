package bench

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"time"
)

// ErrNoRedis is returned by StartRedis when no redis-server binary is found.
var ErrNoRedis = errors.New("bench: redis-server not installed")

// RedisServer is a redis-server child process on a free loopback port, with
// persistence off, for the store benchmark and tests.
type RedisServer struct {
	// URL is the kvstore URL of database 0.
	URL  string
	Addr string
	cmd  *exec.Cmd
	dir  string
}

// StartRedis starts redis-server (found in PATH or /usr/bin) with its
// working directory under a new temporary directory and waits until it
// answers PING.
func StartRedis() (*RedisServer, error) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		if _, err2 := os.Stat("/usr/bin/redis-server"); err2 != nil {
			return nil, ErrNoRedis
		}
		bin = "/usr/bin/redis-server"
	}
	dir, err := os.MkdirTemp("", "fusionrag-bench-redis-")
	if err != nil {
		return nil, err
	}
	for attempt := 0; attempt < 3; attempt++ {
		port, err := freePort()
		if err != nil {
			os.RemoveAll(dir)
			return nil, err
		}
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		cmd := exec.Command(bin, "--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
			"--dir", dir, "--protected-mode", "no", "--proto-max-bulk-len", "1gb")
		if err := cmd.Start(); err != nil {
			os.RemoveAll(dir)
			return nil, fmt.Errorf("bench: start redis-server: %w", err)
		}
		exited := make(chan struct{})
		go func() { cmd.Wait(); close(exited) }()
		if waitPing(addr, exited, 10*time.Second) {
			return &RedisServer{URL: "redis://" + addr + "/0", Addr: addr, cmd: cmd, dir: dir}, nil
		}
		cmd.Process.Kill()
		<-exited
	}
	os.RemoveAll(dir)
	return nil, errors.New("bench: redis-server did not answer PING")
}

// waitPing polls addr with PING until +PONG, the process exits or timeout.
func waitPing(addr string, exited <-chan struct{}, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			return false
		default:
		}
		if c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond); err == nil {
			c.SetDeadline(time.Now().Add(time.Second))
			fmt.Fprint(c, "PING\r\n")
			line, _ := bufio.NewReader(c).ReadString('\n')
			c.Close()
			if line == "+PONG\r\n" {
				return true
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return false
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

// Stop kills the server and removes its directory.
func (r *RedisServer) Stop() {
	if r == nil || r.cmd == nil {
		return
	}
	r.cmd.Process.Kill()
	// The goroutine started in StartRedis reaps the process.
	time.Sleep(20 * time.Millisecond)
	os.RemoveAll(r.dir)
	r.cmd = nil
}
