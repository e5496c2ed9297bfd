package recompute

import (
	"errors"
	"fmt"
	"math"

	"github.com/fusionrag/fusionrag/chunkkv"
)

// Sentinel errors for bad requests. Every one of them means "this request
// cannot take the reuse path as given"; the caller can always fall back to
// the "full" strategy (or to forwarding the request untouched).
var (
	// ErrRatio: a ratio outside [0, 1] or NaN.
	ErrRatio = errors.New("recompute: ratio must be in [0, 1]")
	// ErrEmptySegment: an empty chunk or an empty question.
	ErrEmptySegment = errors.New("recompute: empty segment")
	// ErrOverlap: segments (spans) that overlap, are out of order or leave a
	// gap in the prompt.
	ErrOverlap = errors.New("recompute: overlapping or out-of-order segments")
	// ErrStrategy: a strategy name nobody registered.
	ErrStrategy = errors.New("recompute: unknown strategy")
	// ErrTooLong: the prompt does not fit in the model's positions.
	ErrTooLong = errors.New("recompute: prompt longer than the model's context")
	// ErrToken: a token id outside the model's vocabulary.
	ErrToken = errors.New("recompute: token id out of range")
	// ErrKVMismatch is matched (errors.Is) by every *KVMismatchError
	// (chunkkv's: the store and this package report the same errors).
	ErrKVMismatch = chunkkv.ErrKVMismatch
	// ErrMiss is returned by a KVSource for a key it does not hold.
	ErrMiss = chunkkv.ErrMiss
)

// KVMismatchError reports a stored KV that cannot be used for the request
// (chunkkv.KVMismatchError). It matches ErrKVMismatch.
type KVMismatchError = chunkkv.KVMismatchError

// Request is one prompt S + C_1..C_k + Q split on token ids, and how to
// reprocess it. Positions follow the order: S occupies [0, |S|), C_1 starts at
// |S|, each chunk right after the previous one, Q after the last chunk.
type Request struct {
	// Prefix is S, the system/instruction prefix, BOS included. It may be
	// empty only for models without BOS; chunk KV is keyed by it.
	Prefix []int32
	// Chunks are the retrieved chunks, in prompt order. None may be empty;
	// there may be none at all (then every strategy is a plain prefill).
	Chunks [][]int32
	// Question is Q, the tail of the prompt after the last chunk; not empty
	// (its last position gives the logits).
	Question []int32
	// Strategy is a registered strategy name (Strategies()); empty selects
	// "fusionrag".
	Strategy string
	// Ratio is the fraction of context tokens to recompute, in [0, 1]. Its
	// meaning per strategy: fusionrag and cacheblend recompute
	// round(Ratio * chunk tokens) tokens; epic as many, shared among the
	// chunks as the first tokens of each; none spends it on an exact first
	// chunk (Job.Selectable); full and reuse ignore it.
	Ratio float64
}

// DefaultStrategy is used when Request.Strategy is empty.
const DefaultStrategy = "fusionrag"

// Span is a half-open range [Begin, End) of token indices in a prompt.
type Span struct{ Begin, End int }

// Len is End - Begin.
func (s Span) Len() int { return s.End - s.Begin }

// FromSpans builds a Request from a prompt's token ids and the spans of its
// segments, as a segmenter finds them. The spans must tile the prompt
// exactly, in order: prefix starts at 0, each chunk starts where the previous
// segment ended, question ends at len(tokens). Chunks and the question must
// not be empty. The Request's slices alias tokens.
func FromSpans(tokens []int32, prefix Span, chunks []Span, question Span, strategy string, ratio float64) (Request, error) {
	next := 0
	check := func(what string, s Span, allowEmpty bool) error {
		if s.Begin != next || s.End < s.Begin || s.End > len(tokens) {
			return fmt.Errorf("%w: %s [%d, %d) must start at %d and end within [%d, %d]", ErrOverlap, what, s.Begin, s.End, next, next, len(tokens))
		}
		if !allowEmpty && s.Len() == 0 {
			return fmt.Errorf("%w: %s [%d, %d)", ErrEmptySegment, what, s.Begin, s.End)
		}
		next = s.End
		return nil
	}
	if err := check("prefix", prefix, true); err != nil {
		return Request{}, err
	}
	req := Request{Prefix: tokens[prefix.Begin:prefix.End:prefix.End], Strategy: strategy, Ratio: ratio}
	for i, c := range chunks {
		if err := check(fmt.Sprintf("chunk %d", i), c, false); err != nil {
			return Request{}, err
		}
		req.Chunks = append(req.Chunks, tokens[c.Begin:c.End:c.End])
	}
	if err := check("question", question, false); err != nil {
		return Request{}, err
	}
	if question.End != len(tokens) {
		return Request{}, fmt.Errorf("%w: question ends at %d, prompt has %d tokens", ErrOverlap, question.End, len(tokens))
	}
	req.Question = tokens[question.Begin:question.End:question.End]
	return req, nil
}

// Layout is where each segment of a request sits in the prompt.
type Layout struct {
	// Prefix is [0, |S|).
	Prefix Span
	// Chunks[i] is C_i's span.
	Chunks []Span
	// Question is Q's span; Question.End is the prompt length.
	Question Span
}

// Context is the span of all chunk tokens, [|S|, Question.Begin).
func (l Layout) Context() Span { return Span{l.Prefix.End, l.Question.Begin} }

// Total is the prompt length.
func (l Layout) Total() int { return l.Question.End }

// Layout computes the segments' spans.
func (r *Request) Layout() Layout {
	l := Layout{Prefix: Span{0, len(r.Prefix)}, Chunks: make([]Span, len(r.Chunks))}
	off := len(r.Prefix)
	for i, c := range r.Chunks {
		l.Chunks[i] = Span{off, off + len(c)}
		off += len(c)
	}
	l.Question = Span{off, off + len(r.Question)}
	return l
}

// Tokens returns the whole prompt S + C_1..C_k + Q as one new slice.
func (r *Request) Tokens() []int32 {
	l := r.Layout()
	out := make([]int32, 0, l.Total())
	out = append(out, r.Prefix...)
	for _, c := range r.Chunks {
		out = append(out, c...)
	}
	return append(out, r.Question...)
}

// Validate checks the request against a vocabulary size and a position
// limit (either <= 0 skips that check) and that the strategy exists.
func (r *Request) Validate(vocab, maxPositions int) error {
	if math.IsNaN(r.Ratio) || r.Ratio < 0 || r.Ratio > 1 {
		return fmt.Errorf("%w: got %v", ErrRatio, r.Ratio)
	}
	name := r.strategyName()
	if _, ok := lookupStrategy(name); !ok {
		return fmt.Errorf("%w %q (registered: %v)", ErrStrategy, name, Strategies())
	}
	if len(r.Question) == 0 {
		return fmt.Errorf("%w: question", ErrEmptySegment)
	}
	for i, c := range r.Chunks {
		if len(c) == 0 {
			return fmt.Errorf("%w: chunk %d", ErrEmptySegment, i)
		}
	}
	total := r.Layout().Total()
	if maxPositions > 0 && total > maxPositions {
		return fmt.Errorf("%w: %d tokens, model limit %d", ErrTooLong, total, maxPositions)
	}
	if vocab > 0 {
		check := func(what string, ts []int32) error {
			for i, t := range ts {
				if t < 0 || int(t) >= vocab {
					return fmt.Errorf("%w: %s token %d is %d, vocab [0, %d)", ErrToken, what, i, t, vocab)
				}
			}
			return nil
		}
		if err := check("prefix", r.Prefix); err != nil {
			return err
		}
		for i, c := range r.Chunks {
			if err := check(fmt.Sprintf("chunk %d", i), c); err != nil {
				return err
			}
		}
		if err := check("question", r.Question); err != nil {
			return err
		}
	}
	return nil
}

func (r *Request) strategyName() string {
	if r.Strategy == "" {
		return DefaultStrategy
	}
	return r.Strategy
}
