package fusion

import (
	"context"
	"errors"
	"fmt"

	"github.com/fusionrag/fusionrag/chunkkv"
	"github.com/fusionrag/fusionrag/model"
)

// Builder computes raw and fused chunk KV for one model and one S. It is
// safe for concurrent use (the model is; S's KV is only read).
//
// Storage convention (chunkkv's, shared with the recompute stage): chunk
// KV is position-free, K before RoPE, its positions [s, s+|C|) as if the
// chunk started right after S (s = |S|). Moving it elsewhere is exact (model.Cache.Shift).
type Builder struct {
	m      *model.Model
	prefix []int32
	s      *model.Cache // S's KV at [0, |S|); nil when S is empty
}

// ErrTooLong: S + neighbours + chunk do not fit the model's positions.
var ErrTooLong = errors.New("fusion: chunk does not fit the model's context")

// NewBuilder prefills S once.
func NewBuilder(ctx context.Context, m *model.Model, prefix []int32) (*Builder, error) {
	if m == nil {
		return nil, errors.New("fusion: NewBuilder: nil model")
	}
	b := &Builder{m: m, prefix: append([]int32(nil), prefix...)}
	if len(prefix) == 0 {
		return b, nil
	}
	if len(prefix) >= m.Config.MaxPositions {
		return nil, fmt.Errorf("%w: S has %d tokens, model limit %d", ErrTooLong, len(prefix), m.Config.MaxPositions)
	}
	pos := make([]int32, len(prefix))
	for i := range pos {
		pos[i] = int32(i)
	}
	res, err := m.Forward(ctx, nil, model.Batch{Tokens: b.prefix, Pos: pos}, model.ForwardOptions{ReturnKV: true})
	if err != nil {
		return nil, fmt.Errorf("fusion: prefill of S: %w", err)
	}
	b.s = res.KV
	return b, nil
}

// Prefix returns S.
func (b *Builder) Prefix() []int32 { return b.prefix }

// PrefixKV returns S's KV (shared: do not modify); nil for an empty S.
func (b *Builder) PrefixKV() *model.Cache { return b.s }

// Raw returns the raw KV of chunk: the prefill of S + C keeping C's slice,
// positions [s, s+|C|).
func (b *Builder) Raw(ctx context.Context, chunk []int32) (*model.Cache, error) {
	if len(chunk) == 0 {
		return nil, errors.New("fusion: empty chunk")
	}
	if s := len(b.prefix); s+len(chunk) > b.m.Config.MaxPositions {
		return nil, fmt.Errorf("%w: |S| %d + chunk %d > %d", ErrTooLong, s, len(chunk), b.m.Config.MaxPositions)
	}
	return chunkkv.RawKV(ctx, b.m, b.s, len(b.prefix), chunk)
}

// Fits returns how many of the neighbours (with these token counts, most
// similar first) fit in front of a chunk of chunkLen tokens: the longest
// prefix of the list with |S| + their tokens + chunkLen <= MaxPositions.
func (b *Builder) Fits(chunkLen int, neighbourLens []int) int {
	used := len(b.prefix) + chunkLen
	for i, n := range neighbourLens {
		if used+n > b.m.Config.MaxPositions {
			return i
		}
		used += n
	}
	return len(neighbourLens)
}

// Fused returns the fused KV of chunk: C prefilled on top of S and its
// neighbours' raw KV laid out back to back, most similar first,
// [S | N_1 | ... | N_n | C], each neighbour moved to its offset by RoPE
// (its stored positions [s, s+|N_j|) shifted to [o_j, o_j+|N_j|)); the
// result is C's slice, shifted back to start at s. neighbours are raw KV in
// the storage convention and are not modified. With no neighbours this is
// exactly Raw (the same pass).
func (b *Builder) Fused(ctx context.Context, chunk []int32, neighbours []*model.Cache) (*model.Cache, error) {
	if len(chunk) == 0 {
		return nil, errors.New("fusion: empty chunk")
	}
	s := len(b.prefix)
	total := 0
	for i, n := range neighbours {
		if n.Len() == 0 {
			return nil, fmt.Errorf("fusion: neighbour %d has no KV", i)
		}
		if n.Layers != b.m.Config.Layers || n.KVHeads != b.m.Config.KVHeads || n.HeadDim != b.m.Config.HeadDim {
			return nil, fmt.Errorf("fusion: neighbour %d KV shape [%d,%d,%d] does not fit the model", i, n.Layers, n.KVHeads, n.HeadDim)
		}
		total += n.Len()
	}
	if s+total+len(chunk) > b.m.Config.MaxPositions {
		return nil, fmt.Errorf("%w: |S| %d + neighbours %d + chunk %d > %d", ErrTooLong, s, total, len(chunk), b.m.Config.MaxPositions)
	}
	if len(neighbours) == 0 {
		return b.Raw(ctx, chunk)
	}
	cache := model.NewCache(b.m.Config, s+total)
	if b.s != nil {
		cache.Append(b.s)
	}
	off := int32(s)
	for _, n := range neighbours {
		at := cache.Len()
		cache.Append(n)
		// Place: the neighbour's entry i goes to position off+i, whatever
		// its stored positions (s+i by convention).
		for i := at; i < cache.Len(); i++ {
			cache.Pos[i] = off + int32(i-at)
		}
		off += int32(n.Len())
	}
	bt := model.Batch{Tokens: chunk, Pos: make([]int32, len(chunk))}
	for i := range bt.Pos {
		bt.Pos[i] = off + int32(i)
	}
	res, err := b.m.Forward(ctx, cache, bt, model.ForwardOptions{ReturnKV: true})
	if err != nil {
		return nil, err
	}
	kv := res.KV
	kv.Shift(int32(s) - off)
	return kv, nil
}
