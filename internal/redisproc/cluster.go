package redisproc

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// ErrCLINotInstalled is returned by StartCluster when no redis-cli binary is
// found (Debian's redis-server package depends on redis-tools, which has it).
var ErrCLINotInstalled = errors.New("redisproc: redis-cli not installed (apt-get install redis-tools)")

// CLIBinary returns the path of redis-cli: found in PATH, else
// /usr/bin/redis-cli, else ErrCLINotInstalled.
func CLIBinary() (string, error) {
	if p, err := exec.LookPath("redis-cli"); err == nil {
		return p, nil
	}
	if _, err := os.Stat("/usr/bin/redis-cli"); err == nil {
		return "/usr/bin/redis-cli", nil
	}
	return "", ErrCLINotInstalled
}

// ClusterConfig says how to start a Redis Cluster. The zero value is a
// 3-master, 3-replica cluster with a 1 s node timeout.
type ClusterConfig struct {
	// Masters is the number of masters; default 3 (redis-cli's minimum).
	Masters int
	// Replicas per master; default 1, negative for none.
	Replicas int
	// NodeTimeout is cluster-node-timeout: how long a master may be
	// unreachable before its replica is promoted; default 1 s.
	NodeTimeout time.Duration
	// Dir holds one directory per node; "" makes a temporary one that Close
	// removes.
	Dir string
	// Args are extra redis-server arguments for every node.
	Args []string
	// StartTimeout bounds the wait for the cluster to report ok; 0 means 30 s.
	StartTimeout time.Duration
}

// Cluster is a running Redis Cluster of child processes on loopback ports.
// Nodes keep their index for the cluster's life; which of them are masters
// changes with failovers (see Masters).
type Cluster struct {
	Nodes   []*Server
	dir     string
	ownsDir bool
	timeout time.Duration
}

// StartCluster starts Masters×(1+Replicas) redis-server processes with
// --cluster-enabled yes, joins them with `redis-cli --cluster create
// --cluster-replicas R --cluster-yes`, and waits until every node reports
// cluster_state:ok with all 16384 slots assigned. Nodes run with
// cluster-require-full-coverage no, so the slots of a lost master fail
// alone while the others keep serving.
func StartCluster(cfg ClusterConfig) (*Cluster, error) {
	bin, err := Binary()
	if err != nil {
		return nil, err
	}
	cli, err := CLIBinary()
	if err != nil {
		return nil, err
	}
	if cfg.Masters == 0 {
		cfg.Masters = 3
	}
	if cfg.Masters < 3 {
		return nil, fmt.Errorf("redisproc: a cluster needs at least 3 masters, got %d", cfg.Masters)
	}
	if cfg.Replicas == 0 {
		cfg.Replicas = 1
	}
	cfg.Replicas = max(cfg.Replicas, 0)
	if cfg.NodeTimeout <= 0 {
		cfg.NodeTimeout = time.Second
	}
	if cfg.StartTimeout <= 0 {
		cfg.StartTimeout = 30 * time.Second
	}
	c := &Cluster{dir: cfg.Dir, timeout: cfg.StartTimeout}
	if c.dir == "" {
		if c.dir, err = os.MkdirTemp("", "fusionrag-redis-cluster-"); err != nil {
			return nil, err
		}
		c.ownsDir = true
	}
	n := cfg.Masters * (1 + cfg.Replicas)
	for i := range n {
		d := filepath.Join(c.dir, "node"+strconv.Itoa(i))
		if err := os.MkdirAll(d, 0o755); err != nil {
			c.Close()
			return nil, err
		}
		args := append([]string{"--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
			"--cluster-node-timeout", strconv.FormatInt(cfg.NodeTimeout.Milliseconds(), 10),
			"--cluster-require-full-coverage", "no",
			// A replica whose master dies right after the cluster formed
			// must still take over (the default factor refuses replicas
			// that were disconnected "too long", which a test that kills
			// a master at once can hit), and the first sync starts at once
			// instead of after Redis 7's 5 s diskless delay.
			"--cluster-replica-validity-factor", "0", "--repl-diskless-sync-delay", "0"}, cfg.Args...)
		s, err := Start(Config{Bin: bin, Dir: d, Args: args})
		if err != nil {
			c.Close()
			return nil, err
		}
		c.Nodes = append(c.Nodes, s)
	}
	argv := []string{"--cluster", "create"}
	argv = append(argv, c.Addrs()...)
	argv = append(argv, "--cluster-replicas", strconv.Itoa(cfg.Replicas), "--cluster-yes")
	ctx, cancel := context.WithTimeout(context.Background(), cfg.StartTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, cli, argv...).CombinedOutput()
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("redisproc: redis-cli --cluster create: %w\n%s", err, out)
	}
	if err := c.WaitOK(cfg.StartTimeout); err != nil {
		c.Close()
		return nil, err
	}
	if err := c.waitReplicas(cfg.StartTimeout); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// Addrs are the nodes' "127.0.0.1:port" addresses, in node order.
func (c *Cluster) Addrs() []string {
	a := make([]string, len(c.Nodes))
	for i, s := range c.Nodes {
		a[i] = s.Addr
	}
	return a
}

// URL is the kvstore URL of the cluster with every node as a seed:
// "redis-cluster://127.0.0.1:p1,127.0.0.1:p2,.../".
func (c *Cluster) URL() string { return "redis-cluster://" + strings.Join(c.Addrs(), ",") + "/" }

// alive reports whether node i's process is running.
func (c *Cluster) alive(i int) bool {
	select {
	case <-c.Nodes[i].Done():
		return false
	default:
		return true
	}
}

// WaitOK waits until every live node reports cluster_state:ok and
// cluster_slots_ok:16384 and agrees on 16384 slots served by live masters.
func (c *Cluster) WaitOK(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var last string
	for {
		ok := true
		for i, s := range c.Nodes {
			if !c.alive(i) {
				continue
			}
			info, err := Command(s.Addr, "CLUSTER INFO", time.Second)
			if err != nil || !strings.Contains(info, "cluster_state:ok") || !strings.Contains(info, "cluster_slots_ok:16384") {
				ok, last = false, fmt.Sprintf("%s: %v %s", s.Addr, err, firstLines(info, 4))
				break
			}
		}
		if ok {
			n, err := c.liveSlots()
			if err == nil && n == 16384 {
				return nil
			}
			last = fmt.Sprintf("%d slots served by live masters, %v", n, err)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("redisproc: cluster not ok after %v: %s", timeout, last)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func firstLines(s string, n int) string {
	l := strings.SplitN(s, "\n", n+1)
	return strings.Join(l[:min(n, len(l))], " ")
}

// waitReplicas waits until every replica's link to its master is up (its
// first sync done), so that a master killed right away has a replica
// holding its data.
func (c *Cluster) waitReplicas(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for i, s := range c.Nodes {
		for {
			info, err := Command(s.Addr, "INFO replication", time.Second)
			if err == nil && (strings.Contains(info, "role:master") || strings.Contains(info, "master_link_status:up")) {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("redisproc: node %d (%s) replica link not up after %v: %v %s", i, s.Addr, timeout, err, firstLines(info, 6))
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return nil
}

// liveMaster is a live master of ours as a live node sees the cluster: its
// index into Nodes and the slot ranges [lo, hi] it serves.
type liveMaster struct {
	node  int
	slots [][2]int
}

// liveMasters asks the first live node that answers CLUSTER NODES for the
// masters that serve slots, are not marked failed and are ours and running
// (a killed master keeps its slots in CLUSTER NODES until its replica is
// promoted).
func (c *Cluster) liveMasters() ([]liveMaster, error) {
	for i, s := range c.Nodes {
		if !c.alive(i) {
			continue
		}
		out, err := Command(s.Addr, "CLUSTER NODES", time.Second)
		if err != nil {
			continue
		}
		var ms []liveMaster
		for _, line := range strings.Split(out, "\n") {
			f := strings.Fields(line)
			// <id> <ip:port@cport> <flags> <master> <ping> <pong> <epoch> <link> <slot>...
			if len(f) < 9 || !strings.Contains(f[2], "master") || strings.Contains(f[2], "fail") {
				continue
			}
			j := c.nodeAt(f[1])
			if j < 0 || !c.alive(j) {
				continue
			}
			m := liveMaster{node: j}
			for _, r := range f[8:] {
				if strings.HasPrefix(r, "[") {
					continue // a slot being migrated
				}
				lo, hi, found := strings.Cut(r, "-")
				if !found {
					hi = lo
				}
				a, err1 := strconv.Atoi(lo)
				b, err2 := strconv.Atoi(hi)
				if err1 == nil && err2 == nil {
					m.slots = append(m.slots, [2]int{a, b})
				}
			}
			ms = append(ms, m)
		}
		return ms, nil
	}
	return nil, errors.New("redisproc: no live cluster node answers CLUSTER NODES")
}

// nodeAt is the index into Nodes of the node at "ip:port@cport", -1 when
// it is not one of ours.
func (c *Cluster) nodeAt(a string) int {
	addr, _, _ := strings.Cut(a, "@")
	for i, s := range c.Nodes {
		if s.Addr == addr {
			return i
		}
	}
	return -1
}

// liveSlots counts the slots that live masters serve.
func (c *Cluster) liveSlots() (int, error) {
	ms, err := c.liveMasters()
	n := 0
	for _, m := range ms {
		for _, r := range m.slots {
			n += r[1] - r[0] + 1
		}
	}
	return n, err
}

// Masters returns the indexes (into Nodes) of the live masters serving at
// least one slot, as one live node sees the cluster.
func (c *Cluster) Masters() ([]int, error) {
	ms, err := c.liveMasters()
	if err != nil {
		return nil, err
	}
	var out []int
	for _, m := range ms {
		out = append(out, m.node)
	}
	return out, nil
}

// MasterOf returns the index of the live master serving key's slot.
func (c *Cluster) MasterOf(key string) (int, error) {
	for i, s := range c.Nodes {
		if !c.alive(i) {
			continue
		}
		out, err := Command(s.Addr, "CLUSTER KEYSLOT "+key, time.Second)
		if err != nil {
			continue
		}
		slot, err := strconv.Atoi(strings.TrimSpace(out))
		if err != nil {
			return 0, fmt.Errorf("redisproc: CLUSTER KEYSLOT: %q", out)
		}
		ms, err := c.liveMasters()
		if err != nil {
			return 0, err
		}
		for _, m := range ms {
			for _, r := range m.slots {
				if r[0] <= slot && slot <= r[1] {
					return m.node, nil
				}
			}
		}
		return 0, fmt.Errorf("redisproc: no live master serves slot %d", slot)
	}
	return 0, errors.New("redisproc: no live cluster node")
}

// Close kills every node and removes the directory if StartCluster made it.
func (c *Cluster) Close() error {
	for _, s := range c.Nodes {
		s.Close()
	}
	if c.ownsDir {
		os.RemoveAll(c.dir)
	}
	return nil
}

// Command sends one inline command to addr and returns its reply as text:
// a status or integer as is, a bulk string's contents, an error reply as an
// error. Arrays are not supported (the cluster introspection here needs
// none).
func Command(addr, cmd string, d time.Duration) (string, error) {
	conn, err := net.DialTimeout("tcp", addr, d)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(d))
	if _, err := fmt.Fprint(conn, cmd+"\r\n"); err != nil {
		return "", err
	}
	r := bufio.NewReader(conn)
	line, err := r.ReadString('\n')
	if err != nil {
		return "", err
	}
	line = strings.TrimRight(line, "\r\n")
	if line == "" {
		return "", errors.New("redisproc: empty reply")
	}
	switch line[0] {
	case '+', ':':
		return line[1:], nil
	case '-':
		return "", errors.New(line[1:])
	case '$':
		n, err := strconv.Atoi(line[1:])
		if err != nil || n < 0 {
			return "", fmt.Errorf("redisproc: bulk reply %q", line)
		}
		buf := make([]byte, n+2)
		if _, err := io.ReadFull(r, buf); err != nil {
			return "", err
		}
		return string(buf[:n]), nil
	}
	return "", fmt.Errorf("redisproc: unsupported reply %q", line)
}
