package main

import (
	"os"

	"github.com/fusionrag/fusionrag/model"
)

// syntheticSeeded returns the synthetic model of cfg and seed on backend
// (--backend): model.Synthetic builds it on the cpu backend; any other
// backend (openblas, cuda) loads it from a temporary HF directory through
// model.Load, the path real models take, so that --backend is honoured
// for synthetic models too.
func syntheticSeeded(cfg model.Config, seed uint64, backend string) (*model.Model, error) {
	if backend == "" || backend == model.DefaultBackend {
		return model.Synthetic(cfg, seed)
	}
	if _, err := model.NewBackend(backend); err != nil {
		return nil, err // before writing the model: unknown or refused backend
	}
	dir, err := os.MkdirTemp("", "fusionrag-synthetic-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir) // the mapping stays valid after unlink
	if err := model.WriteSynthetic(dir, cfg, seed, model.SaveOptions{}); err != nil {
		return nil, err
	}
	return model.Load(dir, model.LoadOptions{Backend: backend})
}
