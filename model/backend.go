package model

import (
	"context"
	"fmt"
	"sort"
	"sync"
)

// Backend runs the dense kernels of a forward pass. The CPU backend ("cpu",
// pure Go, package model/blas) is always registered; others (openblas, cuda)
// live in leaf packages behind build tags and register themselves in init.
//
// Implementations must be safe for concurrent use: several Forward calls on
// one Model may run at once.
type Backend interface {
	// Name is the name the backend was registered under.
	Name() string
	// MatMulT computes out[m,n] = a[m,k] · b[n,k]^T (row-major; b is a
	// weight in [out,in] layout). out is overwritten.
	MatMulT(out, a, b []float32, m, n, k int)
}

// MatMuler is an optional interface for backends with a plain GEMM:
// out[m,n] = a[m,k] · b[k,n] (both row-major), used for attention's P·V.
// Backends without it get the pure-Go blas kernel for that product.
type MatMuler interface {
	MatMul(out, a, b []float32, m, n, k int)
}

// WeightBinder is an optional interface for backends that keep weights on a
// device (CUDA). Load calls BindWeights once, after the weights are loaded and
// before the first Forward; a backend may upload them and later recognise a
// weight passed to MatMulT by the address of its first element
// (&b[0]). Backends that also implement io.Closer are closed by Model.Close.
type WeightBinder interface {
	BindWeights(cfg Config, weights []NamedWeight) error
}

// Forwarder is an optional interface for backends that run whole passes on
// a device (CUDA). When the model's backend implements it, Model.Forward
// validates its arguments, then hands the pass over unchanged: the backend
// must give Forward's semantics (attention masking and shadowing, Append,
// the returned fields) and may keep device copies of caches it has seen.
// The layer-stepping API (Embed, Step, Logits) always runs on the host
// kernels. Called only after BindWeights succeeded.
type Forwarder interface {
	Forward(ctx context.Context, cache *Cache, b Batch, opts ForwardOptions) (*ForwardResult, error)
}

// NamedWeight is one weight matrix or vector as the model holds it in fp32.
// Name uses Hugging Face naming (model.layers.3.self_attn.q_proj.weight).
type NamedWeight struct {
	Name  string
	Shape []int // [rows, cols] for matrices, [n] for vectors
	Data  []float32
}

var (
	backendsMu sync.RWMutex
	backends   = map[string]func() (Backend, error){}
)

// DefaultBackend is the backend used when LoadOptions.Backend is empty.
const DefaultBackend = "cpu"

// RegisterBackend makes a backend available to LoadOptions.Backend. It panics
// when name is registered twice (a programming error at init time).
func RegisterBackend(name string, factory func() (Backend, error)) {
	backendsMu.Lock()
	defer backendsMu.Unlock()
	if _, dup := backends[name]; dup {
		panic("model: backend " + name + " registered twice")
	}
	backends[name] = factory
}

// Backends lists the registered backend names, sorted.
func Backends() []string {
	backendsMu.RLock()
	defer backendsMu.RUnlock()
	names := make([]string, 0, len(backends))
	for n := range backends {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// NewBackend instantiates a registered backend ("" = DefaultBackend).
func NewBackend(name string) (Backend, error) {
	if name == "" {
		name = DefaultBackend
	}
	backendsMu.RLock()
	f, ok := backends[name]
	backendsMu.RUnlock()
	if !ok {
		return nil, fmt.Errorf("%w backend %q (registered: %v; openblas needs -tags openblas)", ErrUnsupported, name, Backends())
	}
	return f()
}
