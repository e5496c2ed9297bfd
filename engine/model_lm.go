package engine

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/fusionrag/fusionrag/model"
)

// ModelLM adapts a loaded *model.Model to LM and BatchLM. Each sequence
// keeps its own *model.Cache; Forward and ForwardBatch are safe for
// concurrent use on different caches.
type ModelLM struct {
	M *model.Model
}

var _ BatchLM = (*ModelLM)(nil)

// NewModelLM wraps m.
func NewModelLM(m *model.Model) *ModelLM { return &ModelLM{M: m} }

// NewSequence implements LM.
func (l *ModelLM) NewSequence() Sequence {
	return &modelSeq{m: l.M, cache: model.NewCache(l.M.Config, 0)}
}

// MaxPositions implements LM.
func (l *ModelLM) MaxPositions() int { return l.M.Config.MaxPositions }

// VocabSize implements LM.
func (l *ModelLM) VocabSize() int { return l.M.Config.Vocab }

// Fingerprint identifies the weights (for KV namespaces).
func (l *ModelLM) Fingerprint() string { return l.M.Fingerprint() }

// KVShape is the per-layer K/V shape of the model's cache.
func (l *ModelLM) KVShape() (layers, kvHeads, headDim int) {
	c := l.M.Config
	return c.Layers, c.KVHeads, c.HeadDim
}

type modelSeq struct {
	m     *model.Model
	cache *model.Cache
	pos   []int32 // scratch
}

func (s *modelSeq) Len() int { return s.cache.Len() }

func (s *modelSeq) Extend(ctx context.Context, tokens []int32) ([]float32, error) {
	a := s.arg(tokens)
	res, err := s.m.Forward(ctx, a.Cache, a.Batch, a.Opts)
	if err != nil {
		return nil, err
	}
	return res.Logits[0], nil
}

// arg is the model call that extends s by tokens.
func (s *modelSeq) arg(tokens []int32) model.SeqBatch {
	n := s.cache.Len()
	s.pos = s.pos[:0]
	for i := range tokens {
		s.pos = append(s.pos, int32(n+i))
	}
	return model.SeqBatch{Cache: s.cache, Batch: model.Batch{Tokens: tokens, Pos: s.pos},
		Opts: model.ForwardOptions{Logits: []int{len(tokens) - 1}, Append: true}}
}

// ExtendBatch implements BatchLM with one model.ForwardBatch: the weight
// GEMMs run once over every sequence's new rows, attention per sequence.
// Results are bit-identical to Extend (see model.ForwardBatch). A sequence
// the model refuses (a bad token, a position past the context) fails alone:
// the batch is run again without it.
func (l *ModelLM) ExtendBatch(ctx context.Context, seqs []Sequence, tokens [][]int32) ([][]float32, []error) {
	logits, errs := make([][]float32, len(seqs)), make([]error, len(seqs))
	var args []model.SeqBatch
	var idx []int // args[j] extends seqs[idx[j]]
	for i, sq := range seqs {
		ms, ok := sq.(*modelSeq)
		if !ok || ms.m != l.M {
			errs[i] = fmt.Errorf("engine: ExtendBatch: sequence %d (%T) is not from this ModelLM", i, sq)
			continue
		}
		args = append(args, ms.arg(tokens[i]))
		idx = append(idx, i)
	}
	for len(args) > 0 {
		res, err := l.M.ForwardBatch(ctx, args)
		var be *model.BatchError
		if errors.As(err, &be) {
			errs[idx[be.Seq]] = be.Err
			args = slices.Delete(args, be.Seq, be.Seq+1)
			idx = slices.Delete(idx, be.Seq, be.Seq+1)
			continue
		}
		for j, i := range idx {
			if err != nil {
				errs[i] = err
			} else {
				logits[i] = res[j].Logits[0]
			}
		}
		break
	}
	return logits, errs
}

// LoadKV implements kvSequence: it appends per-layer K (pre-RoPE) and V of
// positions [Len(), Len()+tokens).
func (s *modelSeq) LoadKV(k, v [][]float32, tokens int) error {
	c := s.m.Config
	if len(k) != c.Layers || len(v) != c.Layers {
		return fmt.Errorf("engine: KV has %d/%d layers, model %d", len(k), len(v), c.Layers)
	}
	want := tokens * c.KVDim()
	for l := range c.Layers {
		if len(k[l]) != want || len(v[l]) != want {
			return fmt.Errorf("engine: KV layer %d has %d/%d values, want %d", l, len(k[l]), len(v[l]), want)
		}
	}
	base := s.cache.Len()
	pos := make([]int32, tokens)
	for i := range pos {
		pos[i] = int32(base + i)
	}
	s.cache.Append(&model.Cache{Layers: c.Layers, KVHeads: c.KVHeads, HeadDim: c.HeadDim, Pos: pos, K: k, V: v})
	return nil
}

// StopIDs are the ids that end generation: model.Model.StopIDs (the
// model's and tokenizer's EOS ids, and BOS), the list Model.Generate and
// package bench stop at too.
func (l *ModelLM) StopIDs() []int32 { return l.M.StopIDs() }

// NewFromModel builds an engine serving m (which must have a tokenizer):
// its stop ids, its chat template, and a KV connector over
// cfg.StoreURL (shared, may be empty) and cfg.PushStoreURL (pushed KV);
// opts come after those.
func NewFromModel(cfg Config, m *model.Model, opts ...Option) (*Engine, error) {
	if err := cfg.Normalize(); err != nil {
		return nil, err
	}
	if m.Tokenizer == nil {
		return nil, fmt.Errorf("%w: the model has no tokenizer (pass one)", ErrConfig)
	}
	lm := NewModelLM(m)
	conn, err := OpenConnector(cfg.StoreURL, cfg.PushStoreURL, lm, m.Tokenizer.Fingerprint())
	if err != nil {
		return nil, err
	}
	e, err := New(cfg, lm, m.Tokenizer, append([]Option{WithStopIDs(lm.StopIDs()), WithConnector(conn)}, opts...)...)
	if err != nil {
		conn.Close()
		return nil, err
	}
	return e, nil
}
