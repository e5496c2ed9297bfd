package model

import (
	"cmp"
	"math"
	"math/rand/v2"
	"slices"
)

// Argmax returns the index of the largest value of x: the lowest index on
// ties, and NaN never wins (any number, -Inf included, beats it). When no
// value is a number (all NaN) it returns 0, the lowest index. It returns -1
// for an empty x: logits are never empty for a model with a vocabulary, so
// callers that index with the result have a broken invariant to report,
// and callers that only compare two argmaxes get a value no id equals.
//
// This is the one greedy rule of the module: the engine's temperature-0
// decoding, Model.Decode with a greedy Sampler and every "top-1 agrees"
// figure of package bench use it. It equals llama2.c run.c's argmax (the
// first maximum) on logits without NaN.
func Argmax(x []float32) int32 {
	if len(x) == 0 {
		return -1
	}
	best := -1
	for i, v := range x {
		if v == v && (best < 0 || v > x[best]) {
			best = i
		}
	}
	return int32(max(best, 0))
}

// Sampling are the decoding parameters of one sequence. The zero value is
// greedy decoding.
type Sampling struct {
	// Temperature divides the logits; 0 (or less) is greedy (Argmax).
	Temperature float64
	// TopK keeps the K most likely ids; 0 (or less) keeps all.
	TopK int
	// TopP keeps the smallest set of most likely ids (after TopK) whose
	// probability reaches TopP; 0 or >= 1 keeps all.
	TopP float64
	// Seed seeds the random stream: the same Sampling replays the same
	// choices on the same logits.
	Seed uint64
}

// pcgStream is the second PCG word of every Sampler. It is the engine's
// historical constant, kept so that a request with a given seed gets the
// same completion it got before the samplers were merged.
const pcgStream = 0x9e3779b97f4a7c15

// Sampler picks the next id from logits under one Sampling: softmax of
// logits/Temperature over the candidates (NaN and -Inf logits are never
// candidates), restricted to the TopK most likely, then to the smallest
// most-likely prefix whose probability reaches TopP, renormalised, and
// drawn with one Float64 of a PCG stream per call. Candidates are ordered by
// logit, descending, ties by lower id. Temperature 0 or TopK 1 is Argmax and
// draws nothing. A Sampler is not safe for concurrent use (it owns a random
// stream and scratch space).
type Sampler struct {
	p   Sampling
	rng *rand.Rand
	idx []int32   // candidate ids, scratch
	w   []float64 // candidate weights, scratch
}

// NewSampler returns a sampler for p.
func NewSampler(p Sampling) *Sampler {
	return &Sampler{p: p, rng: rand.New(rand.NewPCG(p.Seed, pcgStream))}
}

// Greedy returns a greedy sampler (Argmax on every call).
func Greedy() *Sampler { return NewSampler(Sampling{}) }

// Sampling returns the parameters the sampler was made with.
func (s *Sampler) Sampling() Sampling { return s.p }

// Sample returns the chosen id, -1 only for empty logits.
func (s *Sampler) Sample(logits []float32) int32 {
	if s.p.Temperature <= 0 || s.p.TopK == 1 || len(logits) < 2 {
		return Argmax(logits)
	}
	best := Argmax(logits)
	maxL := float64(logits[best])
	if math.IsInf(maxL, 0) || maxL != maxL {
		// All -Inf or NaN: nothing to weigh. +Inf: exp(l - Inf) is 0 for
		// every finite l and NaN for the infinite ones; the first +Inf wins.
		return best
	}
	invT := 1 / s.p.Temperature
	s.idx, s.w = s.idx[:0], s.w[:0]
	for i, v := range logits {
		if v == v && !math.IsInf(float64(v), -1) {
			s.idx = append(s.idx, int32(i))
		}
	}
	topK := s.p.TopK > 0 && s.p.TopK < len(s.idx)
	topP := s.p.TopP > 0 && s.p.TopP < 1
	if topK || topP {
		// Sort candidates by logit, descending (ties: lower id first) so that
		// top-k and top-p are prefixes.
		slices.SortFunc(s.idx, func(a, b int32) int {
			if c := cmp.Compare(logits[b], logits[a]); c != 0 {
				return c
			}
			return cmp.Compare(a, b)
		})
		if topK {
			s.idx = s.idx[:s.p.TopK]
		}
	}
	var sum float64
	for _, id := range s.idx {
		e := math.Exp((float64(logits[id]) - maxL) * invT)
		s.w = append(s.w, e)
		sum += e
	}
	if topP {
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
