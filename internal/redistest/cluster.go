package redistest

import (
	"errors"
	"testing"
	"time"

	"github.com/fusionrag/fusionrag/internal/redisproc"
	"github.com/fusionrag/fusionrag/internal/skiplog"
)

// Cluster is a Redis Cluster owned by one test (3 masters and 3 replicas by
// default, cluster-node-timeout 1 s), killed at cleanup.
type Cluster struct {
	*redisproc.Cluster
	tb testing.TB
}

// ClusterOption changes how StartCluster starts the cluster.
type ClusterOption func(*redisproc.ClusterConfig)

// NodeTimeout sets cluster-node-timeout (how soon a replica takes over).
func NodeTimeout(d time.Duration) ClusterOption {
	return func(c *redisproc.ClusterConfig) { c.NodeTimeout = d }
}

// ClusterArgs appends redis-server arguments for every node.
func ClusterArgs(args ...string) ClusterOption {
	return func(c *redisproc.ClusterConfig) { c.Args = append(c.Args, args...) }
}

// ClusterInstalled reports whether redis-server and redis-cli are both
// available.
func ClusterInstalled() bool {
	_, err1 := redisproc.Binary()
	_, err2 := redisproc.CLIBinary()
	return err1 == nil && err2 == nil
}

// StartCluster starts a Redis Cluster for tb on loopback ports and waits
// until it reports ok. It skips the test loudly when redis-server or
// redis-cli is not installed. When the test failed, cleanup logs the tail of
// every node's log.
func StartCluster(tb testing.TB, opts ...ClusterOption) *Cluster {
	tb.Helper()
	if !ClusterInstalled() {
		skiplog.Record(skiplog.Redis, tb.Name())
		tb.Skipf("SKIPPING %s: redis-server or redis-cli not installed (apt-get install redis-server); this test needs a real Redis Cluster and is NOT run", tb.Name())
	}
	cfg := redisproc.ClusterConfig{Dir: tb.TempDir()}
	for _, o := range opts {
		o(&cfg)
	}
	c, err := redisproc.StartCluster(cfg)
	if errors.Is(err, redisproc.ErrNotInstalled) || errors.Is(err, redisproc.ErrCLINotInstalled) {
		skiplog.Record(skiplog.Redis, tb.Name())
		tb.Skipf("SKIPPING %s: %v", tb.Name(), err)
	}
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		c.Close()
		if tb.Failed() {
			for _, s := range c.Nodes {
				tb.Logf("--- cluster node %s log (tail) ---\n%s", s.Addr, s.LogTail(1500))
			}
		}
	})
	return &Cluster{Cluster: c, tb: tb}
}

// WaitOK waits until the cluster is ok again (after a failover), failing
// the test after d.
func (c *Cluster) WaitOK(d time.Duration) {
	c.tb.Helper()
	if err := c.Cluster.WaitOK(d); err != nil {
		c.tb.Fatal(err)
	}
}

// Failover is a master kill in progress (KillWhen): Killed is closed once
// the master is dead, Recovered once every slot is served by a live master
// again; Took, read after Recovered, is how long that took.
type Failover struct {
	Killed, Recovered chan struct{}
	Took              time.Duration
}

// KillWhen kills the master node victim (SIGKILL) from another goroutine as
// soon as ready reports true (polled every millisecond), then waits up to
// 20 s for its replica's promotion; a promotion that does not come is a test
// error. Callers that wait on Recovered always return.
func (c *Cluster) KillWhen(victim int, ready func() bool) *Failover {
	f := &Failover{Killed: make(chan struct{}), Recovered: make(chan struct{})}
	go func() {
		defer close(f.Recovered)
		for !ready() {
			time.Sleep(time.Millisecond)
		}
		c.Nodes[victim].Kill()
		close(f.Killed)
		t0 := time.Now()
		if err := c.Cluster.WaitOK(20 * time.Second); err != nil {
			c.tb.Error(err)
		}
		f.Took = time.Since(t0)
	}()
	return f
}
