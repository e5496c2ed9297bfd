package engine

import (
	"context"
	"encoding/binary"
	"math"
	"sync/atomic"
	"time"

	"github.com/fusionrag/fusionrag/model/tokenizer"
	"github.com/zeebo/xxh3"
)

// byteTok is a tiny deterministic tokenizer for tests of the HTTP layer:
// 0 <unk>, 1 BOS, 2 EOS, 3+b the byte b. Encode is one id per byte.
type byteTok struct{}

func (byteTok) Encode(text string) []int32 {
	ids := make([]int32, len(text))
	for i := range len(text) {
		ids[i] = int32(text[i]) + 3
	}
	return ids
}
func (t byteTok) EncodeOffsets(text string) ([]int32, []tokenizer.Span) { return t.Encode(text), nil }
func (byteTok) Decode(ids []int32) string {
	var b []byte
	for _, id := range ids {
		if id >= 3 && id < 259 {
			b = append(b, byte(id-3))
		}
	}
	return string(b)
}
func (byteTok) Token(id int32) string { return byteTok{}.Decode([]int32{id}) }
func (byteTok) VocabSize() int        { return 259 }
func (byteTok) BOS() int32            { return 1 }
func (byteTok) EOS() []int32          { return []int32{2} }
func (byteTok) AddBOS() bool          { return true }
func (byteTok) Fingerprint() string   { return "bytetok-v1" }

// fakeLM is a deterministic stand-in for a model in tests of the scheduler
// and the HTTP layer (it can be made slow, which a real small model cannot
// be on demand). The logits after a prefix are a function of the hash of the
// whole prefix: they favour one lowercase letter or a space, and EOS with a
// small probability, so greedy output depends on every prompt token (and
// cross-talk between sequences would show).
type fakeLM struct {
	vocab    int
	maxPos   int
	perToken time.Duration // sleep per Extend call
	eosEvery int           // if > 0, greedy picks EOS when hash%eosEvery == 0
	extends  atomic.Int64
	live     atomic.Int64 // sequences extended at this moment
	peak     atomic.Int64 // most sequences extended at once
}

func (f *fakeLM) NewSequence() Sequence { return &fakeSeq{lm: f} }
func (f *fakeLM) MaxPositions() int     { return f.maxPos }
func (f *fakeLM) VocabSize() int        { return f.vocab }

type fakeSeq struct {
	lm  *fakeLM
	ids []int32
}

func (s *fakeSeq) Len() int { return len(s.ids) }

func (s *fakeSeq) Extend(ctx context.Context, tokens []int32) ([]float32, error) {
	n := s.lm.live.Add(1)
	defer s.lm.live.Add(-1)
	for {
		p := s.lm.peak.Load()
		if n <= p || s.lm.peak.CompareAndSwap(p, n) {
			break
		}
	}
	s.lm.extends.Add(1)
	if s.lm.perToken > 0 {
		select {
		case <-time.After(s.lm.perToken):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	s.ids = append(s.ids, tokens...)
	return fakeLogits(s.ids, s.lm.vocab, s.lm.eosEvery), nil
}

// LoadKV implements kvSequence: the fake's "KV" is the token id in K[0].
func (s *fakeSeq) LoadKV(k, v [][]float32, tokens int) error {
	stride := len(k[0]) / tokens
	for i := range tokens {
		s.ids = append(s.ids, int32(k[0][i*stride]))
	}
	return nil
}

func fakeLogits(ids []int32, vocab, eosEvery int) []float32 {
	b := make([]byte, 4*len(ids))
	for i, id := range ids {
		binary.LittleEndian.PutUint32(b[4*i:], uint32(id))
	}
	h := xxh3.Hash(b)
	logits := make([]float32, vocab)
	for i := range logits {
		logits[i] = float32(math.Sin(float64(h%997 + uint64(i)))) // smooth noise in [-1, 1]
	}
	letters := " abcdefghijklmnopqrstuvwxyz"
	logits[int32(letters[h%uint64(len(letters))])+3] = 10
	if eosEvery > 0 && h%uint64(eosEvery) == 0 {
		logits[2] = 20
	}
	return logits
}
