package kvstore

import (
	"container/list"
	"context"
	"fmt"
	"math"
	"net/url"
	"sync"
	"time"

	"github.com/fusionrag/fusionrag/fingerprint"
)

func init() {
	Register("mem", func(u *url.URL) (Store, error) {
		if u.Host != "" || (u.Path != "" && u.Path != "/") {
			return nil, fmt.Errorf("mem takes no host or path (mem://?max=2GiB)")
		}
		q, err := newQuery(u)
		if err != nil {
			return nil, err
		}
		var c MemConfig
		if c.MaxBytes, err = q.size("max", 0); err != nil {
			return nil, err
		}
		c.Policy = q.str("policy", "")
		if err := q.unknown(); err != nil {
			return nil, err
		}
		m, err := NewMem(c)
		if err != nil {
			return nil, err
		}
		m.url = u.Redacted()
		return m, nil
	})
}

// MemConfig configures a memory tier.
type MemConfig struct {
	// MaxBytes is the budget, overhead included (see memEntryOverhead).
	// Default 1 GiB.
	MaxBytes int64
	// Policy picks eviction victims: "lru" (default) evicts the least
	// recently used; "heat" evicts the coldest of a sample of entries, heat
	// being an access count decaying with HalfLife.
	Policy string
	// HalfLife of heat; default 10 minutes.
	HalfLife time.Duration
}

// memEntryOverhead approximates the heap an entry costs besides its bytes:
// the entry struct (~80 B), its list element (48 B), its map slot (~40 B).
const memEntryOverhead = 176

// memAccount is what an entry of n bytes counts against the budget: n
// rounded up to the allocator's granularity (8 KiB pages for large objects,
// 16 B for small ones) plus memEntryOverhead.
func memAccount(n int) int64 {
	r := int64(n)
	if r > 32<<10 {
		r = (r + 8191) &^ 8191
	} else {
		r = (r + 15) &^ 15
	}
	return r + memEntryOverhead
}

// Mem is the memory tier. Blobs it returns are read-only views of its
// buffers (Release is a no-op); replacing or evicting an entry never changes
// a buffer already handed out.
type Mem struct {
	cfg   MemConfig
	url   string
	heat  bool
	decay float64 // per nanosecond, ln2/halfLife

	mu     sync.Mutex
	items  map[fingerprint.Key]*memEntry
	lru    list.List // front: most recent
	used   int64
	closed bool
	counters
}

type memEntry struct {
	key  fingerprint.Key
	raw  []byte
	cost int64
	elem *list.Element
	heat float64
	last int64 // unix nanos of the last heat update
}

// NewMem returns a memory tier; it validates c and fills defaults.
func NewMem(c MemConfig) (*Mem, error) {
	if c.MaxBytes == 0 {
		c.MaxBytes = 1 << 30
	}
	if c.MaxBytes < 0 {
		return nil, fmt.Errorf("mem: negative max %d", c.MaxBytes)
	}
	if c.Policy == "" {
		c.Policy = "lru"
	}
	if c.Policy != "lru" && c.Policy != "heat" {
		return nil, fmt.Errorf("mem: unknown policy %q (want lru or heat)", c.Policy)
	}
	if c.HalfLife == 0 {
		c.HalfLife = 10 * time.Minute
	}
	if c.HalfLife < 0 {
		return nil, fmt.Errorf("mem: negative half-life %v", c.HalfLife)
	}
	return &Mem{
		cfg:   c,
		url:   fmt.Sprintf("mem://?max=%d&policy=%s", c.MaxBytes, c.Policy),
		heat:  c.Policy == "heat",
		decay: math.Ln2 / float64(c.HalfLife),
		items: map[fingerprint.Key]*memEntry{},
	}, nil
}

// touch records an access; mu held.
func (m *Mem) touch(e *memEntry, now int64) {
	m.lru.MoveToFront(e.elem)
	if m.heat {
		e.heat = e.heat*math.Exp(-m.decay*float64(now-e.last)) + 1
		e.last = now
	}
}

// Get implements Store.
func (m *Mem) Get(ctx context.Context, key fingerprint.Key, want fingerprint.Check) (*Blob, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil, ErrClosed
	}
	e, ok := m.items[key]
	if ok {
		m.touch(e, time.Now().UnixNano())
	}
	m.mu.Unlock()
	if !ok {
		m.misses.Add(1)
		return nil, ErrNotFound
	}
	b, drop, err := m.verify("mem", e.raw, key, want)
	if drop {
		m.mu.Lock()
		if cur, ok := m.items[key]; ok && cur == e {
			m.remove(e)
		}
		m.mu.Unlock()
	}
	return b, err
}

// Put implements Store. It copies the blob's bytes.
func (m *Mem) Put(ctx context.Context, b *Blob) error {
	raw, err := b.Encode()
	if err != nil {
		return err
	}
	return m.put(ctx, b.Key, append([]byte(nil), raw...))
}

// adopt stores raw, an encoded blob nobody will modify, without copying.
func (m *Mem) adopt(ctx context.Context, b *Blob) error {
	raw, err := b.Encode()
	if err != nil {
		return err
	}
	return m.put(ctx, b.Key, raw)
}

func (m *Mem) put(ctx context.Context, key fingerprint.Key, raw []byte) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	cost := memAccount(len(raw))
	if cost > m.cfg.MaxBytes {
		return fmt.Errorf("%w: %d bytes (with overhead %d) > max %d", ErrTooLarge, len(raw), cost, m.cfg.MaxBytes)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return ErrClosed
	}
	if old, ok := m.items[key]; ok {
		m.remove(old)
	}
	for m.used+cost > m.cfg.MaxBytes {
		m.evictOne()
	}
	now := time.Now().UnixNano()
	e := &memEntry{key: key, raw: raw, cost: cost, heat: 1, last: now}
	e.elem = m.lru.PushFront(e)
	m.items[key] = e
	m.used += cost
	m.puts.Add(1)
	m.bytesWrite.Add(int64(len(raw)))
	return nil
}

// remove drops e; mu held.
func (m *Mem) remove(e *memEntry) {
	m.lru.Remove(e.elem)
	delete(m.items, e.key)
	m.used -= e.cost
}

// heatSample is how many entries the heat policy compares per eviction.
const heatSample = 8

// evictOne drops one victim; mu held and at least one entry present (an
// entry larger than the budget is refused before).
func (m *Mem) evictOne() {
	var victim *memEntry
	if m.heat {
		now := time.Now().UnixNano()
		best := math.Inf(1)
		i := 0
		for _, e := range m.items { // map order is randomised: a cheap sample
			h := e.heat * math.Exp(-m.decay*float64(now-e.last))
			if h < best {
				best, victim = h, e
			}
			if i++; i == heatSample {
				break
			}
		}
	} else {
		victim = m.lru.Back().Value.(*memEntry)
	}
	m.remove(victim)
	m.evictions.Add(1)
}

// Has implements Store.
func (m *Mem) Has(ctx context.Context, key fingerprint.Key) (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return false, ErrClosed
	}
	_, ok := m.items[key]
	return ok, nil
}

// Delete implements Store.
func (m *Mem) Delete(ctx context.Context, key fingerprint.Key) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return ErrClosed
	}
	if e, ok := m.items[key]; ok {
		m.remove(e)
	}
	return nil
}

// Stats implements Store.
func (m *Mem) Stats() []TierStats {
	s := TierStats{Tier: "mem", URL: m.url, MaxBytes: m.cfg.MaxBytes}
	m.counters.snapshot(&s)
	m.mu.Lock()
	s.Entries, s.Bytes = int64(len(m.items)), m.used
	m.mu.Unlock()
	return []TierStats{s}
}

// Close implements Store: it drops every entry.
func (m *Mem) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.closed = true
	m.items = map[fingerprint.Key]*memEntry{}
	m.lru.Init()
	m.used = 0
	return nil
}
