package kvstore

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fusionrag/fusionrag/internal/redistest"
	"github.com/redis/go-redis/v9"
)

type quietLogger struct{}

func (quietLogger) Printf(context.Context, string, ...any) {}

func TestMain(m *testing.M) {
	redis.SetLogger(quietLogger{}) // dial failures are expected in fault tests
	os.Exit(m.Run())
}

// settle waits until the goroutine count is back to base, failing with the
// stacks of the leftovers.
func settle(t *testing.T, base int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > base {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("goroutine leak: %d > %d\n%s", runtime.NumGoroutine(), base, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func newRedisT(t *testing.T, srv *redistest.Server, query string) *Redis {
	t.Helper()
	s, err := Open("redis://" + srv.Addr + "/0?" + query)
	if err != nil {
		t.Fatal(err)
	}
	return s.(*Redis)
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout() || errors.Is(err, context.DeadlineExceeded)
}

// TestRedisKilledMidRead: the server dies while large multi-part reads are in
// flight. Each read returns the right blob or an error with its cause; none
// panics, none returns wrong KV, nothing leaks.
func TestRedisKilledMidRead(t *testing.T) {
	ctx := ctxT(t)
	srv := redistest.Start(t)
	base := runtime.NumGoroutine()
	r := newRedisT(t, srv, "part=256KiB&timeout=2s")
	b := testBlob(t, Float16, shape{layers: 8, kvHeads: 4, headDim: 64, tokens: 256}, 1) // 2 MiB: 8 parts
	if err := r.Put(ctx, b); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var oks, fails int
	var firstErr error
	started := make(chan struct{}, 4)
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 200; i++ {
				if i == 1 {
					started <- struct{}{}
				}
				got, err := r.Get(ctx, b.Key, b.Check)
				mu.Lock()
				if err == nil {
					if !bytes.Equal(got.Payload(), b.Payload()) {
						t.Error("wrong KV returned")
					}
					oks++
				} else {
					fails++
					if firstErr == nil {
						firstErr = err
					}
					var ce *CorruptError
					if errors.As(err, &ce) || errors.Is(err, ErrNotFound) {
						t.Errorf("server death reported as %v", err)
					}
				}
				mu.Unlock()
				if err != nil {
					return
				}
			}
		}()
	}
	for range 4 {
		<-started
	}
	srv.Kill()
	wg.Wait()
	if fails == 0 {
		t.Fatal("no read failed after the kill")
	}
	t.Logf("%d reads ok before the kill, %d failed; first error: %v", oks, fails, firstErr)
	if st := stat1(r); st.Errors < int64(fails) {
		t.Errorf("errors counted %d < %d", st.Errors, fails)
	}
	if _, err := r.Get(ctx, b.Key, b.Check); err == nil || errors.Is(err, ErrNotFound) {
		t.Errorf("read from a dead server: %v", err)
	}
	r.Close()
	settle(t, base)
}

// TestRedisStalled: a stopped server (SIGSTOP) makes reads and writes time
// out with the timeout as cause; after SIGCONT the tier works again.
func TestRedisStalled(t *testing.T) {
	ctx := ctxT(t)
	srv := redistest.Start(t)
	base := runtime.NumGoroutine()
	r := newRedisT(t, srv, "timeout=300ms")
	b := testBlob(t, Float16, small, 2)
	if err := r.Put(ctx, b); err != nil {
		t.Fatal(err)
	}
	srv.Stop()
	t0 := time.Now()
	_, err := r.Get(ctx, b.Key, b.Check)
	if !isTimeout(err) || errors.Is(err, ErrNotFound) {
		t.Errorf("stalled get: %v, want a timeout", err)
	}
	if d := time.Since(t0); d > 3*time.Second {
		t.Errorf("stalled get took %v", d)
	}
	if err := r.Put(ctx, testBlob(t, Float16, small, 3)); !isTimeout(err) {
		t.Errorf("stalled put: %v, want a timeout", err)
	}
	// A caller deadline shorter than the client timeout wins.
	r2 := newRedisT(t, srv, "timeout=10s")
	dctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	t0 = time.Now()
	_, err = r2.Get(dctx, b.Key, b.Check)
	cancel()
	if !isTimeout(err) || time.Since(t0) > 2*time.Second {
		t.Errorf("deadline get: %v after %v", err, time.Since(t0))
	}
	t.Logf("stalled: %v", err)
	srv.Cont()
	var got *Blob
	for range 20 { // connections broken by the stall are discarded as they fail
		if got, err = r.Get(ctx, b.Key, b.Check); err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("after SIGCONT: %v", err)
	}
	checkBlob(t, got, b)
	if st := stat1(r); st.Errors < 2 {
		t.Errorf("errors counted %d", st.Errors)
	}
	r.Close()
	r2.Close()
	srv.Kill()
	settle(t, base)
}

// TestRedisOutOfMemory: with maxmemory small and noeviction, a large Put
// fails with Redis's OOM error, leaves no parts behind, and reads miss.
func TestRedisOutOfMemory(t *testing.T) {
	ctx := ctxT(t)
	srv := redistest.Start(t, redistest.Args("--maxmemory", "3mb", "--maxmemory-policy", "noeviction"))
	base := runtime.NumGoroutine()
	r := newRedisT(t, srv, "part=256KiB&timeout=2s")
	big := testBlob(t, Float16, shape{layers: 8, kvHeads: 4, headDim: 64, tokens: 512}, 4) // 4 MiB
	err := r.Put(ctx, big)
	if err == nil || !strings.Contains(err.Error(), "OOM") {
		t.Fatalf("put over maxmemory: %v, want OOM", err)
	}
	t.Logf("surfaced as: %v", err)
	if _, err := r.Get(ctx, big.Key, big.Check); !errors.Is(err, ErrNotFound) {
		t.Errorf("get after failed put: %v", err)
	}
	if n, err := redisClient(t, srv).DBSize(ctx).Result(); err != nil || n != 0 {
		t.Errorf("after failed put the db holds %d keys (%v), want 0", n, err)
	}
	smallB := testBlob(t, Float16, small, 5)
	if err := r.Put(ctx, smallB); err != nil {
		t.Errorf("small put after cleanup: %v", err)
	}
	if st := stat1(r); st.Errors != 1 || st.Puts != 1 {
		t.Errorf("stats %+v", st)
	}
	r.Close()
	srv.Kill()
	settle(t, base)
}

func TestRedisTTL(t *testing.T) {
	ctx := ctxT(t)
	srv := redistest.Start(t)
	r := openRedisTier(t, srv, "ttl=1h&part=1KiB")
	b := testBlob(t, Float16, shape{2, 2, 8, 20}, 6) // parts
	if err := r.Put(ctx, b); err != nil {
		t.Fatal(err)
	}
	c := redisClient(t, srv)
	ttl, _ := c.TTL(ctx, r.key(b.Key)).Result()
	pttl, _ := c.TTL(ctx, r.partKey(b.Key, 0)).Result()
	if ttl <= 59*time.Minute || ttl > time.Hour || pttl <= ttl {
		t.Errorf("ttl %v, part ttl %v", ttl, pttl)
	}
	// An expired part makes the blob a miss, and the rest is cleaned up.
	c.Del(ctx, r.partKey(b.Key, 1))
	if _, err := r.Get(ctx, b.Key, b.Check); !errors.Is(err, ErrNotFound) {
		t.Errorf("missing part: %v", err)
	}
	if n, _ := c.DBSize(ctx).Result(); n != 0 {
		t.Errorf("%d keys left", n)
	}
}
