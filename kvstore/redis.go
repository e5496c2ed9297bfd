package kvstore

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"sync"
	"time"

	"github.com/fusionrag/fusionrag/fingerprint"
	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
	"github.com/zeebo/xxh3"
)

func init() {
	Register("redis", openRedisURL)
	Register("rediss", openRedisURL)
}

func openRedisURL(u *url.URL) (Store, error) {
	q, err := newQuery(u)
	if err != nil {
		return nil, err
	}
	c, err := q.redisConfig()
	if err != nil {
		return nil, err
	}
	// The remaining parameters are go-redis's own (pool_size, read_timeout...).
	rest := q.rest()
	u2 := *u
	u2.RawQuery = rest.Encode()
	opts, err := redis.ParseURL(u2.String())
	if err != nil {
		return nil, err
	}
	c.Options = opts
	r, err := NewRedis(c)
	if err != nil {
		return nil, err
	}
	r.url = u.Redacted()
	return r, nil
}

// RedisConfig configures a Redis tier: one redis-server (Options) or a
// Redis Cluster (ClusterOptions, see NewRedisCluster).
type RedisConfig struct {
	// Options are go-redis's client options (address, DB, auth, pool) of a
	// single server.
	Options *redis.Options
	// ClusterOptions are go-redis's cluster client options (seed addresses,
	// auth, pool, redirects) of a Redis Cluster; set by NewRedisCluster.
	ClusterOptions *redis.ClusterOptions
	// SingleSlot keeps a cluster blob's parts in the blob's slot (one
	// shard). By default a cluster tier spreads them: each part under a
	// hash tag of its own, so that they land on different shards and one
	// pipeline fetches them from all shards at once (1.5-1.9x single
	// Redis's get bandwidth at 8-32 MiB with 2 MiB parts, where one slot
	// gave 1.0-1.2x: docs/scale.md). One server always keeps one slot (its
	// key names are unchanged). Changing it, or PartSize, on a live store
	// turns the blobs in parts written before into misses (their parts are
	// looked up under other names; they are dropped and expire).
	SingleSlot bool
	// TTL of every entry; default 24h, negative for none.
	TTL time.Duration
	// PartSize: blobs larger than this are split into parts of this size,
	// written and read in one pipeline each; default 8 MiB for one server,
	// 2 MiB for a cluster (measured: docs/scale.md).
	PartSize int
	// Timeout sets the dial, read and write timeouts when non-zero.
	Timeout time.Duration
	// CallTimeout bounds one Get, Put, Has or Delete of the tier as a whole:
	// the wait for a pooled connection, a dial and every round trip (a
	// caller's earlier deadline still wins). go-redis's timeouts bound each
	// step, not their sum: against a server that hangs (SIGSTOP, a stuck
	// host) a call could wait out the pool timeout, then a dial, then a read.
	// Default: 2 x the read timeout + 1 s (1.6 s with Timeout 300 ms, 11 s
	// with go-redis's 5 s default); negative: none. URL parameter deadline.
	CallTimeout time.Duration
	// Prefix of every key; default "fusionrag:kv:".
	Prefix string
	// Streams is how many pipelines (connections) carry the parts of one
	// blob concurrently; default 1. More helps when the network round trip,
	// not Redis's single thread, bounds throughput (on the 2-core test
	// machine with a loopback server, 4 and 8 streams were no faster).
	Streams int
}

// partGrace keeps parts alive a little longer than their manifest, so a
// reader that sees a manifest finds its parts.
const partGrace = time.Minute

// Redis is the Redis tier. A blob up to PartSize is one string value; a
// larger one is a manifest under the key plus parts under key:0..n-1 (all in
// one hash slot), parts written before the manifest so readers never see a
// partial blob.
type Redis struct {
	cfg     RedisConfig
	url     string
	addr    string // for error messages: the server, or the cluster's first seed
	tier    string // "redis" or "redis-cluster"
	cluster bool
	c       redis.UniversalClient
	counters
}

// NewRedis returns a Redis tier; it validates c and fills defaults. It does
// not contact the server: errors surface on first use.
func NewRedis(c RedisConfig) (*Redis, error) {
	if c.Options == nil {
		return nil, errors.New("redis: no client options")
	}
	if c.ClusterOptions != nil {
		return nil, errors.New("redis: cluster options given to NewRedis (use NewRedisCluster)")
	}
	c.SingleSlot = true // nothing to spread over; keeps the key names
	if err := c.fill(); err != nil {
		return nil, err
	}
	o := *c.Options
	if c.Timeout > 0 {
		o.DialTimeout, o.ReadTimeout, o.WriteTimeout = c.Timeout, c.Timeout, c.Timeout
	}
	o.ContextTimeoutEnabled = true
	// A failed cache read is a miss and the caller falls back at once, so by
	// default no command retries and one dial attempt: an outage costs one
	// timeout, not go-redis's retry ladder. URL options override both.
	if o.MaxRetries == 0 {
		o.MaxRetries = -1
	}
	if o.DialerRetries == 0 {
		o.DialerRetries = 1
	}
	if o.MaintNotificationsConfig == nil {
		o.MaintNotificationsConfig = &maintnotifications.Config{Mode: maintnotifications.ModeDisabled}
	}
	c.Options = &o
	c.fillCallTimeout(o.ReadTimeout)
	return &Redis{cfg: c, url: "redis://" + o.Addr, addr: o.Addr, tier: "redis", c: redis.NewClient(&o)}, nil
}

// fill validates the settings common to both kinds and fills defaults.
func (c *RedisConfig) fill() error {
	if c.TTL == 0 {
		c.TTL = 24 * time.Hour
	}
	if c.TTL < 0 {
		c.TTL = 0 // go-redis: no expiry
	}
	if c.PartSize == 0 {
		c.PartSize = 8 << 20
	}
	if c.PartSize < 1024 {
		return fmt.Errorf("redis: part size %d below 1 KiB", c.PartSize)
	}
	if c.Streams == 0 {
		c.Streams = 1
	}
	if c.Streams < 0 || c.Streams > 64 {
		return fmt.Errorf("redis: streams %d out of [1, 64]", c.Streams)
	}
	if c.Prefix == "" {
		c.Prefix = "fusionrag:kv:"
	}
	return nil
}

// fillCallTimeout sets CallTimeout's default from the client's read
// timeout (0: go-redis's default, 5 s; negative: none, counted as 5 s).
func (c *RedisConfig) fillCallTimeout(read time.Duration) {
	if c.CallTimeout != 0 {
		return
	}
	if read <= 0 {
		read = 5 * time.Second
	}
	c.CallTimeout = 2*read + time.Second
}

// redisConfig parses the parameters of ours that a redis:// and a
// redis-cluster:// URL share (ttl, part, timeout, deadline, prefix,
// streams) into a RedisConfig without client options.
func (q *query) redisConfig() (RedisConfig, error) {
	var c RedisConfig
	var err error
	if ttl := q.str("ttl", ""); ttl != "" {
		if c.TTL, err = time.ParseDuration(ttl); err != nil {
			return c, fmt.Errorf("parameter ttl: %v", err)
		}
		if c.TTL == 0 {
			c.TTL = -1 // explicit ttl=0: no expiry
		}
	}
	part, err := q.size("part", 0)
	if err != nil {
		return c, err
	}
	c.PartSize = int(part)
	if t := q.str("timeout", ""); t != "" {
		if c.Timeout, err = time.ParseDuration(t); err != nil {
			return c, fmt.Errorf("parameter timeout: %v", err)
		}
	}
	if c.CallTimeout, err = q.deadline(); err != nil {
		return c, err
	}
	c.Prefix = q.str("prefix", "")
	if st := q.str("streams", ""); st != "" {
		if c.Streams, err = strconv.Atoi(st); err != nil {
			return c, fmt.Errorf("parameter streams: %q is not an integer", st)
		}
	}
	return c, nil
}

// rest returns the parameters not read so far: go-redis's own, passed on
// to its URL parser.
func (q *query) rest() url.Values {
	rest := url.Values{}
	for k, v := range q.v {
		if !q.used[k] {
			rest[k] = v
		}
	}
	return rest
}

// deadline parses the deadline parameter (CallTimeout): a duration, 0 for
// none.
func (q *query) deadline() (time.Duration, error) {
	s := q.str("deadline", "")
	if s == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("parameter deadline: %v", err)
	}
	if d == 0 {
		d = -1 // explicit deadline=0: none
	}
	return d, nil
}

// bound returns ctx with the tier's per-call deadline (CallTimeout).
func (r *Redis) bound(ctx context.Context) (context.Context, context.CancelFunc) {
	if r.cfg.CallTimeout <= 0 {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, r.cfg.CallTimeout)
}

// key is the blob's key; its hash tag {hex} puts the blob, its lease and
// (unless spread) its parts in one slot.
func (r *Redis) key(k fingerprint.Key) string { return r.cfg.Prefix + "{" + k.String() + "}" }

// partKey is part i's key: in the blob's slot, or, spread, under a hash
// tag of its own ({hex:i}) so that parts land on different shards.
func (r *Redis) partKey(k fingerprint.Key, i int) string {
	if !r.cfg.SingleSlot {
		return r.cfg.Prefix + "{" + k.String() + ":" + strconv.Itoa(i) + "}"
	}
	return r.key(k) + ":" + strconv.Itoa(i)
}

// del deletes keys: one DEL when they share a slot, else one DEL each in a
// pipeline (a cluster refuses a multi-key DEL across slots, CROSSSLOT; the
// cluster client sends each node its share concurrently).
func (r *Redis) del(ctx context.Context, keys ...string) error {
	if r.cfg.SingleSlot || len(keys) == 1 {
		return r.c.Del(ctx, keys...).Err()
	}
	pipe := r.c.Pipeline()
	for _, k := range keys {
		pipe.Del(ctx, k)
	}
	_, err := pipe.Exec(ctx)
	return err
}

// Manifest of a blob in parts, 40 bytes little-endian:
//
//	[0, 4) "FRKP", [4, 8) part count, [8, 16) total length, [16, 24) part
//	size, [24, 32) xxh3-64 of the whole blob, [32, 40) xxh3-64 of [0, 32).
const manifestSize = 40

var manifestMagic = []byte("FRKP")

type manifest struct {
	parts          int
	total, partLen int64
	sum            uint64
}

func (m manifest) encode() []byte {
	b := make([]byte, manifestSize)
	copy(b, manifestMagic)
	binary.LittleEndian.PutUint32(b[4:], uint32(m.parts))
	binary.LittleEndian.PutUint64(b[8:], uint64(m.total))
	binary.LittleEndian.PutUint64(b[16:], uint64(m.partLen))
	binary.LittleEndian.PutUint64(b[24:], m.sum)
	binary.LittleEndian.PutUint64(b[32:], xxh3.Hash(b[:32]))
	return b
}

func decodeManifest(b []byte) (manifest, error) {
	if len(b) != manifestSize {
		return manifest{}, corrupt("manifest is %d bytes", len(b))
	}
	if got, want := binary.LittleEndian.Uint64(b[32:]), xxh3.Hash(b[:32]); got != want {
		return manifest{}, corrupt("manifest checksum %016x, computed %016x", got, want)
	}
	m := manifest{
		parts:   int(binary.LittleEndian.Uint32(b[4:])),
		total:   int64(binary.LittleEndian.Uint64(b[8:])),
		partLen: int64(binary.LittleEndian.Uint64(b[16:])),
		sum:     binary.LittleEndian.Uint64(b[24:]),
	}
	if m.partLen < 1 || m.total < HeaderSize || m.total > HeaderSize+maxPayload ||
		int64(m.parts) != (m.total+m.partLen-1)/m.partLen {
		return manifest{}, corrupt("manifest: %d parts of %d for %d bytes", m.parts, m.partLen, m.total)
	}
	return m, nil
}

func (r *Redis) fail(op string, k fingerprint.Key, err error) error {
	r.errors.Add(1)
	r.reloadSlots()
	return fmt.Errorf("%s %s %s %s: %w", r.tier, r.addr, op, k, err)
}

// unavailable is a cluster read that failed for want of a node (a master
// lost and its replica not yet promoted, a node timing out): counted as an
// error and as a miss, and returned as *UnavailableError, which matches
// ErrNotFound, so that the caller computes the chunk instead of failing.
// One server's failures stay plain errors (the caller falls back).
func (r *Redis) unavailable(op string, k fingerprint.Key, err error) error {
	if !r.cluster {
		return r.fail(op, k, err)
	}
	r.errors.Add(1)
	r.misses.Add(1)
	r.reloadSlots()
	return &UnavailableError{Tier: r.tier, Key: k, Err: err}
}

// Get implements Store.
func (r *Redis) Get(ctx context.Context, key fingerprint.Key, want fingerprint.Check) (*Blob, error) {
	ctx, cancel := r.bound(ctx)
	defer cancel()
	v, err := r.c.Get(ctx, r.key(key)).Bytes()
	if errors.Is(err, redis.Nil) {
		r.misses.Add(1)
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, r.unavailable("get", key, err)
	}
	raw := v
	if bytes.HasPrefix(v, manifestMagic) {
		m, err := decodeManifest(v)
		if err != nil {
			return nil, r.dropCorrupt(ctx, key, err)
		}
		raw, err = r.readParts(ctx, key, m)
		var ce *CorruptError
		if errors.As(err, &ce) {
			return nil, r.dropCorrupt(ctx, key, err)
		}
		if errors.Is(err, ErrNotFound) {
			r.misses.Add(1)
			r.Delete(context.WithoutCancel(ctx), key)
			return nil, err
		}
		if err != nil {
			return nil, r.unavailable("get", key, err)
		}
	}
	b, drop, err := r.verify(r.tier, raw, key, want)
	if drop {
		r.Delete(context.WithoutCancel(ctx), key)
	}
	return b, err
}

func (r *Redis) dropCorrupt(ctx context.Context, key fingerprint.Key, err error) error {
	r.corruptions.Add(1)
	r.misses.Add(1)
	var ce *CorruptError
	if errors.As(err, &ce) {
		ce.Tier, ce.Key = r.tier, key
	}
	r.Delete(context.WithoutCancel(ctx), key)
	return err
}

// streamRanges splits parts [0, n) into at most streams contiguous ranges.
func streamRanges(n, streams int) [][2]int {
	streams = max(1, min(streams, n))
	out := make([][2]int, 0, streams)
	for s := range streams {
		out = append(out, [2]int{s * n / streams, (s + 1) * n / streams})
	}
	return out
}

// inStreams runs f on each range of parts concurrently (one pipeline, so one
// connection, each: Redis writes a bounded amount per client per event loop
// turn, so one connection cannot carry a large blob at full speed) and
// returns the first error. It returns only when every f has returned.
func (r *Redis) inStreams(parts int, f func(begin, end int) error) error {
	ranges := streamRanges(parts, r.cfg.Streams)
	errs := make([]error, len(ranges))
	var wg sync.WaitGroup
	for i, rg := range ranges[1:] {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i+1] = f(rg[0], rg[1])
		}()
	}
	errs[0] = f(ranges[0][0], ranges[0][1])
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// readParts fetches a manifest's parts, in pipelines, into one buffer.
func (r *Redis) readParts(ctx context.Context, key fingerprint.Key, m manifest) ([]byte, error) {
	buf := make([]byte, m.total)
	err := r.inStreams(m.parts, func(begin, end int) error {
		pipe := r.c.Pipeline()
		cmds := make([]*redis.StringCmd, 0, end-begin)
		for i := begin; i < end; i++ {
			cmds = append(cmds, pipe.Get(ctx, r.partKey(key, i)))
		}
		if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
			return err
		}
		for j, c := range cmds {
			i := begin + j
			p, err := c.Bytes()
			if errors.Is(err, redis.Nil) {
				return ErrNotFound // expired or evicted part
			}
			if err != nil {
				return err
			}
			off := int64(i) * m.partLen
			want := min(m.partLen, m.total-off)
			if int64(len(p)) != want {
				return corrupt("part %d is %d bytes, want %d", i, len(p), want)
			}
			copy(buf[off:], p)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if got := xxh3.Hash(buf); got != m.sum {
		return nil, corrupt("parts checksum %016x, manifest says %016x", got, m.sum)
	}
	return buf, nil
}

// Put implements Store.
func (r *Redis) Put(ctx context.Context, b *Blob) error {
	ctx, cancel := r.bound(ctx)
	defer cancel()
	raw, err := b.Encode()
	if err != nil {
		return err
	}
	if len(raw) <= r.cfg.PartSize {
		if err := r.c.Set(ctx, r.key(b.Key), raw, r.cfg.TTL).Err(); err != nil {
			return r.fail("put", b.Key, err)
		}
	} else {
		m := manifest{total: int64(len(raw)), partLen: int64(r.cfg.PartSize), sum: xxh3.Hash(raw)}
		m.parts = int((m.total + m.partLen - 1) / m.partLen)
		partTTL := r.cfg.TTL
		if partTTL > 0 {
			partTTL += partGrace
		}
		err := r.inStreams(m.parts, func(begin, end int) error {
			pipe := r.c.Pipeline()
			for i := begin; i < end; i++ {
				stop := min(int64(i+1)*m.partLen, m.total)
				pipe.Set(ctx, r.partKey(b.Key, i), raw[int64(i)*m.partLen:stop], partTTL)
			}
			_, err := pipe.Exec(ctx)
			return err
		})
		if err == nil {
			err = r.c.Set(ctx, r.key(b.Key), m.encode(), r.cfg.TTL).Err()
		}
		if err != nil && !r.cfg.SingleSlot {
			// Spread parts live on other shards than the manifest: when the
			// manifest's shard is down, a manifest stored before (the same
			// key is the same blob) may still point at them, on a replica
			// about to be promoted. Deleting them would turn that blob into
			// a miss after the failover; they expire instead.
			return r.fail("put", b.Key, err)
		}
		if err != nil {
			// Best effort: drop the parts already written (they expire anyway).
			dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
			keys := make([]string, m.parts)
			for i := range keys {
				keys[i] = r.partKey(b.Key, i)
			}
			r.del(dctx, keys...)
			cancel()
			return r.fail("put", b.Key, err)
		}
	}
	r.puts.Add(1)
	r.bytesWrite.Add(int64(len(raw)))
	return nil
}

// Has implements Store.
func (r *Redis) Has(ctx context.Context, key fingerprint.Key) (bool, error) {
	ctx, cancel := r.bound(ctx)
	defer cancel()
	n, err := r.c.Exists(ctx, r.key(key)).Result()
	if err != nil {
		return false, r.fail("has", key, err)
	}
	return n == 1, nil
}

// Delete implements Store: the key and, for a blob in parts, its parts.
func (r *Redis) Delete(ctx context.Context, key fingerprint.Key) error {
	ctx, cancel := r.bound(ctx)
	defer cancel()
	keys := []string{r.key(key)}
	v, err := r.c.Get(ctx, r.key(key)).Bytes()
	if err != nil && !errors.Is(err, redis.Nil) {
		return r.fail("delete", key, err)
	}
	if m, err := decodeManifest(v); err == nil {
		for i := range m.parts {
			keys = append(keys, r.partKey(key, i))
		}
	}
	if err := r.del(ctx, keys...); err != nil {
		return r.fail("delete", key, err)
	}
	return nil
}

// Stats implements Store. Redis's own memory use is not tracked: Entries and
// Bytes are -1.
func (r *Redis) Stats() []TierStats {
	s := TierStats{Tier: r.tier, URL: r.url, Entries: -1, Bytes: -1}
	r.counters.snapshot(&s)
	return []TierStats{s}
}

// Close implements Store.
func (r *Redis) Close() error { return r.c.Close() }
