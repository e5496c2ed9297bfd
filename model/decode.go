package model

import (
	"context"
	"fmt"
	"slices"
)

// StopIDs returns the ids that end a generated text, each once: the config's
// EOS ids, the tokenizer's EOS list (generation_config.json's eos_token_id
// for Hugging Face models), and BOS when the model has one.
//
// BOS is a stop id for every model, not only llama2.c checkpoints: run.c
// ends a sample when the model emits BOS ("the BOS token delimits
// sequences"), and for any model a generated BOS opens a new, unrelated
// document, so nothing after it belongs to the answer. The engine (what the
// OpenAI API serves), Model.Generate and package bench's answers all use
// this list, so they stop at the same token.
func (m *Model) StopIDs() []int32 {
	var ids []int32
	add := func(id int32) {
		if id >= 0 && int(id) < m.Config.Vocab && !slices.Contains(ids, id) {
			ids = append(ids, id)
		}
	}
	for _, id := range m.Config.EOS {
		add(id)
	}
	if m.Tokenizer != nil {
		for _, id := range m.Tokenizer.EOS() {
			add(id)
		}
	}
	add(m.Config.BOS)
	return ids
}

// Decode continues the sequence whose KV is cache, positions [0,
// cache.Len()), given lastLogits, the logits [Vocab] of its last position.
// It picks up to n ids with s; each picked id is run through the model at
// position cache.Len() and appended to cache (which grows: Clone it first to
// keep it), except the last one, whose logits nobody needs. Decoding ends
// before an id in stop (not returned, not emitted; nil stops at nothing),
// after an id for which emit returns false (returned), after n ids, or
// after the id at position MaxPositions-1 (prompt + output fill the
// context; not an error). It returns the ids picked, and those picked so far
// with the error of a failed forward pass (a cancelled ctx included).
func (m *Model) Decode(ctx context.Context, cache *Cache, lastLogits []float32, n int, s *Sampler, stop []int32, emit func(id int32) bool) ([]int32, error) {
	if len(lastLogits) != m.Config.Vocab {
		return nil, fmt.Errorf("model: decode: %d last logits, want the vocabulary's %d", len(lastLogits), m.Config.Vocab)
	}
	if s == nil {
		s = Greedy()
	}
	logits := lastLogits
	var out []int32
	for len(out) < n && cache.Len() < m.Config.MaxPositions {
		next := s.Sample(logits)
		if slices.Contains(stop, next) {
			break
		}
		out = append(out, next)
		if emit != nil && !emit(next) {
			break
		}
		p := int32(cache.Len()) // position of next
		if len(out) == n || int(p)+1 >= m.Config.MaxPositions {
			break
		}
		r, err := m.Forward(ctx, cache, Batch{Tokens: []int32{next}, Pos: []int32{p}}, ForwardOptions{Logits: []int{0}, Append: true})
		if err != nil {
			return out, err
		}
		logits = r.Logits[0]
	}
	return out, nil
}

// Generate prefills prompt (positions [0, len(prompt))) and decodes up to
// maxTokens ids with s (nil: greedy), stopping at StopIDs; see Decode for
// the rest (emit, the context limit). It returns the generated ids, stop id
// excluded.
func (m *Model) Generate(ctx context.Context, prompt []int32, maxTokens int, s *Sampler, emit func(id int32) bool) ([]int32, error) {
	if len(prompt) == 0 {
		return nil, fmt.Errorf("model: empty prompt (start it with BOS)")
	}
	if len(prompt) > m.Config.MaxPositions {
		return nil, fmt.Errorf("%w: prompt of %d tokens exceeds the model's %d positions (LoadOptions.MaxPositions, --max-positions, overrides the file's context length)", ErrPosition, len(prompt), m.Config.MaxPositions)
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
	return m.Decode(ctx, cache, r.Logits[0], maxTokens, s, m.StopIDs(), emit)
}
