package cuda

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sort"
	"sync"

	"github.com/fusionrag/fusionrag/model"
)

// ErrClosed is returned by calls on a closed Runtime or freed Cache.
var ErrClosed = errors.New("cuda: runtime closed")

// Runtime holds a model's weights on a device and runs forward passes over
// device-resident KV caches. Methods are safe for concurrent use; passes are
// serialised (they share scratch memory and one stream).
type Runtime struct {
	o   ops
	cfg model.Config
	qkv int // fused QKV width: QDim + 2*KVDim

	mu      sync.Mutex
	closed  bool
	freq    buf // f64 [HeadDim/2]
	emb     buf // half [Vocab, Dim]
	cls     buf // half [Vocab, Dim]; emb when tied
	norm    buf // f32 [Dim]
	layers  []layerBufs
	owned   []buf // everything to free on Close
	scratch map[string]buf
}

// layerBufs are one decoder layer's device weights, fused for fewer
// launches: Wqkv = [Wq; Wk; Wv] so one GEMM gives q|k|v per row, W13 =
// [W1 (gate); W3 (up)] so one GEMM gives gate|up per row.
type layerBufs struct {
	attnNorm buf // f32 [Dim]
	wqkv     buf // half [QDim+2*KVDim, Dim]
	bqkv     buf // f32 [QDim+2*KVDim], invalid without QKV bias
	wo       buf // half [Dim, QDim]
	ffnNorm  buf // f32 [Dim]
	w13      buf // half [2*HiddenDim, Dim]
	w2       buf // half [Dim, HiddenDim]
}

// checkConfig refuses configs the kernels do not handle.
func checkConfig(cfg model.Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	if cfg.HeadDim > maxHeadDim {
		return fmt.Errorf("%w: cuda backend head dim %d > %d", model.ErrUnsupported, cfg.HeadDim, maxHeadDim)
	}
	return nil
}

func newRuntimeShell(o ops, cfg model.Config) (*Runtime, error) {
	if err := checkConfig(cfg); err != nil {
		return nil, err
	}
	r := &Runtime{o: o, cfg: cfg, qkv: cfg.QDim() + 2*cfg.KVDim(), scratch: map[string]buf{}}
	freq := ropeFreq(cfg)
	var err error
	if r.freq, err = r.allocOwned(elemF64, len(freq)); err != nil {
		return nil, err
	}
	if err := o.upload(r.freq, freq); err != nil {
		return nil, err
	}
	return r, nil
}

// newRuntime uploads named fp32 weights (Hugging Face names, as
// model.NamedWeight) converted to o's DType.
func newRuntime(o ops, cfg model.Config, weights []model.NamedWeight) (_ *Runtime, err error) {
	defer o.enter()()
	r, err := newRuntimeShell(o, cfg)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			r.release()
		}
	}()
	byName := make(map[string]model.NamedWeight, len(weights))
	for _, w := range weights {
		byName[w.Name] = w
	}
	c := cfg
	get := func(name string, rows, cols int) ([]float32, error) {
		w, ok := byName[name]
		if !ok {
			return nil, fmt.Errorf("%w: cuda backend: weight %s missing", model.ErrFormat, name)
		}
		if len(w.Data) != rows*cols {
			return nil, fmt.Errorf("%w: cuda backend: weight %s holds %d values, want [%d, %d]", model.ErrFormat, name, len(w.Data), rows, cols)
		}
		return w.Data, nil
	}
	half := func(data ...[]float32) (buf, error) {
		n := 0
		for _, d := range data {
			n += len(d)
		}
		b, err := r.allocOwned(elemHalf, n)
		if err != nil {
			return buf{}, err
		}
		at := 0
		for _, d := range data {
			if err := o.upload(b.view(at, len(d)), o.dtype().encode(d)); err != nil {
				return buf{}, err
			}
			at += len(d)
		}
		return b, nil
	}
	f32 := func(data ...[]float32) (buf, error) {
		var all []float32
		for _, d := range data {
			all = append(all, d...)
		}
		b, err := r.allocOwned(elemF32, len(all))
		if err != nil {
			return buf{}, err
		}
		return b, o.upload(b, all)
	}
	emb, err := get("model.embed_tokens.weight", c.Vocab, c.Dim)
	if err != nil {
		return nil, err
	}
	if r.emb, err = half(emb); err != nil {
		return nil, err
	}
	r.cls = r.emb
	if !c.TiedEmbeddings {
		cls, err := get("lm_head.weight", c.Vocab, c.Dim)
		if err != nil {
			return nil, err
		}
		if r.cls, err = half(cls); err != nil {
			return nil, err
		}
	}
	norm, err := get("model.norm.weight", 1, c.Dim)
	if err != nil {
		return nil, err
	}
	if r.norm, err = f32(norm); err != nil {
		return nil, err
	}
	r.layers = make([]layerBufs, c.Layers)
	for l := range c.Layers {
		p := fmt.Sprintf("model.layers.%d.", l)
		var ws [10][]float32
		specs := []struct {
			name       string
			rows, cols int
		}{
			{"input_layernorm.weight", 1, c.Dim},
			{"self_attn.q_proj.weight", c.QDim(), c.Dim},
			{"self_attn.k_proj.weight", c.KVDim(), c.Dim},
			{"self_attn.v_proj.weight", c.KVDim(), c.Dim},
			{"self_attn.o_proj.weight", c.Dim, c.QDim()},
			{"post_attention_layernorm.weight", 1, c.Dim},
			{"mlp.gate_proj.weight", c.HiddenDim, c.Dim},
			{"mlp.up_proj.weight", c.HiddenDim, c.Dim},
			{"mlp.down_proj.weight", c.Dim, c.HiddenDim},
		}
		for i, s := range specs {
			if ws[i], err = get(p+s.name, s.rows, s.cols); err != nil {
				return nil, err
			}
		}
		lb := &r.layers[l]
		if lb.attnNorm, err = f32(ws[0]); err != nil {
			return nil, err
		}
		if lb.wqkv, err = half(ws[1], ws[2], ws[3]); err != nil {
			return nil, err
		}
		if lb.wo, err = half(ws[4]); err != nil {
			return nil, err
		}
		if lb.ffnNorm, err = f32(ws[5]); err != nil {
			return nil, err
		}
		if lb.w13, err = half(ws[6], ws[7]); err != nil {
			return nil, err
		}
		if lb.w2, err = half(ws[8]); err != nil {
			return nil, err
		}
		if c.QKVBias {
			var bs [3][]float32
			for i, s := range []struct {
				name string
				n    int
			}{{"self_attn.q_proj.bias", c.QDim()}, {"self_attn.k_proj.bias", c.KVDim()}, {"self_attn.v_proj.bias", c.KVDim()}} {
				if bs[i], err = get(p+s.name, 1, s.n); err != nil {
					return nil, err
				}
			}
			if lb.bqkv, err = f32(bs[0], bs[1], bs[2]); err != nil {
				return nil, err
			}
		}
	}
	return r, o.sync()
}

// newRandomRuntime builds a model of cfg's shape with deterministic uniform
// weights generated on the device (no host copy: an 8B-parameter model
// initialises in well under a second). Each matrix of input width k is
// uniform in ±sqrt(3/k) (variance 1/k), norms are 1, biases 0.1-scaled.
func newRandomRuntime(o ops, cfg model.Config, seed uint64) (_ *Runtime, err error) {
	defer o.enter()()
	r, err := newRuntimeShell(o, cfg)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			r.release()
		}
	}()
	c := cfg
	next := seed
	rnd := func(kind elem, n, k int) (buf, error) {
		b, err := r.allocOwned(kind, n)
		if err != nil {
			return buf{}, err
		}
		next++
		return b, o.fillRandom(b, next, float32(math.Sqrt(3/float64(k))))
	}
	ones := func() (buf, error) {
		b, err := r.allocOwned(elemF32, c.Dim)
		if err != nil {
			return buf{}, err
		}
		v := make([]float32, c.Dim)
		for i := range v {
			v[i] = 1
		}
		return b, o.upload(b, v)
	}
	if r.emb, err = rnd(elemHalf, c.Vocab*c.Dim, 3); err != nil { // embeddings uniform ±1
		return nil, err
	}
	r.cls = r.emb
	if !c.TiedEmbeddings {
		if r.cls, err = rnd(elemHalf, c.Vocab*c.Dim, c.Dim); err != nil {
			return nil, err
		}
	}
	if r.norm, err = ones(); err != nil {
		return nil, err
	}
	r.layers = make([]layerBufs, c.Layers)
	for l := range r.layers {
		lb := &r.layers[l]
		steps := []struct {
			dst        *buf
			kind       elem
			n, k       int
			normWeight bool
		}{
			{&lb.attnNorm, elemF32, c.Dim, 0, true},
			{&lb.wqkv, elemHalf, r.qkv * c.Dim, c.Dim, false},
			{&lb.wo, elemHalf, c.Dim * c.QDim(), c.QDim(), false},
			{&lb.ffnNorm, elemF32, c.Dim, 0, true},
			{&lb.w13, elemHalf, 2 * c.HiddenDim * c.Dim, c.Dim, false},
			{&lb.w2, elemHalf, c.Dim * c.HiddenDim, c.HiddenDim, false},
		}
		if c.QKVBias {
			steps = append(steps, struct {
				dst        *buf
				kind       elem
				n, k       int
				normWeight bool
			}{&lb.bqkv, elemF32, r.qkv, 300, false})
		}
		for _, s := range steps {
			if s.normWeight {
				*s.dst, err = ones()
			} else {
				*s.dst, err = rnd(s.kind, s.n, s.k)
			}
			if err != nil {
				return nil, err
			}
		}
	}
	return r, o.sync()
}

// ropeFreq is package model's inverse-frequency list: theta^-(2i/HeadDim)
// in float64, with llama3 scaling.
func ropeFreq(c model.Config) []float64 {
	half := c.HeadDim / 2
	freq := make([]float64, half)
	for i := range half {
		freq[i] = 1 / math.Pow(c.RopeTheta, float64(2*i)/float64(c.HeadDim))
	}
	if s := c.RopeScaling; s != nil && s.Type == "llama3" {
		old := float64(s.OriginalMaxPositions)
		lowWavelen := old / s.LowFreqFactor
		highWavelen := old / s.HighFreqFactor
		for i, f := range freq {
			wavelen := 2 * math.Pi / f
			switch {
			case wavelen < highWavelen:
			case wavelen > lowWavelen:
				freq[i] = f / s.Factor
			default:
				smooth := (old/wavelen - s.LowFreqFactor) / (s.HighFreqFactor - s.LowFreqFactor)
				freq[i] = (1-smooth)*f/s.Factor + smooth*f
			}
		}
	}
	return freq
}

func (r *Runtime) allocOwned(kind elem, n int) (buf, error) {
	b, err := r.o.alloc(kind, n)
	if err != nil {
		return buf{}, err
	}
	r.owned = append(r.owned, b)
	return b, nil
}

// scratchBuf returns a grow-only scratch buffer of at least n elements,
// viewed to exactly n.
func (r *Runtime) scratchBuf(name string, kind elem, n int) (buf, error) {
	b, ok := r.scratch[name]
	if !ok || b.n < n {
		if ok {
			r.o.free(b)
		}
		nb, err := r.o.alloc(kind, max(n, b.n*5/4))
		if err != nil {
			delete(r.scratch, name)
			return buf{}, err
		}
		r.scratch[name] = nb
		b = nb
	}
	return b.view(0, n), nil
}

// Config is the model shape.
func (r *Runtime) Config() model.Config { return r.cfg }

// AttentionKernel names the attention kernel in use: the tensor-core one
// for bf16/f16 with head dim 64 or 128 (when it passed its start-up check),
// else the SIMT one; "go" on hostOps.
func (r *Runtime) AttentionKernel() string {
	if k, ok := r.o.(interface{ attentionKernel(hd int) string }); ok {
		return k.attentionKernel(r.cfg.HeadDim)
	}
	return "go"
}

// DType is the storage type of weights and KV.
func (r *Runtime) DType() DType { return r.o.dtype() }

func (r *Runtime) release() {
	for _, b := range r.owned {
		r.o.free(b)
	}
	for _, b := range r.scratch {
		r.o.free(b)
	}
	r.owned, r.scratch = nil, map[string]buf{}
}

// Close frees the device memory of the weights and scratch buffers. Caches
// must be freed by their owners.
func (r *Runtime) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil
	}
	defer r.o.enter()()
	r.closed = true
	r.release()
	return r.o.close()
}

// Cache is a KV cache in device memory: per layer, K before RoPE and V of
// Len() tokens, [Len, KVHeads, HeadDim] in the runtime's DType, each with a
// position (kept on the host). It is what model.Cache is, on the device.
type Cache struct {
	r    *Runtime
	pos  []int32
	k, v []buf // per layer, half [capacity, KVDim]
	cap  int
}

// NewCache allocates an empty device cache with room for capacity tokens
// (it grows when needed).
func (r *Runtime) NewCache(capacity int) (*Cache, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil, ErrClosed
	}
	defer r.o.enter()()
	return r.newCache(capacity)
}

func (r *Runtime) newCache(capacity int) (*Cache, error) {
	capacity = max(capacity, 16)
	c := &Cache{r: r, cap: capacity, k: make([]buf, r.cfg.Layers), v: make([]buf, r.cfg.Layers)}
	for l := range r.cfg.Layers {
		var err error
		if c.k[l], err = r.o.alloc(elemHalf, capacity*r.cfg.KVDim()); err == nil {
			c.v[l], err = r.o.alloc(elemHalf, capacity*r.cfg.KVDim())
		}
		if err != nil {
			c.free()
			return nil, err
		}
	}
	return c, nil
}

// Len is the number of tokens held.
func (c *Cache) Len() int {
	if c == nil {
		return 0
	}
	return len(c.pos)
}

// Pos returns a copy of the positions, [Len].
func (c *Cache) Pos() []int32 { return append([]int32(nil), c.pos...) }

// SetPos moves the entries to new positions (exact: K is stored pre-RoPE).
// len(pos) must be Len().
func (c *Cache) SetPos(pos []int32) error {
	if len(pos) != len(c.pos) {
		return fmt.Errorf("cuda: SetPos with %d positions for %d entries", len(pos), len(c.pos))
	}
	for i, p := range pos {
		if p < 0 || int(p) >= c.r.cfg.MaxPositions {
			return fmt.Errorf("%w: cache entry %d at position %d, model limit [0, %d)", model.ErrPosition, i, p, c.r.cfg.MaxPositions)
		}
	}
	copy(c.pos, pos)
	return nil
}

// Free releases the device memory. The cache must not be used afterwards.
func (c *Cache) Free() {
	c.r.mu.Lock()
	defer c.r.mu.Unlock()
	defer c.r.o.enter()()
	c.free()
}

func (c *Cache) free() {
	for l := range c.k {
		if c.k[l].valid() {
			c.r.o.free(c.k[l])
		}
		if c.v[l].valid() {
			c.r.o.free(c.v[l])
		}
	}
	c.k, c.v, c.pos, c.cap = nil, nil, nil, 0
}

// reserve grows the capacity to at least n tokens, keeping the contents.
func (c *Cache) reserve(n int) error {
	if n <= c.cap {
		return nil
	}
	if c.k == nil {
		return ErrClosed
	}
	nc := max(n, c.cap*2)
	kvd := c.r.cfg.KVDim()
	used := len(c.pos) * kvd
	for l := range c.k {
		for _, p := range []*buf{&c.k[l], &c.v[l]} {
			nb, err := c.r.o.alloc(elemHalf, nc*kvd)
			if err != nil {
				return err
			}
			if err := c.r.o.copy(nb.view(0, used), p.view(0, used)); err != nil {
				c.r.o.free(nb)
				return err
			}
			c.r.o.free(*p)
			*p = nb
		}
	}
	c.cap = nc
	return nil
}

// Append copies o's entries after c's on the device (assembling chunk
// caches back to back); o is unchanged. Both must belong to one runtime.
func (c *Cache) Append(o *Cache) error {
	if o.r != c.r {
		return fmt.Errorf("cuda: Append of a cache from another runtime")
	}
	r := c.r
	r.mu.Lock()
	defer r.mu.Unlock()
	if c.k == nil || o.k == nil {
		return ErrClosed
	}
	defer r.o.enter()()
	n, m, kvd := len(c.pos), len(o.pos), r.cfg.KVDim()
	if err := c.reserve(n + m); err != nil {
		return err
	}
	for l := range c.k {
		if err := r.o.copy(c.k[l].view(n*kvd, m*kvd), o.k[l].view(0, m*kvd)); err != nil {
			return err
		}
		if err := r.o.copy(c.v[l].view(n*kvd, m*kvd), o.v[l].view(0, m*kvd)); err != nil {
			return err
		}
	}
	c.pos = append(c.pos, o.pos...)
	return nil
}

// Clone returns a device copy of entries [begin, end) of c (the whole cache
// for Clone(0, c.Len())).
func (c *Cache) Clone(begin, end int) (*Cache, error) {
	r := c.r
	r.mu.Lock()
	defer r.mu.Unlock()
	if c.k == nil {
		return nil, ErrClosed
	}
	if begin < 0 || end > len(c.pos) || begin > end {
		return nil, fmt.Errorf("cuda: Clone [%d, %d) of a cache of %d", begin, end, len(c.pos))
	}
	defer r.o.enter()()
	n, kvd := end-begin, r.cfg.KVDim()
	d, err := r.newCache(n)
	if err != nil {
		return nil, err
	}
	for l := range c.k {
		if err := r.o.copy(d.k[l].view(0, n*kvd), c.k[l].view(begin*kvd, n*kvd)); err != nil {
			d.free()
			return nil, err
		}
		if err := r.o.copy(d.v[l].view(0, n*kvd), c.v[l].view(begin*kvd, n*kvd)); err != nil {
			d.free()
			return nil, err
		}
	}
	d.pos = append([]int32(nil), c.pos[begin:end]...)
	return d, nil
}

// Upload copies a host cache (fp32, K pre-RoPE) to the device, rounding to
// the runtime's DType.
func (r *Runtime) Upload(hc *model.Cache) (*Cache, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil, ErrClosed
	}
	defer r.o.enter()()
	cfg := r.cfg
	if hc.Layers != cfg.Layers || hc.KVHeads != cfg.KVHeads || hc.HeadDim != cfg.HeadDim {
		return nil, fmt.Errorf("cuda: cache shape [%d, %d, %d] does not match model [%d, %d, %d]",
			hc.Layers, hc.KVHeads, hc.HeadDim, cfg.Layers, cfg.KVHeads, cfg.HeadDim)
	}
	n, kvd := hc.Len(), cfg.KVDim()
	if len(hc.K) != cfg.Layers || len(hc.V) != cfg.Layers {
		return nil, fmt.Errorf("cuda: cache has %d K and %d V layers, want %d", len(hc.K), len(hc.V), cfg.Layers)
	}
	for l := range cfg.Layers {
		if len(hc.K[l]) != n*kvd || len(hc.V[l]) != n*kvd {
			return nil, fmt.Errorf("cuda: cache layer %d holds %d K / %d V values, want %d", l, len(hc.K[l]), len(hc.V[l]), n*kvd)
		}
	}
	c, err := r.newCache(n)
	if err != nil {
		return nil, err
	}
	for i, p := range hc.Pos {
		if p < 0 || int(p) >= cfg.MaxPositions {
			c.free()
			return nil, fmt.Errorf("%w: cache entry %d at position %d, model limit [0, %d)", model.ErrPosition, i, p, cfg.MaxPositions)
		}
	}
	c.pos = append([]int32(nil), hc.Pos...)
	for l := range cfg.Layers {
		if n == 0 {
			break
		}
		if err := r.o.upload(c.k[l].view(0, n*kvd), r.o.dtype().encode(hc.K[l])); err != nil {
			c.free()
			return nil, err
		}
		if err := r.o.upload(c.v[l].view(0, n*kvd), r.o.dtype().encode(hc.V[l])); err != nil {
			c.free()
			return nil, err
		}
	}
	return c, r.o.sync()
}

// Download copies the cache to the host as fp32.
func (c *Cache) Download() (*model.Cache, error) {
	r := c.r
	r.mu.Lock()
	defer r.mu.Unlock()
	defer r.o.enter()()
	return c.download()
}

func (c *Cache) download() (*model.Cache, error) {
	r := c.r
	cfg := r.cfg
	n, kvd := len(c.pos), cfg.KVDim()
	hc := model.NewCache(cfg, n)
	hc.Pos = append(hc.Pos, c.pos...)
	for l := range cfg.Layers {
		for _, s := range []struct {
			dst *[]float32
			src buf
		}{{&hc.K[l], c.k[l]}, {&hc.V[l], c.v[l]}} {
			*s.dst = (*s.dst)[:n*kvd]
			if n == 0 {
				continue
			}
			raw := rawHalf(r.o.dtype(), n*kvd)
			if err := r.o.download(raw, s.src.view(0, n*kvd)); err != nil {
				return nil, err
			}
			r.o.dtype().decode(*s.dst, raw)
		}
	}
	return hc, nil
}

// rawHalf allocates the host representation of n elements of d.
func rawHalf(d DType, n int) any {
	if d == F32 {
		return make([]float32, n)
	}
	return make([]uint16, n)
}

// Result is what Forward computed; see model.ForwardResult.
type Result struct {
	// Logits[i] is the [Vocab] logits of batch index opts.Logits[i].
	Logits [][]float32
	// Attention maps each of opts.AttentionLayers to its attention (Sum
	// always, Weights unless opts.AttentionSum).
	Attention map[int]*model.Attention
	// KV is the batch's own KV on the device (opts.ReturnKV), Pos =
	// Batch.Pos. The caller frees it.
	KV *Cache
}

func (r *Runtime) checkBatch(b model.Batch) error {
	if len(b.Tokens) != len(b.Pos) {
		return fmt.Errorf("cuda: batch has %d tokens and %d positions", len(b.Tokens), len(b.Pos))
	}
	if len(b.Tokens) == 0 {
		return fmt.Errorf("cuda: empty batch")
	}
	for i, t := range b.Tokens {
		if t < 0 || int(t) >= r.cfg.Vocab {
			return fmt.Errorf("%w: token %d at batch index %d, vocab [0, %d)", model.ErrToken, t, i, r.cfg.Vocab)
		}
	}
	for i, p := range b.Pos {
		if p < 0 || int(p) >= r.cfg.MaxPositions {
			return fmt.Errorf("%w: position %d at batch index %d, model limit [0, %d)", model.ErrPosition, p, i, r.cfg.MaxPositions)
		}
		if i > 0 && p <= b.Pos[i-1] {
			return fmt.Errorf("%w: batch positions not strictly increasing (%d then %d at index %d)", model.ErrPosition, b.Pos[i-1], p, i)
		}
	}
	return nil
}

// Forward runs the batch through every layer against the device cache (nil:
// empty), with model.Model.Forward's semantics: each query at position p
// attends to the cache entries and batch tokens at positions <= p; a cache
// entry whose position equals a batch token's is shadowed by it; the cache
// changes only with opts.Append (shadowed entries overwritten in place, the
// others appended in batch order). Work is proportional to n × (Len + n).
func (r *Runtime) Forward(ctx context.Context, cache *Cache, b model.Batch, opts model.ForwardOptions) (*Result, error) {
	cfg := r.cfg
	for _, i := range opts.Logits {
		if i < 0 || i >= len(b.Tokens) {
			return nil, fmt.Errorf("cuda: logits index %d outside batch [0, %d)", i, len(b.Tokens))
		}
	}
	attn := map[int]bool{}
	for _, l := range opts.AttentionLayers {
		if l < 0 || l >= cfg.Layers {
			return nil, fmt.Errorf("cuda: attention layer %d outside [0, %d)", l, cfg.Layers)
		}
		attn[l] = true
	}
	if opts.Append && cache == nil {
		return nil, fmt.Errorf("cuda: Append needs a cache")
	}
	if cache != nil && cache.r != r {
		return nil, fmt.Errorf("cuda: cache belongs to another runtime")
	}
	if err := r.checkBatch(b); err != nil {
		return nil, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed || (cache != nil && cache.k == nil) {
		return nil, ErrClosed
	}
	defer r.o.enter()()
	res, err := r.forward(ctx, cache, b, opts, attn)
	if err != nil {
		return nil, err
	}
	return res, nil
}

func (r *Runtime) forward(ctx context.Context, cache *Cache, b model.Batch, opts model.ForwardOptions, attn map[int]bool) (_ *Result, err error) {
	cfg, o := r.cfg, r.o
	n, C := len(b.Tokens), cache.Len()
	keys := C + n
	d, qd, kvd, h := cfg.Dim, cfg.QDim(), cfg.KVDim(), cfg.HiddenDim

	// Key positions: cache entries shadowed by a batch token never match.
	kpos := make([]int32, keys)
	if C > 0 {
		at := make(map[int32]bool, n)
		for _, p := range b.Pos {
			at[p] = true
		}
		for j, p := range cache.pos {
			kpos[j] = p
			if at[p] {
				kpos[j] = math.MaxInt32
			}
		}
	}
	copy(kpos[C:], b.Pos)

	type scratchSpec struct {
		dst  *buf
		name string
		kind elem
		n    int
	}
	var ids, qpos, kposB, cs, x, xb, qkv, q, kb, vb, kall, att, h13, hb, lse buf
	half := cfg.HeadDim / 2
	specs := []scratchSpec{
		{&ids, "ids", elemI32, n}, {&qpos, "qpos", elemI32, n}, {&kposB, "kpos", elemI32, keys},
		{&cs, "ropecs", elemF32, keys * half * 2},
		{&x, "x", elemF32, n * d}, {&xb, "xb", elemHalf, n * max(d, qd)},
		{&qkv, "qkv", elemF32, n * r.qkv}, {&q, "q", elemF32, n * qd},
		{&kall, "kall", elemHalf, keys * kvd}, {&att, "att", elemHalf, n * qd},
		{&h13, "h13", elemF32, n * 2 * h}, {&hb, "hb", elemHalf, n * h},
	}
	if len(attn) > 0 {
		specs = append(specs, scratchSpec{&lse, "lse", elemF32, cfg.Heads * n})
	}
	for _, s := range specs {
		if *s.dst, err = r.scratchBuf(s.name, s.kind, s.n); err != nil {
			return nil, err
		}
	}
	// The batch's own pre-RoPE K and V per layer live in a device cache when
	// they outlive the pass (ReturnKV, Append); otherwise in scratch.
	var kv *Cache
	if opts.ReturnKV || opts.Append {
		if kv, err = r.newCache(n); err != nil {
			return nil, err
		}
		kv.pos = append([]int32(nil), b.Pos...)
		defer func() {
			if err != nil || !opts.ReturnKV {
				kv.free()
			}
		}()
	} else {
		if kb, err = r.scratchBuf("kb", elemHalf, n*kvd); err != nil {
			return nil, err
		}
		if vb, err = r.scratchBuf("vb", elemHalf, n*kvd); err != nil {
			return nil, err
		}
	}
	for _, u := range []struct {
		dst buf
		src []int32
	}{{ids, b.Tokens}, {qpos, b.Pos}, {kposB, kpos}} {
		if err := o.upload(u.dst, u.src); err != nil {
			return nil, err
		}
	}
	res := &Result{}
	if len(attn) > 0 {
		res.Attention = map[int]*model.Attention{}
	}
	shape := attnShape{N: n, C: C, Heads: cfg.Heads, KVHeads: cfg.KVHeads, HeadDim: cfg.HeadDim,
		Scale: float32(1 / math.Sqrt(float64(cfg.HeadDim)))}
	eps := float32(cfg.NormEps)

	if err := o.embed(x, r.emb, ids, n, d); err != nil {
		return nil, err
	}
	// cos/sin of every key's position, once for all layers; the batch's
	// rows [C, C+n) also serve its queries. Shadowed cache entries get the
	// sentinel's angle: finite, and never attended.
	if err := o.ropeTable(cs, kposB, r.freq, keys, half); err != nil {
		return nil, err
	}
	csCache, csBatch := cs.view(0, C*half*2), cs.view(C*half*2, n*half*2)
	for l := range cfg.Layers {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		w := &r.layers[l]
		if kv != nil {
			kb, vb = kv.k[l].view(0, n*kvd), kv.v[l].view(0, n*kvd)
		}
		xbd := xb.view(0, n*d)
		if err := o.rmsNorm(xbd, x, w.attnNorm, n, d, eps); err != nil {
			return nil, err
		}
		if err := o.gemm(qkv, xbd, w.wqkv, n, r.qkv, d, false); err != nil {
			return nil, err
		}
		if w.bqkv.valid() {
			if err := o.addBias(qkv, w.bqkv, n, r.qkv); err != nil {
				return nil, err
			}
		}
		// q rotated in fp32; k and v rounded to the storage type, K before
		// RoPE (what a cache stores), then every key rotated into kall.
		if err := o.rope(q, qkv, csBatch, n, cfg.Heads, cfg.HeadDim, r.qkv, qd, cfg.RopeInterleaved); err != nil {
			return nil, err
		}
		if err := o.toHalf(kb, qkv.view(qd, qkv.n-qd), n, kvd, r.qkv); err != nil {
			return nil, err
		}
		if err := o.toHalf(vb, qkv.view(qd+kvd, qkv.n-qd-kvd), n, kvd, r.qkv); err != nil {
			return nil, err
		}
		var vc buf
		if C > 0 {
			vc = cache.v[l].view(0, C*kvd)
			if err := o.rope(kall.view(0, C*kvd), cache.k[l].view(0, C*kvd), csCache,
				C, cfg.KVHeads, cfg.HeadDim, kvd, kvd, cfg.RopeInterleaved); err != nil {
				return nil, err
			}
		}
		if err := o.rope(kall.view(C*kvd, n*kvd), kb, csBatch, n, cfg.KVHeads, cfg.HeadDim, kvd, kvd, cfg.RopeInterleaved); err != nil {
			return nil, err
		}
		var lseL buf
		if attn[l] {
			lseL = lse
		}
		if err := o.attention(att, q, kall, vc, vb, kposB, qpos, lseL, shape); err != nil {
			return nil, err
		}
		if attn[l] {
			a, err := r.attentionOut(q, kall, kposB, qpos, lse, shape, opts.AttentionSum)
			if err != nil {
				return nil, err
			}
			res.Attention[l] = a
		}
		if err := o.gemm(x, att, w.wo, n, d, qd, true); err != nil {
			return nil, err
		}
		if err := o.rmsNorm(xbd, x, w.ffnNorm, n, d, eps); err != nil {
			return nil, err
		}
		if err := o.gemm(h13, xbd, w.w13, n, 2*h, d, false); err != nil {
			return nil, err
		}
		if err := o.siluMul(hb, h13, n, h); err != nil {
			return nil, err
		}
		if err := o.gemm(x, hb, w.w2, n, d, h, true); err != nil {
			return nil, err
		}
	}
	if len(opts.Logits) > 0 {
		if res.Logits, err = r.logits(x, opts.Logits); err != nil {
			return nil, err
		}
	}
	if opts.Append {
		if err := cache.merge(kv); err != nil {
			return nil, err
		}
	}
	if opts.ReturnKV {
		res.KV = kv
	}
	return res, o.sync()
}

// attentionOut turns attention's lse into the weights FusionRAG reads: the
// per-key sums over heads and queries, and the full matrix unless sumOnly.
func (r *Runtime) attentionOut(q, kall, kpos, qpos, lse buf, s attnShape, sumOnly bool) (*model.Attention, error) {
	keys := s.Keys()
	partial, err := r.scratchBuf("partial", elemF32, s.Heads*keys)
	if err != nil {
		return nil, err
	}
	sum, err := r.scratchBuf("sum", elemF32, keys)
	if err != nil {
		return nil, err
	}
	var weights buf
	a := &model.Attention{Heads: s.Heads, Queries: s.N, Keys: keys, Sum: make([]float32, keys)}
	if !sumOnly {
		if weights, err = r.scratchBuf("weights", elemF32, s.Heads*s.N*keys); err != nil {
			return nil, err
		}
		a.Weights = make([]float32, s.Heads*s.N*keys)
	}
	if err := r.o.attnWeights(weights, partial, q, kall, kpos, qpos, lse, s); err != nil {
		return nil, err
	}
	if err := r.o.sumRows(sum, partial, s.Heads, keys); err != nil {
		return nil, err
	}
	if err := r.o.download(a.Sum, sum); err != nil {
		return nil, err
	}
	if a.Weights != nil {
		if err := r.o.download(a.Weights, weights); err != nil {
			return nil, err
		}
	}
	return a, nil
}

// logits applies the final norm and the classifier to rows of x f32 [n, Dim].
func (r *Runtime) logits(x buf, rows []int) ([][]float32, error) {
	c, o := r.cfg, r.o
	m := len(rows)
	xr, err := r.scratchBuf("xrows", elemF32, m*c.Dim)
	if err != nil {
		return nil, err
	}
	xn, err := r.scratchBuf("xnorm", elemHalf, m*c.Dim)
	if err != nil {
		return nil, err
	}
	lg, err := r.scratchBuf("logits", elemF32, m*c.Vocab)
	if err != nil {
		return nil, err
	}
	for j, row := range rows {
		if err := o.copy(xr.view(j*c.Dim, c.Dim), x.view(row*c.Dim, c.Dim)); err != nil {
			return nil, err
		}
	}
	if err := o.rmsNorm(xn, xr, r.norm, m, c.Dim, float32(c.NormEps)); err != nil {
		return nil, err
	}
	if err := o.gemm(lg, xn, r.cls, m, c.Vocab, c.Dim, false); err != nil {
		return nil, err
	}
	all := make([]float32, m*c.Vocab)
	if err := o.download(all, lg); err != nil {
		return nil, err
	}
	out := make([][]float32, m)
	for j := range out {
		out[j] = all[j*c.Vocab : (j+1)*c.Vocab : (j+1)*c.Vocab]
	}
	return out, nil
}

// merge writes o into c like model.Cache's Append option: entries at a
// position c already holds are overwritten in place, the others appended in
// o's order.
func (c *Cache) merge(o *Cache) error {
	kvd := c.r.cfg.KVDim()
	at := make(map[int32]int, len(o.pos))
	for i, p := range o.pos {
		at[p] = i
	}
	replaced := make([]bool, len(o.pos))
	for ci, p := range c.pos {
		oi, ok := at[p]
		if !ok {
			continue
		}
		for l := range c.k {
			if err := c.r.o.copy(c.k[l].view(ci*kvd, kvd), o.k[l].view(oi*kvd, kvd)); err != nil {
				return err
			}
			if err := c.r.o.copy(c.v[l].view(ci*kvd, kvd), o.v[l].view(oi*kvd, kvd)); err != nil {
				return err
			}
		}
		replaced[oi] = true
	}
	var fresh []int
	for i, r := range replaced {
		if !r {
			fresh = append(fresh, i)
		}
	}
	if err := c.reserve(len(c.pos) + len(fresh)); err != nil {
		return err
	}
	// Copy runs of consecutive fresh entries in one call per layer.
	sort.Ints(fresh)
	for i := 0; i < len(fresh); {
		j := i + 1
		for j < len(fresh) && fresh[j] == fresh[j-1]+1 {
			j++
		}
		src, cnt, dst := fresh[i], j-i, len(c.pos)
		for l := range c.k {
			if err := c.r.o.copy(c.k[l].view(dst*kvd, cnt*kvd), o.k[l].view(src*kvd, cnt*kvd)); err != nil {
				return err
			}
			if err := c.r.o.copy(c.v[l].view(dst*kvd, cnt*kvd), o.v[l].view(src*kvd, cnt*kvd)); err != nil {
				return err
			}
		}
		c.pos = append(c.pos, o.pos[src:src+cnt]...)
		i = j
	}
	return nil
}
