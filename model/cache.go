package model

import "fmt"

// Cache holds, per layer, K *before RoPE* and V of a set of tokens, each with
// its position. Because K is stored unrotated, moving entries to other
// positions (Shift, or editing Pos) is exact: RoPE is applied when a Forward
// uses them.
//
// Layout: K[l], V[l] are [Len, KVHeads, HeadDim] row-major fp32 for layer l
// in [0, Layers); Pos is [Len]. Positions need not be contiguous nor sorted;
// entry order is the key order Forward reports attention in.
type Cache struct {
	Layers, KVHeads, HeadDim int
	Pos                      []int32
	K, V                     [][]float32
}

// NewCache returns an empty cache shaped for cfg with room for capacity
// tokens.
func NewCache(cfg Config, capacity int) *Cache {
	c := &Cache{Layers: cfg.Layers, KVHeads: cfg.KVHeads, HeadDim: cfg.HeadDim}
	capacity = max(capacity, 0)
	c.Pos = make([]int32, 0, capacity)
	c.K = make([][]float32, cfg.Layers)
	c.V = make([][]float32, cfg.Layers)
	stride := cfg.KVDim()
	for l := range cfg.Layers {
		c.K[l] = make([]float32, 0, capacity*stride)
		c.V[l] = make([]float32, 0, capacity*stride)
	}
	return c
}

// Len is the number of tokens held.
func (c *Cache) Len() int {
	if c == nil {
		return 0
	}
	return len(c.Pos)
}

func (c *Cache) stride() int { return c.KVHeads * c.HeadDim }

// Append copies o's entries after c's. The shapes must match (a broken
// invariant otherwise: panic).
func (c *Cache) Append(o *Cache) {
	if o.Len() == 0 {
		return
	}
	if c.Layers != o.Layers || c.KVHeads != o.KVHeads || c.HeadDim != o.HeadDim {
		panic(fmt.Sprintf("model: Cache.Append shape mismatch: [%d,%d,%d] vs [%d,%d,%d]",
			c.Layers, c.KVHeads, c.HeadDim, o.Layers, o.KVHeads, o.HeadDim))
	}
	if c.K == nil {
		c.K = make([][]float32, c.Layers)
		c.V = make([][]float32, c.Layers)
	}
	c.Pos = append(c.Pos, o.Pos...)
	for l := range c.Layers {
		c.K[l] = append(c.K[l], o.K[l]...)
		c.V[l] = append(c.V[l], o.V[l]...)
	}
}

// Slice returns a view of entries [begin, end): it shares memory with c, but
// appending to the view never overwrites c (capacities are clipped).
func (c *Cache) Slice(begin, end int) *Cache {
	if begin < 0 || end > c.Len() || begin > end {
		panic(fmt.Sprintf("model: Cache.Slice [%d, %d) out of range [0, %d)", begin, end, c.Len()))
	}
	s := &Cache{Layers: c.Layers, KVHeads: c.KVHeads, HeadDim: c.HeadDim}
	st := c.stride()
	s.Pos = c.Pos[begin:end:end]
	s.K = make([][]float32, c.Layers)
	s.V = make([][]float32, c.Layers)
	for l := range c.Layers {
		s.K[l] = c.K[l][begin*st : end*st : end*st]
		s.V[l] = c.V[l][begin*st : end*st : end*st]
	}
	return s
}

// Clone returns a deep copy.
func (c *Cache) Clone() *Cache {
	n := &Cache{Layers: c.Layers, KVHeads: c.KVHeads, HeadDim: c.HeadDim}
	n.Pos = append([]int32(nil), c.Pos...)
	n.K = make([][]float32, c.Layers)
	n.V = make([][]float32, c.Layers)
	for l := range c.Layers {
		n.K[l] = append([]float32(nil), c.K[l]...)
		n.V[l] = append([]float32(nil), c.V[l]...)
	}
	return n
}

// Shift adds delta to every position. Exact: K is stored before RoPE.
func (c *Cache) Shift(delta int32) {
	for i := range c.Pos {
		c.Pos[i] += delta
	}
}

// check reports whether the cache is consistent with cfg.
func (c *Cache) check(cfg Config) error {
	if c == nil {
		return nil
	}
	if c.Layers != cfg.Layers || c.KVHeads != cfg.KVHeads || c.HeadDim != cfg.HeadDim {
		return fmt.Errorf("model: cache shape [layers %d, kv heads %d, head dim %d] does not match model [%d, %d, %d]",
			c.Layers, c.KVHeads, c.HeadDim, cfg.Layers, cfg.KVHeads, cfg.HeadDim)
	}
	n := len(c.Pos)
	if len(c.K) != c.Layers || len(c.V) != c.Layers {
		return fmt.Errorf("model: cache has %d K and %d V layers, want %d", len(c.K), len(c.V), c.Layers)
	}
	for l := range c.Layers {
		if len(c.K[l]) != n*c.stride() || len(c.V[l]) != n*c.stride() {
			return fmt.Errorf("model: cache layer %d holds %d K / %d V floats, want %d (Len %d)", l, len(c.K[l]), len(c.V[l]), n*c.stride(), n)
		}
	}
	for i, p := range c.Pos {
		if p < 0 || int(p) >= cfg.MaxPositions {
			return fmt.Errorf("%w: cache entry %d at position %d, model limit [0, %d)", ErrPosition, i, p, cfg.MaxPositions)
		}
	}
	return nil
}
