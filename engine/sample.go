package engine

import (
	"cmp"
	"math"
	"math/rand/v2"
	"slices"
)

// sampler draws the next token from logits under one request's Sampling.
// It is deterministic given Sampling.Seed. Not safe for concurrent use.
type sampler struct {
	p   Sampling
	rng *rand.Rand
	idx []int32   // candidate ids, scratch
	w   []float64 // candidate weights, scratch
}

func newSampler(p Sampling) *sampler {
	var seed uint64
	if p.Seed != nil {
		seed = uint64(*p.Seed)
	} else {
		seed = rand.Uint64()
	}
	return &sampler{p: p, rng: rand.New(rand.NewPCG(seed, 0x9e3779b97f4a7c15))}
}

// argmax returns the index of the largest logit (the lowest index on ties;
// NaN never wins).
func argmax(logits []float32) int32 {
	best, bv := 0, float32(math.Inf(-1))
	for i, v := range logits {
		if v > bv {
			best, bv = i, v
		}
	}
	return int32(best)
}

// Sample returns the next token id. Temperature 0 is greedy. Otherwise the
// logits are divided by the temperature, restricted to the top-k ids, then
// to the smallest most-likely set whose probability reaches top-p, and
// renormalised before drawing.
func (s *sampler) Sample(logits []float32) int32 {
	if s.p.Temperature == 0 || s.p.TopK == 1 {
		return argmax(logits)
	}
	invT := 1 / s.p.Temperature
	maxL := float64(logits[argmax(logits)])
	if math.IsInf(maxL, -1) {
		return argmax(logits)
	}
	s.idx, s.w = s.idx[:0], s.w[:0]
	for i, v := range logits {
		if v == v && !math.IsInf(float64(v), -1) {
			s.idx = append(s.idx, int32(i))
		}
	}
	filter := (s.p.TopK > 0 && s.p.TopK < len(s.idx)) || s.p.TopP < 1
	if filter {
		// Sort candidates by logit, descending (ties: lower id first) so that
		// top-k and top-p are prefixes.
		slices.SortFunc(s.idx, func(a, b int32) int {
			if c := cmp.Compare(logits[b], logits[a]); c != 0 {
				return c
			}
			return cmp.Compare(a, b)
		})
		if s.p.TopK > 0 && s.p.TopK < len(s.idx) {
			s.idx = s.idx[:s.p.TopK]
		}
	}
	var sum float64
	for _, id := range s.idx {
		e := math.Exp((float64(logits[id]) - maxL) * invT)
		s.w = append(s.w, e)
		sum += e
	}
	if s.p.TopP < 1 {
		cut, acc := len(s.w), 0.0
		for i, e := range s.w {
			acc += e / sum
			if acc >= s.p.TopP {
				cut = i + 1
				break
			}
		}
		s.idx, s.w = s.idx[:cut], s.w[:cut]
		sum = 0
		for _, e := range s.w {
			sum += e
		}
	}
	r := s.rng.Float64() * sum
	for i, e := range s.w {
		r -= e
		if r < 0 {
			return s.idx[i]
		}
	}
	return s.idx[len(s.idx)-1] // rounding: r landed on the total
}
