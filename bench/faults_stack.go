package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/fusionrag/fusionrag/engine"
	"github.com/fusionrag/fusionrag/fingerprint"
	"github.com/fusionrag/fusionrag/internal/promexport"
	"github.com/fusionrag/fusionrag/internal/redisproc"
	"github.com/fusionrag/fusionrag/kvstore"
	"github.com/fusionrag/fusionrag/model"
	"github.com/fusionrag/fusionrag/proxy"
	"github.com/fusionrag/fusionrag/sidecar"
)

// faultStack is the system under faults: the engine on a fixed loopback
// port (so that it can be restarted there), a real redis-server, a tiered
// store mem + disk + Redis, and two sidecars on that store: the one under
// load (the proxy's defaults) and a warm-up one that computes every
// missing chunk (max_missing_fraction 1), standing in for an ingest.
type faultStack struct {
	m       *model.Model
	engCfg  engine.Config
	engAddr string

	engMu sync.Mutex
	eng   *engine.Engine

	redis    *redisproc.Server
	rdb      *redis.Client // the harness's own client, to corrupt values
	dir      string        // disk tier
	ownsDir  bool
	mem      kvstore.Store
	disk     kvstore.Store
	rds      kvstore.Store
	store    *kvstore.Tiered
	side     *Stack // sidecars (its close list)
	loadURL  string
	warmURL  string
	redisPfx string
}

// FaultRedisTimeout bounds one Redis command of the harness's Redis tier: a
// stalled server costs a request this long once, then the tier is down.
const FaultRedisTimeout = 250 * time.Millisecond

// startFaultStack starts everything; dir is the disk tier's directory ("":
// a temporary one, removed by close).
func startFaultStack(m *model.Model, dir string) (_ *faultStack, err error) {
	s := &faultStack{m: m, dir: dir, redisPfx: "fusionrag:kv:"}
	defer func() {
		if err != nil {
			s.close()
		}
	}()
	if s.dir == "" {
		if s.dir, err = os.MkdirTemp("", "fusionrag-faults-"); err != nil {
			return nil, err
		}
		s.ownsDir = true
	}
	if s.redis, err = redisproc.Start(redisproc.Config{}); err != nil {
		return nil, err
	}
	s.rdb = redis.NewClient(&redis.Options{Addr: s.redis.Addr, MaxRetries: -1})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s.engAddr = ln.Addr().String()
	s.engCfg = engine.Config{Listen: s.engAddr}
	if err = s.serveEngine(ln); err != nil {
		return nil, err
	}
	if s.mem, err = kvstore.Open("mem://?max=256MiB"); err != nil {
		return nil, err
	}
	if s.disk, err = kvstore.Open("disk://" + filepath.Join(s.dir, "kv") + "?max=1GiB"); err != nil {
		return nil, err
	}
	if s.rds, err = kvstore.Open(s.redis.URL(0) + "?timeout=" + FaultRedisTimeout.String()); err != nil {
		return nil, err
	}
	s.store = kvstore.NewTiered(s.mem, s.disk, s.rds)
	s.side = &Stack{EngineURL: "http://" + s.engAddr}
	if s.loadURL, err = s.sidecar(false); err != nil {
		return nil, err
	}
	if s.warmURL, err = s.sidecar(true); err != nil {
		return nil, err
	}
	return s, nil
}

// sidecar starts a sidecar with the fusion path over the stack's store,
// built as fusionrag serve builds it (package sidecar: reuse self-check,
// documents queue); warm makes it compute every missing chunk.
func (s *faultStack) sidecar(warm bool) (string, error) {
	pcfg := proxy.DefaultConfig()
	pcfg.Fusion.Separator = StackSeparator
	if warm {
		pcfg.Fusion.MaxMissingFraction = 1
		pcfg.Timeouts.Fusion = time.Minute
	}
	return s.side.sidecar(sidecar.Config{Proxy: pcfg, Model: s.m, Store: s.store})
}

// serveEngine starts a fresh engine on ln.
func (s *faultStack) serveEngine(ln net.Listener) error {
	eng, err := engine.NewFromModel(s.engCfg, s.m)
	if err != nil {
		ln.Close()
		return err
	}
	s.engMu.Lock()
	s.eng = eng
	s.engMu.Unlock()
	go eng.Serve(ln)
	return nil
}

// killEngine stops the engine at once, as a crash would: requests in
// flight fail, the port refuses connections.
func (s *faultStack) killEngine() {
	s.engMu.Lock()
	eng := s.eng
	s.eng = nil
	s.engMu.Unlock()
	if eng != nil {
		eng.Close()
	}
}

// startEngine starts a new, empty engine on the same port (retrying the
// bind for up to 5 s).
func (s *faultStack) startEngine() error {
	deadline := time.Now().Add(5 * time.Second)
	for {
		ln, err := net.Listen("tcp", s.engAddr)
		if err == nil {
			return s.serveEngine(ln)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("bench: rebinding the engine's port %s: %w", s.engAddr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (s *faultStack) close() {
	if s.side != nil {
		s.side.Close()
	}
	if s.store != nil {
		s.store.Close() // closes the tiers
	} else {
		for _, t := range []kvstore.Store{s.mem, s.disk, s.rds} {
			if t != nil {
				t.Close()
			}
		}
	}
	s.killEngine()
	if s.rdb != nil {
		s.rdb.Close()
	}
	if s.redis != nil {
		s.redis.Close()
	}
	if s.ownsDir {
		os.RemoveAll(s.dir)
	}
}

// diskFiles lists the disk tier's blob files (*.kv) by key.
func (s *faultStack) diskFiles() (map[fingerprint.Key]string, error) {
	out := map[fingerprint.Key]string{}
	err := filepath.WalkDir(filepath.Join(s.dir, "kv"), func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil // removed meanwhile
			}
			return err
		}
		name := d.Name()
		if d.IsDir() || !strings.HasSuffix(name, ".kv") {
			return nil
		}
		if k, err := fingerprint.ParseKey(strings.TrimSuffix(name, ".kv")); err == nil {
			out[k] = path
		}
		return nil
	})
	return out, err
}

// place sets where each class's chunks are when a Redis fault starts:
// local keys out of Redis, Redis keys out of memory and disk.
func (s *faultStack) place(ctx context.Context, local, remote []fingerprint.Key) {
	for _, k := range local {
		s.rds.Delete(ctx, k)
	}
	for _, k := range remote {
		s.mem.Delete(ctx, k)
		s.disk.Delete(ctx, k)
	}
}

// dropMem empties the memory tier of keys, so that the next reads go to
// disk and Redis (where the corruption faults are).
func (s *faultStack) dropMem(ctx context.Context, keys ...[]fingerprint.Key) {
	for _, ks := range keys {
		for _, k := range ks {
			s.mem.Delete(ctx, k)
		}
	}
}

// flipDisk flips one byte in the middle of every blob file, in place.
func (s *faultStack) flipDisk() (int, error) {
	files, err := s.diskFiles()
	if err != nil {
		return 0, err
	}
	n := 0
	for _, path := range files {
		b, err := os.ReadFile(path)
		if err != nil || len(b) == 0 {
			continue // evicted or replaced meanwhile
		}
		b[len(b)/2] ^= 0x5a
		if os.WriteFile(path, b, 0o644) == nil {
			n++
		}
	}
	return n, nil
}

// truncateDisk cuts every blob file to half its length, in place.
func (s *faultStack) truncateDisk() (int, error) {
	files, err := s.diskFiles()
	if err != nil {
		return 0, err
	}
	n := 0
	for _, path := range files {
		fi, err := os.Stat(path)
		if err != nil {
			continue
		}
		if os.Truncate(path, fi.Size()/2) == nil {
			n++
		}
	}
	return n, nil
}

// seedRedis copies every blob of the disk tier into the Redis tier
// (straight to the tier, whatever the tiered store thinks of its health),
// so that the corruption phase finds values in Redis to corrupt.
func (s *faultStack) seedRedis(ctx context.Context) (int, error) {
	files, err := s.diskFiles()
	if err != nil {
		return 0, err
	}
	n := 0
	for _, path := range files {
		raw, err := os.ReadFile(path)
		if err != nil {
			continue
		}
		b, err := kvstore.Decode(raw)
		if err != nil {
			continue // not a whole blob: left alone
		}
		if s.rds.Put(ctx, b) == nil {
			n++
		}
		b.Release()
	}
	return n, nil
}

// redisTierUp waits (up to wait) until the tiered store counts its Redis
// tier up again, poking it with reads of keys (which must not be in the
// faster tiers, or the read never reaches Redis): a tier marked down is
// probed only by a call once its backoff has passed. It returns how long
// that took and whether the tier came up.
func (s *faultStack) redisTierUp(ctx context.Context, keys []fingerprint.Key, wait time.Duration) (time.Duration, bool) {
	start := time.Now()
	for i := 0; ; i++ {
		down := false
		for _, t := range s.store.Stats() {
			down = down || t.Tier == "redis" && t.Down
		}
		if !down {
			return time.Since(start), true
		}
		if time.Since(start) > wait || ctx.Err() != nil || len(keys) == 0 {
			return time.Since(start), false
		}
		s.store.Has(ctx, keys[i%len(keys)])
		time.Sleep(50 * time.Millisecond)
	}
}

// flipRedis flips one byte in the middle of every stored value.
func (s *faultStack) flipRedis(ctx context.Context) (int, error) {
	n := 0
	iter := s.rdb.Scan(ctx, 0, s.redisPfx+"*", 256).Iterator()
	for iter.Next(ctx) {
		k := iter.Val()
		v, err := s.rdb.Get(ctx, k).Bytes()
		if err != nil || len(v) == 0 {
			continue
		}
		v[len(v)/2] ^= 0x5a
		if s.rdb.Set(ctx, k, v, redis.KeepTTL).Err() == nil {
			n++
		}
	}
	return n, iter.Err()
}

// scrapeMetrics reads a sidecar's Prometheus page into name{labels} -> value.
func scrapeMetrics(client *http.Client, base string) (map[string]float64, error) {
	resp, err := client.Get(base + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("bench: %s/metrics: %s", base, resp.Status)
	}
	m, err := promexport.ParseText(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("bench: %s/metrics: %w", base, err)
	}
	return m, nil
}

// metricByLabel sums the series of metric name by the value of label:
// {path="fusion",route="chat"} and {path="fusion",route="completions"}
// both count under "fusion".
func metricByLabel(m map[string]float64, name, label string) map[string]float64 {
	out := map[string]float64{}
	for k, v := range m {
		rest, ok := strings.CutPrefix(k, name+"{")
		if !ok {
			continue
		}
		_, after, ok := strings.Cut(rest, label+`="`)
		if !ok {
			continue
		}
		val, _, _ := strings.Cut(after, `"`)
		out[val] += v
	}
	return out
}

// peakRSSKiB is the process's peak resident set (VmHWM), 0 where
// /proc/self/status does not exist.
func peakRSSKiB() int64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			return kb
		}
	}
	return 0
}
