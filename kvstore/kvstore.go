// Package kvstore stores KV caches: a versioned, checksummed binary blob
// format and the tiers that hold blobs (memory, disk, Redis), composed into a
// tiered store with read-through, promotion and per-tier statistics.
//
// Every read verifies the blob's checksums and identity: a corrupt blob is
// counted, dropped and reported as a miss (*CorruptError, which matches
// ErrNotFound), never returned; a blob whose Check differs from the wanted
// tokens' is a fingerprint collision, counted and reported as a miss too
// (*fingerprint.CollisionError wrapped in ErrCollision).
//
// Stores are opened from URLs; tiers register their scheme with Register:
//
//	mem://?max=2GiB&policy=lru|heat
//	disk:///var/cache/fusionrag?max=50GiB&fsync=0&mmap=1&rescan=10s
//	redis://host:6379/0?ttl=24h&part=8MiB&timeout=2s&deadline=5s&prefix=fusionrag:kv:&streams=1
//	redis-cluster://host1:7000,host2:7001,host3:7002/?ttl=24h&part=2MiB&spread=1
//
// Sizes take B, KB..TB or KiB..TiB; unknown parameters are errors. A Redis
// URL also passes go-redis's own parameters through (pool_size,
// read_timeout, max_retries...); by default a Redis failure is not retried,
// since a failed cache read only means a fallback. timeout= sets go-redis's
// dial, read and write timeouts; deadline= bounds one call of the tier as a
// whole (default 2 x read timeout + 1 s), so a Redis that hangs (stopped,
// not dead) costs at most that per call, and a tiered store then skips it
// as down (TestTieredRedisStalled).
//
// A redis-cluster URL lists seed nodes separated by commas (they do not
// split the spec into tiers) and takes the Redis parameters plus spread
// (large blobs' parts on different shards) and go-redis's cluster
// parameters (spread=0 keeps a blob's parts on its own shard); an
// unreachable shard reads as a miss (*UnavailableError).
// Redis and Redis Cluster tiers are Leasers: sidecars sharing a store take
// a short lease before computing a chunk, so that a burst of one cold chunk
// computes it once.
//
// A disk directory may be shared by several processes at once (serve while
// ingest writes, two serves): blobs are written to a temporary file and
// renamed into place, a Get that misses a store's index looks at the file
// system, a vanished file is a miss, eviction checks that no other process
// used a file since, and each store resynchronises its index every rescan
// interval (default 10s). Stats of a shared directory are that process's
// view, approximate; each process holds what it knows of to max, so the
// directory can briefly exceed max by what the others wrote since the last
// rescan (see Disk).
//
// Several URLs separated by commas make one tiered store, fastest first.
package kvstore

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/fusionrag/fusionrag/fingerprint"
)

// Store holds blobs by key. Implementations are safe for concurrent use.
type Store interface {
	// Get returns the blob stored under key after verifying its checksums and
	// that its Check equals want. A miss, a corrupt blob and a collision all
	// match ErrNotFound; other errors (I/O, network) carry their cause. The
	// caller must Release the blob.
	Get(ctx context.Context, key fingerprint.Key, want fingerprint.Check) (*Blob, error)
	// Put stores b under b.Key, replacing any blob there.
	Put(ctx context.Context, b *Blob) error
	// Has reports whether a blob is stored under key, without verifying it.
	Has(ctx context.Context, key fingerprint.Key) (bool, error)
	// Delete removes key's blob; deleting a missing key is not an error.
	Delete(ctx context.Context, key fingerprint.Key) error
	// Stats returns one entry per tier.
	Stats() []TierStats
	// Close releases the store's resources. Blobs already returned stay valid
	// until released.
	Close() error
}

// Sentinel errors.
var (
	// ErrNotFound: no usable blob under the key.
	ErrNotFound = errors.New("kvstore: not found")
	// ErrCollision wraps a *fingerprint.CollisionError; it matches ErrNotFound.
	ErrCollision = fmt.Errorf("%w: fingerprint collision", ErrNotFound)
	// ErrTooLarge: the blob exceeds the tier's whole budget.
	ErrTooLarge = errors.New("kvstore: blob larger than the tier's budget")
	// ErrClosed: the store was closed.
	ErrClosed = errors.New("kvstore: store closed")
	// ErrBadURL: a store URL that cannot be opened.
	ErrBadURL = errors.New("kvstore: bad store URL")
)

// CorruptError reports a stored blob that failed verification. It matches
// ErrNotFound: the entry is unusable and has been dropped.
type CorruptError struct {
	Tier   string          // tier scheme, empty from Decode
	Key    fingerprint.Key // key asked for, zero from Decode
	Reason string
}

func (e *CorruptError) Error() string {
	if e.Tier == "" {
		return "kvstore: corrupt blob: " + e.Reason
	}
	return fmt.Sprintf("kvstore: %s: corrupt blob %s: %s", e.Tier, e.Key, e.Reason)
}

// Is makes a corrupt blob a miss for errors.Is(err, ErrNotFound).
func (e *CorruptError) Is(target error) bool { return target == ErrNotFound }

// TierError carries a tier's failure (not a miss) with its cause.
type TierError struct {
	Tier string // tier scheme
	Op   string // get, put, has, delete
	Err  error
}

func (e *TierError) Error() string { return fmt.Sprintf("kvstore: %s %s: %v", e.Tier, e.Op, e.Err) }
func (e *TierError) Unwrap() error { return e.Err }

// TierStats are one tier's counters since it was opened.
type TierStats struct {
	Tier        string // scheme: mem, disk, redis
	URL         string // as opened, password redacted
	Hits        int64
	Misses      int64 // includes corruptions and collisions
	Puts        int64
	Errors      int64 // failures other than misses
	Corruptions int64
	Collisions  int64
	Evictions   int64
	Entries     int64 // resident blobs; -1 when the tier cannot tell (redis)
	Bytes       int64 // resident bytes counted against MaxBytes; -1 when unknown
	MaxBytes    int64 // budget; 0 when the tier has none
	BytesRead   int64
	BytesWrite  int64
	// Set by a tiered store (see Tiered): the tier is down (skipped until
	// its backoff passes), calls skipped because it was, and how many times
	// it went down.
	Down  bool
	Skips int64
	Downs int64
}

// counters are the atomically updated part of TierStats.
type counters struct {
	hits, misses, puts, errors, corruptions, collisions, evictions, bytesRead, bytesWrite atomic.Int64
}

func (c *counters) snapshot(s *TierStats) {
	s.Hits = c.hits.Load()
	s.Misses = c.misses.Load()
	s.Puts = c.puts.Load()
	s.Errors = c.errors.Load()
	s.Corruptions = c.corruptions.Load()
	s.Collisions = c.collisions.Load()
	s.Evictions = c.evictions.Load()
	s.BytesRead = c.bytesRead.Load()
	s.BytesWrite = c.bytesWrite.Load()
}

// verify decodes raw and checks it is the blob for key and want, counting the
// outcome. A corrupt blob is returned as *CorruptError, a collision as
// ErrCollision; drop is true when the stored entry must be deleted.
func (c *counters) verify(tier string, raw []byte, key fingerprint.Key, want fingerprint.Check) (b *Blob, drop bool, err error) {
	b, err = Decode(raw)
	if err == nil && b.Key != key {
		err = corrupt("blob holds key %s", b.Key)
	}
	if err != nil {
		var ce *CorruptError
		if errors.As(err, &ce) {
			ce.Tier, ce.Key = tier, key
		}
		c.corruptions.Add(1)
		c.misses.Add(1)
		return nil, true, err
	}
	if err := fingerprint.Verify(key, b.Check, want); err != nil {
		c.collisions.Add(1)
		c.misses.Add(1)
		return nil, false, fmt.Errorf("%w: %s: %w", ErrCollision, tier, err)
	}
	c.hits.Add(1)
	c.bytesRead.Add(int64(len(raw)))
	return b, false, nil
}

// Opener opens one tier from its parsed URL.
type Opener func(u *url.URL) (Store, error)

var (
	registryMu sync.RWMutex
	registry   = map[string]Opener{}
)

// Register makes a tier available to Open under scheme. It panics on a
// duplicate registration, a programming error caught at init.
func Register(scheme string, open Opener) {
	registryMu.Lock()
	defer registryMu.Unlock()
	if _, dup := registry[scheme]; dup {
		panic("kvstore: scheme registered twice: " + scheme)
	}
	registry[scheme] = open
}

// Schemes returns the registered schemes, sorted.
func Schemes() []string {
	registryMu.RLock()
	defer registryMu.RUnlock()
	s := make([]string, 0, len(registry))
	for k := range registry {
		s = append(s, k)
	}
	sort.Strings(s)
	return s
}

// Open opens the store described by spec: one URL, or several separated by
// commas for a tiered store, fastest first. A single URL opens that tier
// alone.
func Open(spec string) (Store, error) {
	parts := joinClusterHosts(strings.Split(spec, ","))
	var tiers []Store
	closeAll := func() {
		for _, t := range tiers {
			t.Close()
		}
	}
	for _, p := range parts {
		p = strings.TrimSpace(p)
		if p == "" {
			closeAll()
			return nil, fmt.Errorf("%w: empty URL in %q", ErrBadURL, spec)
		}
		u, err := url.Parse(p)
		if err != nil {
			closeAll()
			return nil, fmt.Errorf("%w: %v", ErrBadURL, err)
		}
		registryMu.RLock()
		open, ok := registry[u.Scheme]
		registryMu.RUnlock()
		if !ok {
			closeAll()
			return nil, fmt.Errorf("%w: %q: unknown scheme %q (have %s)", ErrBadURL, u.Redacted(), u.Scheme, strings.Join(Schemes(), ", "))
		}
		t, err := open(u)
		if err != nil {
			closeAll()
			return nil, fmt.Errorf("%w: %q: %w", ErrBadURL, u.Redacted(), err)
		}
		tiers = append(tiers, t)
	}
	if len(tiers) == 1 {
		return tiers[0], nil
	}
	return NewTiered(tiers...), nil
}

// query reads a URL's parameters, remembering which were used so that
// unknown ones (typos) are reported.
type query struct {
	v    url.Values
	used map[string]bool
}

func newQuery(u *url.URL) (*query, error) {
	v, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		return nil, err
	}
	return &query{v: v, used: map[string]bool{}}, nil
}

func (q *query) str(name, def string) string {
	q.used[name] = true
	if s := q.v.Get(name); s != "" {
		return s
	}
	return def
}

func (q *query) size(name string, def int64) (int64, error) {
	s := q.str(name, "")
	if s == "" {
		return def, nil
	}
	n, err := ParseSize(s)
	if err != nil {
		return 0, fmt.Errorf("parameter %s: %w", name, err)
	}
	return n, nil
}

func (q *query) bool(name string, def bool) (bool, error) {
	s := q.str(name, "")
	if s == "" {
		return def, nil
	}
	b, err := strconv.ParseBool(s)
	if err != nil {
		return false, fmt.Errorf("parameter %s: %q is not a boolean", name, s)
	}
	return b, nil
}

// unknown returns an error naming parameters nobody asked for, except those
// in pass (handed on to another parser).
func (q *query) unknown(pass ...string) error {
	var bad []string
	for k := range q.v {
		if !q.used[k] && !contains(pass, k) {
			bad = append(bad, k)
		}
	}
	if len(bad) > 0 {
		sort.Strings(bad)
		return fmt.Errorf("unknown parameter(s) %s", strings.Join(bad, ", "))
	}
	return nil
}

func contains(s []string, x string) bool {
	for _, v := range s {
		if v == x {
			return true
		}
	}
	return false
}

// ParseSize parses a byte size: an integer or decimal with an optional unit,
// B, KB/MB/GB/TB (powers of 1000) or KiB/MiB/GiB/TiB (powers of 1024), e.g.
// "2GiB", "512MiB", "1.5GB", "4096".
func ParseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	i := 0
	for i < len(t) && (t[i] >= '0' && t[i] <= '9' || t[i] == '.') {
		i++
	}
	num, unit := t[:i], strings.TrimSpace(t[i:])
	mult := map[string]float64{
		"": 1, "B": 1,
		"KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12,
		"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40,
		"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40,
	}[unit]
	if num == "" || mult == 0 {
		return 0, fmt.Errorf("size %q: want a number with an optional unit (B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)", s)
	}
	f, err := strconv.ParseFloat(num, 64)
	if err != nil {
		return 0, fmt.Errorf("size %q: %v", s, err)
	}
	v := f * mult
	if v < 0 || v >= 1<<62 {
		return 0, fmt.Errorf("size %q out of range", s)
	}
	return int64(v), nil
}
