package model

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
)

// Sampler picks the next token from logits. Temperature 0 is greedy (the
// first maximal id, as llama2.c run.c); otherwise softmax(logits/T) is
// sampled, restricted to the smallest set of most likely ids whose
// probability reaches TopP when 0 < TopP < 1. A Sampler is not safe for
// concurrent use (it owns a random stream).
type Sampler struct {
	Temperature float64
	TopP        float64
	rng         *rand.Rand
	probs       []float64
	idx         []int32
}

// NewSampler returns a sampler; the same seed replays the same choices.
func NewSampler(temperature, topP float64, seed uint64) *Sampler {
	return &Sampler{Temperature: max(temperature, 0), TopP: topP, rng: rand.New(rand.NewPCG(seed, 0x5a3b1e))}
}

// Sample returns the chosen id.
func (s *Sampler) Sample(logits []float32) int32 {
	if s.Temperature == 0 || len(logits) < 2 {
		return argmaxF(logits)
	}
	mx := float64(logits[argmaxF(logits)])
	s.probs = s.probs[:0]
	var sum float64
	for _, l := range logits {
		p := math.Exp((float64(l) - mx) / s.Temperature)
		s.probs = append(s.probs, p)
		sum += p
	}
	if s.TopP > 0 && s.TopP < 1 {
		s.idx = s.idx[:0]
		for i := range logits {
			s.idx = append(s.idx, int32(i))
		}
		slices.SortStableFunc(s.idx, func(a, b int32) int {
			switch pa, pb := s.probs[a], s.probs[b]; {
			case pa > pb:
				return -1
			case pa < pb:
				return 1
			}
			return 0
		})
		var cum float64
		keep := len(s.idx)
		for i, id := range s.idx {
			cum += s.probs[id] / sum
			if cum >= s.TopP {
				keep = i + 1
				break
			}
		}
		var kept float64
		for _, id := range s.idx[:keep] {
			kept += s.probs[id]
		}
		u := s.rng.Float64() * kept
		for _, id := range s.idx[:keep] {
			u -= s.probs[id]
			if u < 0 {
				return id
			}
		}
		return s.idx[keep-1]
	}
	u := s.rng.Float64() * sum
	for i, p := range s.probs {
		u -= p
		if u < 0 {
			return int32(i)
		}
	}
	return int32(len(s.probs) - 1)
}

func argmaxF(x []float32) int32 {
	best := 0
	for i, v := range x {
		if v > x[best] {
			best = i
		}
	}
	return int32(best)
}

// Generate prefills prompt (positions [0, len(prompt))) and decodes up to
// maxTokens ids with s, calling emit with each one (emit returning false
// stops). It stops at an EOS id (the config's or the tokenizer's), at BOS (llama2.c convention: a generated
// BOS ends the text) and when prompt + output fill MaxPositions. Returns the
// generated ids (without the stop id).
func (m *Model) Generate(ctx context.Context, prompt []int32, maxTokens int, s *Sampler, emit func(id int32) bool) ([]int32, error) {
	if len(prompt) == 0 {
		return nil, fmt.Errorf("model: empty prompt (start it with BOS)")
	}
	if len(prompt) > m.Config.MaxPositions {
		return nil, fmt.Errorf("%w: prompt of %d tokens exceeds the model's %d positions (LoadOptions.MaxPositions, --max-positions, overrides the file's context length)", ErrPosition, len(prompt), m.Config.MaxPositions)
	}
	stop := map[int32]bool{}
	for _, e := range m.Config.EOS {
		stop[e] = true
	}
	if m.Config.BOS >= 0 {
		stop[m.Config.BOS] = true
	}
	if m.Tokenizer != nil {
		for _, e := range m.Tokenizer.EOS() { // generation_config.json's list
			stop[e] = true
		}
	}
	cache := NewCache(m.Config, min(len(prompt)+maxTokens, m.Config.MaxPositions))
	pos := make([]int32, len(prompt))
	for i := range pos {
		pos[i] = int32(i)
	}
	r, err := m.Forward(ctx, cache, Batch{Tokens: prompt, Pos: pos}, ForwardOptions{Logits: []int{len(prompt) - 1}, Append: true})
	if err != nil {
		return nil, err
	}
	var out []int32
	for len(out) < maxTokens {
		next := s.Sample(r.Logits[0])
		if stop[next] {
			break
		}
		out = append(out, next)
		if emit != nil && !emit(next) {
			break
		}
		p := int32(len(prompt) + len(out) - 1) // position of next
		if len(out) == maxTokens || int(p)+1 >= m.Config.MaxPositions {
			break // the text fills the context: prompt + output <= MaxPositions
		}
		r, err = m.Forward(ctx, cache, Batch{Tokens: []int32{next}, Pos: []int32{p}}, ForwardOptions{Logits: []int{0}, Append: true})
		if err != nil {
			return out, err
		}
	}
	return out, nil
}
