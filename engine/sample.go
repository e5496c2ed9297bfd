package engine

import (
	"math/rand/v2"

	"github.com/fusionrag/fusionrag/model"
)

// newSampler returns the model's sampler (package model owns the one
// decoding rule: top-k, then top-p, renormalised, a PCG stream per seed) for
// one request's Sampling. A request without a seed gets a random one.
func newSampler(p Sampling) *model.Sampler {
	var seed uint64
	if p.Seed != nil {
		seed = uint64(*p.Seed)
	} else {
		seed = rand.Uint64()
	}
	return model.NewSampler(model.Sampling{Temperature: p.Temperature, TopK: p.TopK, TopP: p.TopP, Seed: seed})
}
