package cuda

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"unsafe"

	"github.com/fusionrag/fusionrag/model"
	"github.com/fusionrag/fusionrag/model/blas"
)

// BackendName is the name the backend registers with package model (build
// tag cuda).
const BackendName = "cuda"

// Backend is package model's "cuda" backend. Load binds the model's weights
// (BindWeights: uploaded once, in the Backend's DType); Model.Forward then
// runs whole passes on the device (model.Forwarder), uploading the host
// cache it is given and downloading what was asked for. The layer-stepping
// API (Step) stays on the host but its weight GEMMs run on the device
// (MatMulT recognises a bound weight by its first element's address; any
// other product runs on the host with blas.Go).
//
// Callers that keep KV on the device use Runtime() directly: its Cache never
// leaves device memory.
type Backend struct {
	newOps func() (ops, error)

	mu     sync.Mutex
	rt     *Runtime
	byAddr map[*float32]buf // weight &Data[0] -> its device copy
	err    error            // first device error of MatMulT (which cannot return one)
}

// newBackend returns an unbound backend whose device is made by newOps.
func newBackend(newOps func() (ops, error)) *Backend {
	return &Backend{newOps: newOps}
}

// Name is BackendName.
func (b *Backend) Name() string { return BackendName }

// BindWeights uploads the weights (model.WeightBinder).
func (b *Backend) BindWeights(cfg model.Config, weights []model.NamedWeight) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.rt != nil {
		return errors.New("cuda: backend already bound to a model")
	}
	o, err := b.newOps()
	if err != nil {
		return err
	}
	rt, err := newRuntime(o, cfg, weights)
	if err != nil {
		o.close()
		return err
	}
	b.rt = rt
	b.byAddr = map[*float32]buf{}
	// Views of the fused device weights, in the order newRuntime fused them.
	c := cfg
	d, q, kv, h := c.Dim, c.QDim(), c.KVDim(), c.HiddenDim
	by := map[string]model.NamedWeight{}
	for _, w := range weights {
		by[w.Name] = w
	}
	bind := func(name string, v buf) {
		if w, ok := by[name]; ok && len(w.Data) > 0 {
			b.byAddr[unsafe.SliceData(w.Data)] = v
		}
	}
	bind("model.embed_tokens.weight", rt.emb)
	bind("lm_head.weight", rt.cls)
	for l, lb := range rt.layers {
		p := fmt.Sprintf("model.layers.%d.", l)
		bind(p+"self_attn.q_proj.weight", lb.wqkv.view(0, q*d))
		bind(p+"self_attn.k_proj.weight", lb.wqkv.view(q*d, kv*d))
		bind(p+"self_attn.v_proj.weight", lb.wqkv.view((q+kv)*d, kv*d))
		bind(p+"self_attn.o_proj.weight", lb.wo)
		bind(p+"mlp.gate_proj.weight", lb.w13.view(0, h*d))
		bind(p+"mlp.up_proj.weight", lb.w13.view(h*d, h*d))
		bind(p+"mlp.down_proj.weight", lb.w2)
	}
	return nil
}

// Runtime is the device runtime of the bound model (nil before Load).
func (b *Backend) Runtime() *Runtime {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.rt
}

// Err returns the first device error a MatMulT met (it then computed the
// product on the host).
func (b *Backend) Err() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.err
}

// MatMulT computes out[m,n] = a[m,k] · w[n,k]^T: on the device when w is a
// bound weight (a is rounded to the DType, the product accumulates in fp32),
// else on the host.
func (b *Backend) MatMulT(out, a, w []float32, m, n, k int) {
	b.mu.Lock()
	dw, ok := b.byAddr[unsafe.SliceData(w)]
	rt := b.rt
	b.mu.Unlock()
	if ok && dw.n == n*k && m > 0 {
		err := rt.matMulT(out[:m*n], a[:m*k], dw, m, n, k)
		if err == nil {
			return
		}
		b.mu.Lock()
		if b.err == nil {
			b.err = err
		}
		b.mu.Unlock()
	}
	blas.Go.MatMulT(out, a, w, m, n, k)
}

// matMulT runs one GEMM against a device weight for a host activation.
func (r *Runtime) matMulT(out, a []float32, w buf, m, n, k int) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return ErrClosed
	}
	defer r.o.enter()()
	ab, err := r.scratchBuf("mm.a", elemHalf, m*k)
	if err != nil {
		return err
	}
	ob, err := r.scratchBuf("mm.out", elemF32, m*n)
	if err != nil {
		return err
	}
	if err := r.o.upload(ab, r.o.dtype().encode(a)); err != nil {
		return err
	}
	if err := r.o.gemm(ob, ab, w, m, n, k, false); err != nil {
		return err
	}
	return r.o.download(out, ob)
}

// Forward runs a whole pass on the device (model.Forwarder): the host cache
// is uploaded (rounded to the DType), the pass runs, and with opts.Append the
// batch's KV is merged into the host cache as package model does (shadowed
// entries overwritten in place, the others appended).
func (b *Backend) Forward(ctx context.Context, cache *model.Cache, batch model.Batch, opts model.ForwardOptions) (*model.ForwardResult, error) {
	rt := b.Runtime()
	if rt == nil {
		return nil, errors.New("cuda: backend used before BindWeights")
	}
	var dc *Cache
	if cache != nil {
		var err error
		if dc, err = rt.Upload(cache); err != nil {
			return nil, err
		}
		defer dc.Free()
	}
	dopts := opts
	dopts.Append = false
	dopts.ReturnKV = opts.ReturnKV || opts.Append
	res, err := rt.Forward(ctx, dc, batch, dopts)
	if err != nil {
		return nil, err
	}
	out := &model.ForwardResult{Logits: res.Logits, Attention: res.Attention}
	if res.KV != nil {
		kv, err := res.KV.Download()
		res.KV.Free()
		if err != nil {
			return nil, err
		}
		if opts.Append {
			mergeHost(cache, kv)
		}
		if opts.ReturnKV {
			out.KV = kv
		}
	}
	return out, nil
}

// mergeHost writes o into c: entries at a position c already holds are
// overwritten in place, the others appended in o's order (model's Append).
func mergeHost(c, o *model.Cache) {
	at := make(map[int32]int, len(o.Pos))
	for i, p := range o.Pos {
		at[p] = i
	}
	st := c.KVHeads * c.HeadDim
	replaced := make([]bool, len(o.Pos))
	for ci, p := range c.Pos {
		oi, ok := at[p]
		if !ok {
			continue
		}
		for l := range c.Layers {
			copy(c.K[l][ci*st:(ci+1)*st], o.K[l][oi*st:(oi+1)*st])
			copy(c.V[l][ci*st:(ci+1)*st], o.V[l][oi*st:(oi+1)*st])
		}
		replaced[oi] = true
	}
	for i, r := range replaced {
		if r {
			continue
		}
		c.Pos = append(c.Pos, o.Pos[i])
		for l := range c.Layers {
			c.K[l] = append(c.K[l], o.K[l][i*st:(i+1)*st]...)
			c.V[l] = append(c.V[l], o.V[l][i*st:(i+1)*st]...)
		}
	}
}

// Close frees the device memory (io.Closer; Model.Close calls it).
func (b *Backend) Close() error {
	b.mu.Lock()
	rt := b.rt
	b.rt, b.byAddr = nil, nil
	b.mu.Unlock()
	if rt == nil {
		return nil
	}
	return rt.Close()
}

var (
	_ model.Backend      = (*Backend)(nil)
	_ model.WeightBinder = (*Backend)(nil)
	_ model.Forwarder    = (*Backend)(nil)
)
