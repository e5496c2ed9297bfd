package redisproc

import (
	"strings"
	"testing"
	"time"

	"github.com/fusionrag/fusionrag/internal/skiplog"
)

func TestCluster(t *testing.T) {
	if _, err := CLIBinary(); err != nil {
		skiplog.Record(skiplog.Redis, t.Name()) // redis-cli comes with redis-server in Debian (redis-tools)
		t.Skip("SKIPPING: redis-cli not installed; the cluster helper is NOT tested")
	}
	needRedis(t)
	t0 := time.Now()
	c, err := StartCluster(ClusterConfig{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	t.Logf("6-node cluster up in %v", time.Since(t0))
	m, err := c.Masters()
	if err != nil || len(m) != 3 {
		t.Fatalf("masters %v, %v; want 3", m, err)
	}
	if !strings.HasPrefix(c.URL(), "redis-cluster://127.0.0.1:") || strings.Count(c.URL(), ",") != 5 {
		t.Errorf("URL %q", c.URL())
	}
	i, err := c.MasterOf("somekey")
	if err != nil {
		t.Fatal(err)
	}
	// The slot's master must accept the key; another master must redirect.
	if got, err := Command(c.Nodes[i].Addr, "SET somekey v", time.Second); err != nil || got != "OK" {
		t.Fatalf("SET on the slot's master: %q, %v", got, err)
	}
	for _, j := range m {
		if j != i {
			if _, err := Command(c.Nodes[j].Addr, "GET somekey", time.Second); err == nil || !strings.HasPrefix(err.Error(), "MOVED") {
				t.Errorf("GET on another master: %v, want MOVED", err)
			}
			break
		}
	}
	// Replication is asynchronous: wait for the replica to have the key.
	if got, err := Command(c.Nodes[i].Addr, "WAIT 1 5000", 6*time.Second); err != nil || got != "1" {
		t.Fatalf("WAIT: %q, %v", got, err)
	}
	// Failover: kill the master, its replica takes the slot.
	t0 = time.Now()
	c.Nodes[i].Kill()
	if err := c.WaitOK(20 * time.Second); err != nil {
		for _, s := range c.Nodes {
			t.Logf("--- %s ---\n%s", s.Addr, s.LogTail(1500))
		}
		t.Fatal(err)
	}
	j, err := c.MasterOf("somekey")
	if err != nil || j == i {
		t.Fatalf("after failover master %d, %v (killed %d)", j, err, i)
	}
	t.Logf("failover in %v", time.Since(t0))
	// The key normally survives (WAIT saw the replica ack it), but Redis
	// replication stays asynchronous and a failover may lose an
	// acknowledged write (Redis's WAIT documentation says so); it was lost
	// once in a loaded parallel `go test ./...`. What this helper must
	// deliver is the failover itself, checked above; a lost key is logged.
	got, err := Command(c.Nodes[j].Addr, "GET somekey", time.Second)
	switch {
	case err == nil && got == "v":
	case err == nil || strings.Contains(err.Error(), "$-1"):
		t.Logf("NOTE: the promoted replica does not hold the key written before the kill (%q, %v): an acknowledged write lost in the failover", got, err)
	default:
		t.Errorf("GET on the promoted replica: %q, %v", got, err)
	}
}
