package chunkkv

import (
	"context"
	"errors"
	"fmt"

	"github.com/fusionrag/fusionrag/model"
)

var (
	// ErrKVMismatch is matched (errors.Is) by every *KVMismatchError.
	ErrKVMismatch = errors.New("chunkkv: stored KV does not match")
	// ErrMiss is returned by a KV source for a key it does not hold.
	ErrMiss = errors.New("chunkkv: KV not found")
)

// KVMismatchError reports a stored KV that cannot be used for the request:
// its shape, token count or model fingerprint differs from what the model
// and the segment need. It matches ErrKVMismatch.
type KVMismatchError struct {
	// Key is the store key (hex) of the offending entry.
	Key string
	// Field names what differs: "shape", "tokens", "model", "check", "dtype",
	// "key", "placement".
	Field string
	// Got and Want describe the stored and the expected values.
	Got, Want string
}

func (e *KVMismatchError) Error() string {
	return fmt.Sprintf("chunkkv: stored KV %s: %s is %s, want %s", e.Key, e.Field, e.Got, e.Want)
}

// Is makes errors.Is(err, ErrKVMismatch) true.
func (e *KVMismatchError) Is(target error) bool { return target == ErrKVMismatch }

// Loaded is one KV read from a store.
type Loaded struct {
	// KV is the cache, positions as stored. It may be a view of the source's
	// memory (a file mapping, a memory tier buffer): read-only, and valid
	// until Release.
	KV *model.Cache
	// Size is the number of bytes read.
	Size int64
	// Release returns what the source lent; nil when nothing is to be
	// returned. Called once the KV has been copied into the assembly.
	Release func()
}

// RawKV computes a chunk's raw KV: the prefill of S + C keeping C's slice,
// i.e. chunk at positions [s, s+len(chunk)) on top of prefix, S's KV at
// [0, s) (nil when S is empty). The result is position-free in the storage
// convention (positions s.., K before RoPE) and is what
// fingerprint.ChunkKeyAfter with VariantRaw names.
func RawKV(ctx context.Context, m *model.Model, prefix *model.Cache, s int, chunk []int32) (*model.Cache, error) {
	b := model.Batch{Tokens: chunk, Pos: make([]int32, len(chunk))}
	for i := range b.Pos {
		b.Pos[i] = int32(s + i)
	}
	res, err := m.Forward(ctx, prefix, b, model.ForwardOptions{ReturnKV: true})
	if err != nil {
		return nil, err
	}
	return res.KV, nil
}
