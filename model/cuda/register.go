//go:build cuda

package cuda

import "github.com/fusionrag/fusionrag/model"

func init() {
	model.RegisterBackend(BackendName, func() (model.Backend, error) {
		opts, err := OptionsFromEnv()
		if err != nil {
			return nil, err
		}
		return NewBackend(opts)
	})
}

// NewBackend returns the "cuda" model backend on opts.Device; the device is
// opened when Load binds the weights.
func NewBackend(opts Options) (*Backend, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	return newBackend(func() (ops, error) { return newCUDAOps(opts.Device, opts.DType) }), nil
}

// New uploads a model's fp32 weights (Hugging Face names, as
// model.NamedWeight) to the device in opts.DType.
func New(cfg model.Config, weights []model.NamedWeight, opts Options) (*Runtime, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	o, err := newCUDAOps(opts.Device, opts.DType)
	if err != nil {
		return nil, err
	}
	rt, err := newRuntime(o, cfg, weights)
	if err != nil {
		o.close()
		return nil, err
	}
	return rt, nil
}

// NewRandom builds a model of shape cfg with deterministic random weights
// generated on the device (benchmarks of any size without a weight file).
func NewRandom(cfg model.Config, seed uint64, opts Options) (*Runtime, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	o, err := newCUDAOps(opts.Device, opts.DType)
	if err != nil {
		return nil, err
	}
	rt, err := newRandomRuntime(o, cfg, seed)
	if err != nil {
		o.close()
		return nil, err
	}
	return rt, nil
}
