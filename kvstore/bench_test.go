package kvstore

import (
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/fusionrag/fusionrag/fingerprint"
	"github.com/fusionrag/fusionrag/internal/redistest"
)

// Benchmarks: Get and Put throughput per tier for one 512-token chunk, next
// to a plain copy of the same bytes measured in the same run (the ceiling).
// Compare the GB/s columns as ratios to "memcpy"; absolute numbers depend on
// the machine.
//
//	go test ./kvstore -run '^$' -bench Store -benchtime 10x
var benchShapes = []struct {
	name string
	s    shape
}{
	// Llama-3-8B: 32 layers x 8 KV heads x 128 dims, fp16: 64 MiB per 512 tokens.
	{"llama3-8b", shape{layers: 32, kvHeads: 8, headDim: 128, tokens: 512}},
	// stories260K: 5 layers x 4 KV heads x 8 dims, fp16: 320 KiB per 512 tokens.
	{"stories260K", shape{layers: 5, kvHeads: 4, headDim: 8, tokens: 512}},
}

// benchBlob fills a blob with pseudo-random fp16 bits (building it from
// float32 would need twice its size again).
func benchBlob(b *testing.B, s shape) *Blob {
	toks := testTokens(1, s.tokens)
	blob, err := NewBlob(Meta{
		DType: Float16, Layers: s.layers, KVHeads: s.kvHeads, HeadDim: s.headDim, Tokens: s.tokens,
		PositionFree: true, Key: fingerprint.ChunkKey(testNS, toks), Check: fingerprint.CheckOf(toks),
	})
	if err != nil {
		b.Fatal(err)
	}
	r := rand.New(rand.NewPCG(1, 2))
	p := blob.Payload()
	for i := 0; i+8 <= len(p); i += 8 {
		binary.LittleEndian.PutUint64(p[i:], r.Uint64())
	}
	if _, err := blob.Encode(); err != nil {
		b.Fatal(err)
	}
	return blob
}

func BenchmarkStore(b *testing.B) {
	ctx := context.Background()
	for _, sh := range benchShapes {
		blob := benchBlob(b, sh.s)
		size := int64(blob.Size())
		b.Run(fmt.Sprintf("%s/memcpy", sh.name), func(b *testing.B) {
			dst := make([]byte, size)
			copy(dst, blob.raw) // fault the pages in before timing
			b.SetBytes(size)
			for b.Loop() {
				copy(dst, blob.raw)
			}
		})
		b.Run(fmt.Sprintf("%s/encode", sh.name), func(b *testing.B) {
			// A fresh blob's Encode: the xxh3 checksum over the payload.
			nb := &Blob{Meta: blob.Meta, raw: blob.raw}
			b.SetBytes(size)
			for b.Loop() {
				nb.sealed = false
				if _, err := nb.Encode(); err != nil {
					b.Fatal(err)
				}
			}
		})
		tiers := []struct {
			name string
			open func(b *testing.B) Store
		}{
			{"mem", func(b *testing.B) Store {
				m, _ := NewMem(MemConfig{MaxBytes: 3 * size})
				return m
			}},
			{"disk-mmap", func(b *testing.B) Store {
				d, err := OpenDisk(DiskConfig{Dir: b.TempDir(), MaxBytes: 3 * size, Mmap: true})
				if err != nil {
					b.Fatal(err)
				}
				return d
			}},
			{"disk", func(b *testing.B) Store {
				d, err := OpenDisk(DiskConfig{Dir: b.TempDir(), MaxBytes: 3 * size})
				if err != nil {
					b.Fatal(err)
				}
				return d
			}},
			{"redis", func(b *testing.B) Store {
				srv := redistest.Start(b)
				s, err := Open("redis://" + srv.Addr + "/0?part=8MiB&timeout=30s")
				if err != nil {
					b.Fatal(err)
				}
				return s
			}},
		}
		for _, tier := range tiers {
			b.Run(fmt.Sprintf("%s/%s", sh.name, tier.name), func(b *testing.B) {
				s := tier.open(b)
				defer s.Close()
				b.Run("put", func(b *testing.B) {
					b.SetBytes(size)
					for b.Loop() {
						if err := s.Put(ctx, blob); err != nil {
							b.Fatal(err)
						}
					}
				})
				b.Run("get", func(b *testing.B) {
					if err := s.Put(ctx, blob); err != nil {
						b.Fatal(err)
					}
					b.SetBytes(size)
					for b.Loop() {
						got, err := s.Get(ctx, blob.Key, blob.Check)
						if err != nil {
							b.Fatal(err)
						}
						got.Release()
					}
				})
				// get-owned: a blob in ordinary memory, as Tiered hands out
				// (it copies a blob that still needs Release).
				b.Run("get-owned", func(b *testing.B) {
					if err := s.Put(ctx, blob); err != nil {
						b.Fatal(err)
					}
					b.SetBytes(size)
					for b.Loop() {
						got, err := s.Get(ctx, blob.Key, blob.Check)
						if err != nil {
							b.Fatal(err)
						}
						if got.release != nil {
							c := got.Clone()
							got.Release()
							got = c
						}
						_ = got
					}
				})
			})
		}
	}
}

// BenchmarkConvert: float32 <-> f32/f16/bf16 conversion of 1M elements
// (SetBytes counts the float32 side), against a float32 copy of them.
func BenchmarkConvert(b *testing.B) {
	n := 1 << 20
	src := make([]float32, n)
	r := rand.New(rand.NewPCG(5, 6))
	for i := range src {
		src[i] = float32(r.NormFloat64())
	}
	dst := make([]float32, n)
	b.Run("copy-f32", func(b *testing.B) {
		b.SetBytes(int64(4 * n))
		for b.Loop() {
			copy(dst, src)
		}
	})
	for _, dt := range allDTypes {
		buf := make([]byte, n*dt.Size())
		b.Run("encode-"+dt.String(), func(b *testing.B) {
			b.SetBytes(int64(4 * n))
			for b.Loop() {
				EncodeFloat32(buf, src, dt)
			}
		})
		b.Run("decode-"+dt.String(), func(b *testing.B) {
			b.SetBytes(int64(4 * n))
			for b.Loop() {
				DecodeFloat32(dst, buf, dt)
			}
		})
	}
}
