package engine

import (
	"context"
)

// LM is the language model as the engine needs it: independent sequences
// that extend their KV cache by a batch of tokens and return the logits of
// the last one. The engine owns this interface; ModelLM adapts *model.Model.
// Implementations must allow different sequences to be extended
// concurrently.
type LM interface {
	// NewSequence returns an empty sequence: no tokens, next position 0.
	NewSequence() Sequence
	// MaxPositions is the model's context window in tokens.
	MaxPositions() int
	// VocabSize is the number of logits per position.
	VocabSize() int
}

// Sequence is the KV state of one request. It is used by one goroutine at a
// time.
type Sequence interface {
	// Len is the number of positions whose KV the sequence holds; the next
	// token goes at position Len().
	Len() int
	// Extend runs tokens at positions [Len(), Len()+len(tokens)), keeps
	// their KV, and returns the logits [VocabSize] of the last one.
	Extend(ctx context.Context, tokens []int32) ([]float32, error)
}

// BatchLM is an LM that extends several sequences in one model call, so a
// decode step for many requests costs about one pass over the weights
// (continuous batching). The scheduler uses it when the LM implements it;
// ModelLM does.
type BatchLM interface {
	LM
	// ExtendBatch extends seqs[i] (distinct sequences from this LM's
	// NewSequence) by tokens[i], with the result seqs[i].Extend(ctx,
	// tokens[i]) would have had, and returns logits[i]. errs[i] != nil
	// means seqs[i] failed and is no longer usable; the others are not
	// affected by it. Both slices have len(seqs) entries.
	ExtendBatch(ctx context.Context, seqs []Sequence, tokens [][]int32) (logits [][]float32, errs []error)
}
