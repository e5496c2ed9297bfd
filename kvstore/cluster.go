package kvstore

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/fusionrag/fusionrag/fingerprint"
	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
)

// A Redis Cluster tier is the Redis tier over go-redis's cluster client:
// same blob format, same keys (the hash tag {hex} of a key puts a blob, its
// lease and its parts in one slot), opened from
//
//	redis-cluster://host1:7000,host2:7001,host3:7002/?ttl=24h&part=2MiB&spread=1
//	rediss-cluster://...  (TLS)
//
// Every host is a seed: the client learns the whole cluster from any one
// that answers. Further seeds may also come as addr=host:port parameters
// (go-redis's own form), and go-redis's cluster parameters pass through
// (max_redirects, read_only, route_by_latency, pool_size...). The commas
// between hosts do not split the store spec into tiers: a piece without
// "://" that follows a cluster URL continues its host list.
func init() {
	Register("redis-cluster", openClusterURL)
	Register("rediss-cluster", openClusterURL)
}

// UnavailableError is a read that failed because the node holding the key
// could not serve it (a master lost before its replica is promoted, a node
// timing out). It matches ErrNotFound: for a cache, an unreachable shard is
// a miss, and the chunk is computed instead of failing the request. Err is
// the cause.
type UnavailableError struct {
	Tier string
	Key  fingerprint.Key
	Err  error
}

func (e *UnavailableError) Error() string {
	return fmt.Sprintf("kvstore: %s: %s unavailable: %v", e.Tier, e.Key, e.Err)
}

// Is makes an unavailable shard a miss for errors.Is(err, ErrNotFound).
func (e *UnavailableError) Is(target error) bool { return target == ErrNotFound }

func (e *UnavailableError) Unwrap() error { return e.Err }

// joinClusterHosts glues the pieces of spec split at commas back onto the
// cluster URL they belong to: a piece without "://" right after a
// redis-cluster URL is one of its seed hosts.
func joinClusterHosts(parts []string) []string {
	var out []string
	for _, p := range parts {
		t := strings.TrimSpace(p)
		if n := len(out); n > 0 && t != "" && !strings.Contains(t, "://") && isClusterURL(out[n-1]) {
			out[n-1] += "," + t
			continue
		}
		out = append(out, p)
	}
	return out
}

func isClusterURL(s string) bool {
	s = strings.TrimSpace(s)
	return strings.HasPrefix(s, "redis-cluster://") || strings.HasPrefix(s, "rediss-cluster://")
}

func openClusterURL(u *url.URL) (Store, error) {
	q, err := newQuery(u)
	if err != nil {
		return nil, err
	}
	c, err := q.redisConfig()
	if err != nil {
		return nil, err
	}
	spread, err := q.bool("spread", true)
	if err != nil {
		return nil, err
	}
	c.SingleSlot = !spread
	if p := strings.Trim(u.Path, "/"); p != "" {
		return nil, fmt.Errorf("a cluster has no databases: path %q (use redis-cluster://host:port,host:port/)", u.Path)
	}
	hosts := strings.Split(u.Host, ",")
	rest := q.rest()
	for _, h := range hosts[1:] {
		if h = strings.TrimSpace(h); h == "" {
			return nil, errors.New("empty host in the seed list")
		}
		rest.Add("addr", h)
	}
	if strings.TrimSpace(hosts[0]) == "" {
		return nil, errors.New("no seed host (redis-cluster://host:port,host:port/)")
	}
	u2 := *u
	u2.Scheme = strings.TrimSuffix(u.Scheme, "-cluster")
	u2.Host, u2.Path, u2.RawQuery = strings.TrimSpace(hosts[0]), "", rest.Encode()
	opts, err := redis.ParseClusterURL(u2.String())
	if err != nil {
		return nil, err
	}
	c.ClusterOptions = opts
	r, err := NewRedisCluster(c)
	if err != nil {
		return nil, err
	}
	r.url = u.Redacted()
	return r, nil
}

// NewRedisCluster returns a Redis Cluster tier; it validates c (which must
// have ClusterOptions with at least one seed address) and fills defaults as
// NewRedis does. It does not contact the cluster: errors surface on first
// use.
//
// Reads that fail for want of a node are misses (*UnavailableError), so a
// master lost mid-traffic costs misses for its slots until its replica is
// promoted, never a failed request. Commands are not retried on the same
// node; go-redis's cluster client still follows MOVED/ASK redirects and
// retries another node after a connection error (max_redirects, default 3),
// which is how it finds the promoted replica.
func NewRedisCluster(c RedisConfig) (*Redis, error) {
	if c.ClusterOptions == nil || len(c.ClusterOptions.Addrs) == 0 {
		return nil, errors.New("redis-cluster: no seed addresses")
	}
	if c.Options != nil {
		return nil, errors.New("redis-cluster: single-server options given to NewRedisCluster")
	}
	if c.PartSize == 0 {
		c.PartSize = 2 << 20
	}
	if err := c.fill(); err != nil {
		return nil, err
	}
	o := *c.ClusterOptions
	if c.Timeout > 0 {
		o.DialTimeout, o.ReadTimeout, o.WriteTimeout = c.Timeout, c.Timeout, c.Timeout
	}
	o.ContextTimeoutEnabled = true
	if o.MaxRetries == 0 {
		o.MaxRetries = -1
	}
	if o.DialerRetries == 0 {
		o.DialerRetries = 1
	}
	if o.MaintNotificationsConfig == nil {
		o.MaintNotificationsConfig = &maintnotifications.Config{Mode: maintnotifications.ModeDisabled}
	}
	// A read of a lost shard retries another node after a backoff; go-redis's
	// 512 ms ceiling would make each such miss cost about a second.
	if o.MaxRetryBackoff == 0 {
		o.MaxRetryBackoff = 32 * time.Millisecond
	}
	c.ClusterOptions = &o
	c.fillCallTimeout(o.ReadTimeout)
	return &Redis{cfg: c, url: "redis-cluster://" + strings.Join(o.Addrs, ","), addr: o.Addrs[0],
		tier: "redis-cluster", cluster: true, c: redis.NewClusterClient(&o)}, nil
}

// reloadSlots asks the cluster client to re-read the slot map (at most one
// reload at a time, 200 ms apart: go-redis's LazyReload). go-redis reloads
// it by itself only on MOVED/ASK or every few seconds, so after a failover
// it would keep sending the lost slots to the dead master: a failure is the
// hint that the map may have changed.
func (r *Redis) reloadSlots() {
	if cc, ok := r.c.(*redis.ClusterClient); ok {
		cc.ReloadState(context.Background())
	}
}

// Leaser is implemented by stores shared by several sidecars: a lease says
// "I am computing this key's blob", so that a burst of the same cold chunk
// on N sidecars computes it once while the others wait for the blob.
type Leaser interface {
	// TryLease takes the lease on key for ttl. ok is false when another
	// holder has it. release gives it back (only if still ours: a lease
	// that expired and was taken by someone else is left alone); it is
	// never nil and may be called more than once. err reports a store
	// failure, after which the caller should compute without a lease.
	TryLease(ctx context.Context, key fingerprint.Key, ttl time.Duration) (release func(), ok bool, err error)
}

var _ Leaser = (*Redis)(nil)

// releaseScript deletes a lease only if it still holds our token.
var releaseScript = redis.NewScript(`if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("DEL", KEYS[1]) else return 0 end`)

func (r *Redis) leaseKey(k fingerprint.Key) string { return r.key(k) + ":lease" }

// TryLease implements Leaser with SET key token NX PX ttl; release is a
// token-checked delete (a Lua script, atomic on the server). The lease key
// shares the blob's slot.
func (r *Redis) TryLease(ctx context.Context, key fingerprint.Key, ttl time.Duration) (func(), bool, error) {
	noop := func() {}
	if ttl < time.Millisecond {
		return noop, false, fmt.Errorf("%s lease: ttl %v below 1 ms", r.tier, ttl)
	}
	var tok [16]byte
	_, _ = rand.Read(tok[:])
	token := hex.EncodeToString(tok[:])
	lk := r.leaseKey(key)
	ok, err := r.c.SetNX(ctx, lk, token, ttl).Result()
	if err != nil {
		return noop, false, r.fail("lease", key, err)
	}
	if !ok {
		return noop, false, nil
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			_ = releaseScript.Run(ctx, r.c, []string{lk}, token).Err()
		})
	}, true, nil
}

// TryLease implements Leaser for a tiered store: the lease is taken on the
// slowest tier that offers one (the shared one); with none, every caller
// gets the lease (there is nobody to share with).
//
// A leasing tier that is down is not asked: the error wraps ErrTierDown and
// the caller computes without a lease.
func (t *Tiered) TryLease(ctx context.Context, key fingerprint.Key, ttl time.Duration) (func(), bool, error) {
	for i := len(t.tiers) - 1; i >= 0; i-- {
		if l, ok := t.tiers[i].(Leaser); ok {
			release, got := func() {}, false
			err := t.call(ctx, i, "lease", func() (err error) {
				release, got, err = l.TryLease(ctx, key, ttl)
				return err
			})
			return release, got, err
		}
	}
	return func() {}, true, nil
}
