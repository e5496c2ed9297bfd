package cuda

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/fusionrag/fusionrag/internal/shareddata"
	"github.com/fusionrag/fusionrag/model"
)

// captureBackend is a cpu-equivalent backend that records the weights Load
// binds, so tests can hand exactly the model's fp32 weights to a Runtime.
type captureBackend struct {
	model.Backend
	cfg     model.Config
	weights []model.NamedWeight
}

func (c *captureBackend) Name() string { return captureName }
func (c *captureBackend) BindWeights(cfg model.Config, ws []model.NamedWeight) error {
	c.cfg, c.weights = cfg, ws
	return nil
}

const captureName = "cuda-test-capture"

var (
	loadMu      sync.Mutex // serialises loadCaptured
	captureMu   sync.Mutex // guards lastCapture
	lastCapture *captureBackend
)

func init() {
	model.RegisterBackend(captureName, func() (model.Backend, error) {
		cpu, err := model.NewBackend("cpu")
		if err != nil {
			return nil, err
		}
		c := &captureBackend{Backend: cpu}
		captureMu.Lock()
		lastCapture = c
		captureMu.Unlock()
		return c, nil
	})
}

// loadCaptured loads path on the cpu backend (the reference) and returns its
// named weights.
func loadCaptured(t testing.TB, path string) (*model.Model, []model.NamedWeight) {
	t.Helper()
	loadMu.Lock()
	defer loadMu.Unlock()
	m, err := model.Load(path, model.LoadOptions{Backend: captureName})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	captureMu.Lock()
	defer captureMu.Unlock()
	return m, lastCapture.weights
}

// testModels are the shapes the runtime is checked on: the real trained
// stories260K (llama2.c, interleaved RoPE, GQA 8/4, head dim 8) and
// synthetic HF models covering rotate_half, GQA 4:1, QKV bias, untied
// classifier, llama3 RoPE scaling and head dims 64 and 128.
func testModels(t testing.TB) map[string]func(testing.TB) string {
	return map[string]func(testing.TB) string{
		"stories260K": func(t testing.TB) string {
			return shareddata.Path(t, "models/stories260K/stories260K.bin")
		},
		"llama-gqa": synthDir(model.Config{Arch: model.ArchLlama, Dim: 64, HiddenDim: 96, Layers: 2, Heads: 8, KVHeads: 2,
			HeadDim: 16, Vocab: 300, MaxPositions: 1024, RopeTheta: 500000, NormEps: 1e-5, TiedEmbeddings: true, BOS: 1, EOS: []int32{2},
			RopeScaling: &model.RopeScaling{Type: "llama3", Factor: 8, LowFreqFactor: 1, HighFreqFactor: 4, OriginalMaxPositions: 64}}),
		// Head dims 64 and 128 take the tensor-core attention on the GPU.
		"llama-hd64": synthDir(model.Config{Arch: model.ArchLlama, Dim: 128, HiddenDim: 256, Layers: 2, Heads: 2, KVHeads: 1,
			HeadDim: 64, Vocab: 300, MaxPositions: 512, RopeTheta: 10000, NormEps: 1e-5, TiedEmbeddings: true, BOS: 1, EOS: []int32{2}}),
		"mistral-hd128": synthDir(model.Config{Arch: model.ArchMistral, Dim: 256, HiddenDim: 256, Layers: 2, Heads: 2, KVHeads: 2,
			HeadDim: 128, Vocab: 300, MaxPositions: 512, RopeTheta: 1e6, NormEps: 1e-5, BOS: 1, EOS: []int32{2}}),
		"qwen2-bias": synthDir(model.Config{Arch: model.ArchQwen2, Dim: 48, HiddenDim: 80, Layers: 2, Heads: 4, KVHeads: 4,
			HeadDim: 12, Vocab: 280, MaxPositions: 512, RopeTheta: 10000, NormEps: 1e-6, QKVBias: true, BOS: 1, EOS: []int32{2}}),
	}
}

func synthDir(cfg model.Config) func(testing.TB) string {
	return func(t testing.TB) string {
		dir := t.TempDir()
		if err := model.WriteSynthetic(dir, cfg, 7, model.SaveOptions{}); err != nil {
			t.Fatal(err)
		}
		return dir
	}
}

// tolerance is the largest |got - want| accepted, relative to max|want|
// (so it reads the same for logits of scale 10 and weights of scale 0.1).
// Observed on hostOps (worst over the models below) and why:
//
//   - F32: the runtime and the cpu backend both compute in fp32 and differ
//     only in summation order (tiled online softmax vs two-pass softmax,
//     fused GEMMs): observed 4e-6, bound 2e-5.
//   - F16: weights, K, V and GEMM inputs rounded to 11 significant bits:
//     observed 1e-3, bound 5e-3.
//   - BF16: 8 significant bits (relative error up to 2^-9 per rounding);
//     the worst case is stories260K's sharp attention weights with head
//     dim 8 (0.38 vs 0.35 where the largest weight is 1): observed 3.8e-2,
var tolerance = map[DType]float64{F32: 2e-5, BF16: 6e-2, F16: 5e-3}

// compare checks every part of a Runtime result against the cpu result.
func compare(t *testing.T, got *Result, want *model.ForwardResult, layers []int, tol float64) {
	t.Helper()
	if len(got.Logits) != len(want.Logits) {
		t.Fatalf("logits rows: got %d, want %d", len(got.Logits), len(want.Logits))
	}
	for i := range want.Logits {
		if err := closeTo(fmt.Sprintf("logits[%d]", i), got.Logits[i], want.Logits[i], tol); err != nil {
			t.Error(err)
		}
	}
	if len(got.Attention) != len(layers) {
		t.Errorf("attention of %d layers, want %d", len(got.Attention), len(layers))
	}
	// Only the layers asked for: the cpu backend's Forward also returns the
	// others when AttentionSum is set (reported to the model owner).
	for _, l := range layers {
		wa, ga := want.Attention[l], got.Attention[l]
		if ga == nil {
			t.Errorf("attention layer %d missing", l)
			continue
		}
		if ga.Heads != wa.Heads || ga.Queries != wa.Queries || ga.Keys != wa.Keys {
			t.Errorf("attention layer %d shape: got [%d %d %d], want [%d %d %d]", l, ga.Heads, ga.Queries, ga.Keys, wa.Heads, wa.Queries, wa.Keys)
			continue
		}
		if err := closeTo(fmt.Sprintf("attention[%d].Sum", l), ga.Sum, wa.Sum, tol); err != nil {
			t.Error(err)
		}
		if (ga.Weights == nil) != (wa.Weights == nil) {
			t.Errorf("attention layer %d: weights present %v, want %v", l, ga.Weights != nil, wa.Weights != nil)
		} else if err := closeTo(fmt.Sprintf("attention[%d].Weights", l), ga.Weights, wa.Weights, tol); err != nil {
			t.Error(err)
		}
	}
}

func compareCache(t *testing.T, what string, got *Cache, want *model.Cache, tol float64) {
	t.Helper()
	hc, err := got.Download()
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(hc.Pos) != fmt.Sprint(want.Pos) {
		t.Fatalf("%s positions: got %v, want %v", what, hc.Pos, want.Pos)
	}
	for l := range want.K {
		if err := closeTo(fmt.Sprintf("%s K[%d]", what, l), hc.K[l], want.K[l], tol); err != nil {
			t.Error(err)
		}
		if err := closeTo(fmt.Sprintf("%s V[%d]", what, l), hc.V[l], want.V[l], tol); err != nil {
			t.Error(err)
		}
	}
}

func seq(begin, end int) []int32 {
	p := make([]int32, 0, end-begin)
	for i := begin; i < end; i++ {
		p = append(p, int32(i))
	}
	return p
}

func randomTokens(rng *rand.Rand, n, vocab int) []int32 {
	t := make([]int32, n)
	for i := range t {
		t[i] = int32(3 + rng.IntN(vocab-3))
	}
	return t
}

// TestRuntimeMatchesCPU runs the device forward pass on hostOps (the Go
// mirror of the kernels) against package model's cpu backend, in every
// DType, through the three passes FusionRAG makes: a full prefill, a
// query-subset pass over an assembled cache with shadowed entries, and an
// appending pass.
func TestRuntimeMatchesCPU(t *testing.T) {
	for name, mk := range testModels(t) {
		t.Run(name, func(t *testing.T) {
			path := mk(t)
			ref, weights := loadCaptured(t, path)
			for _, dt := range []DType{F32, BF16, F16} {
				t.Run(dt.String(), func(t *testing.T) {
					rt, err := newRuntime(newHostOps(dt), ref.Config, weights)
					if err != nil {
						t.Fatal(err)
					}
					defer rt.Close()
					checkPasses(t, rt, ref, tolerance[dt])
				})
			}
		})
	}
}

func checkPasses(t *testing.T, rt *Runtime, ref *model.Model, tol float64) {
	ctx := context.Background()
	cfg := ref.Config
	rng := rand.New(rand.NewPCG(3, 4))
	const total = 70 // > 2 query tiles and key tiles, not a multiple of either
	tokens := randomTokens(rng, total, cfg.Vocab)
	last := cfg.Layers - 1

	// 1. Full prefill: logits everywhere, full attention of the last layer.
	full := model.Batch{Tokens: tokens, Pos: seq(0, total)}
	opts := model.ForwardOptions{Logits: []int{0, 33, total - 1}, AttentionLayers: []int{0, last}, ReturnKV: true}
	want, err := ref.Forward(ctx, nil, full, opts)
	if err != nil {
		t.Fatal(err)
	}
	got, err := rt.Forward(ctx, nil, full, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Run("prefill", func(t *testing.T) {
		compare(t, got, want, []int{0, last}, tol)
		compareCache(t, "returned KV", got.KV, want.KV, tol)
	})
	got.KV.Free()

	// 2. Query subset over an assembled cache: the cache holds the exact KV
	// of positions [0, 60) (from the cpu), the batch recomputes 5 of them
	// (shadowing those entries) and the 10 last tokens; sums only.
	dc, err := rt.Upload(want.KV.Slice(0, 60))
	if err != nil {
		t.Fatal(err)
	}
	defer dc.Free()
	rows := []int{3, 17, 31, 45, 59}
	for i := 60; i < total; i++ {
		rows = append(rows, i)
	}
	sub := model.Batch{}
	for _, r := range rows {
		sub.Tokens = append(sub.Tokens, tokens[r])
		sub.Pos = append(sub.Pos, int32(r))
	}
	opts = model.ForwardOptions{Logits: []int{len(rows) - 1}, AttentionLayers: []int{last}, AttentionSum: true, ReturnKV: true}
	want2, err := ref.Forward(ctx, want.KV.Slice(0, 60), sub, opts)
	if err != nil {
		t.Fatal(err)
	}
	got2, err := rt.Forward(ctx, dc, sub, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Run("subset", func(t *testing.T) {
		compare(t, got2, want2, []int{last}, tol)
		compareCache(t, "subset KV", got2.KV, want2.KV, tol)
		// A full prefill at those rows computes the same function.
		if err := closeTo("subset vs prefill logits", got2.Logits[0], got.Logits[2], tol); err != nil {
			t.Error(err)
		}
	})
	got2.KV.Free()

	// 3. Append: the cache after the pass holds the shadowed entries
	// overwritten and the fresh ones appended.
	hostCache := want.KV.Slice(0, 60).Clone()
	opts = model.ForwardOptions{Logits: []int{len(rows) - 1}, Append: true}
	want3, err := ref.Forward(ctx, hostCache, sub, opts)
	if err != nil {
		t.Fatal(err)
	}
	got3, err := rt.Forward(ctx, dc, sub, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Run("append", func(t *testing.T) {
		compare(t, got3, want3, nil, tol)
		compareCache(t, "appended cache", dc, hostCache, tol)
	})
}

// greedyDecode decodes steps tokens greedily from a lone BOS (id 1) at
// position 0, one token per call of fwd, which returns the logits of the
// batch's one row; a tie goes to the lowest id.
func greedyDecode(t testing.TB, steps int, fwd func(b model.Batch) ([]float32, error)) []int32 {
	t.Helper()
	var out []int32
	b := model.Batch{Tokens: []int32{1}, Pos: []int32{0}}
	for i := range steps {
		lg, err := fwd(b)
		if err != nil {
			t.Fatal(err)
		}
		best := model.Argmax(lg)
		out = append(out, best)
		b = model.Batch{Tokens: []int32{best}, Pos: []int32{int32(i + 1)}}
	}
	return out
}

// TestRuntimeGoldenStories260K checks the runtime on hostOps in fp32
// against the golden greedy continuation through the incremental path:
// prefill, then one token at a time appended to a device cache.
func TestRuntimeGreedyMatchesCPU(t *testing.T) {
	path := shareddata.Path(t, "models/stories260K/stories260K.bin")
	ref, weights := loadCaptured(t, path)
	rt, err := newRuntime(newHostOps(F32), ref.Config, weights)
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close()
	ctx := context.Background()
	hc := model.NewCache(ref.Config, 64)
	want := greedyDecode(t, 40, func(b model.Batch) ([]float32, error) {
		r, err := ref.Forward(ctx, hc, b, model.ForwardOptions{Logits: []int{0}, Append: true})
		if err != nil {
			return nil, err
		}
		return r.Logits[0], nil
	})
	dc, err := rt.NewCache(4)
	if err != nil {
		t.Fatal(err)
	}
	defer dc.Free()
	got := greedyDecode(t, 40, func(b model.Batch) ([]float32, error) {
		r, err := rt.Forward(ctx, dc, b, model.ForwardOptions{Logits: []int{0}, Append: true})
		if err != nil {
			return nil, err
		}
		return r.Logits[0], nil
	})
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("greedy tokens:\n got %v\nwant %v", got, want)
	}
	if dc.Len() != 40 {
		t.Errorf("cache holds %d entries, want 40", dc.Len())
	}
}

// TestCacheAssembly builds a device cache from chunks with Clone, SetPos
// and Append, as FusionRAG assembles chunk KVs at their real offsets, and
// checks it against the same assembly on host caches.
func TestCacheAssembly(t *testing.T) {
	ref, weights := loadCaptured(t, synthDir(model.Config{Arch: model.ArchLlama, Dim: 32, HiddenDim: 48, Layers: 2, Heads: 4,
		KVHeads: 2, HeadDim: 8, Vocab: 300, MaxPositions: 256, RopeTheta: 10000, NormEps: 1e-5, TiedEmbeddings: true, BOS: 1})(t))
	rt, err := newRuntime(newHostOps(F32), ref.Config, weights)
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close()
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(8, 9))
	// Two chunks prefilled at offset 0 each (position-normalised).
	var chunks []*Cache
	var hosts []*model.Cache
	for _, n := range []int{9, 14} {
		b := model.Batch{Tokens: randomTokens(rng, n, ref.Config.Vocab), Pos: seq(0, n)}
		r, err := rt.Forward(ctx, nil, b, model.ForwardOptions{ReturnKV: true})
		if err != nil {
			t.Fatal(err)
		}
		defer r.KV.Free()
		chunks = append(chunks, r.KV)
		h, err := r.KV.Download()
		if err != nil {
			t.Fatal(err)
		}
		hosts = append(hosts, h)
	}
	asm, err := rt.NewCache(1)
	if err != nil {
		t.Fatal(err)
	}
	defer asm.Free()
	want := model.NewCache(ref.Config, 0)
	offset := int32(5)
	for i, ch := range chunks {
		cl, err := ch.Clone(0, ch.Len())
		if err != nil {
			t.Fatal(err)
		}
		pos := cl.Pos()
		for j := range pos {
			pos[j] += offset
		}
		if err := cl.SetPos(pos); err != nil {
			t.Fatal(err)
		}
		if err := asm.Append(cl); err != nil {
			t.Fatal(err)
		}
		cl.Free()
		h := hosts[i].Clone()
		h.Shift(offset)
		want.Append(h)
		offset += int32(ch.Len())
	}
	compareCache(t, "assembled", asm, want, 0)
	part, err := asm.Clone(3, 12)
	if err != nil {
		t.Fatal(err)
	}
	defer part.Free()
	compareCache(t, "clone [3, 12)", part, want.Slice(3, 12), 0)
	if _, err := asm.Clone(5, 100); err == nil {
		t.Error("Clone past the end: no error")
	}
	if err := asm.SetPos(make([]int32, asm.Len()-1)); err == nil {
		t.Error("SetPos with a wrong length: no error")
	}
	bad := asm.Pos()
	bad[0] = 256
	if err := asm.SetPos(bad); !errors.Is(err, model.ErrPosition) {
		t.Errorf("SetPos past the limit: %v, want ErrPosition", err)
	}
}

func TestRuntimeBadInput(t *testing.T) {
	cfg := model.Config{Arch: model.ArchLlama, Dim: 16, HiddenDim: 32, Layers: 1, Heads: 2, KVHeads: 1, HeadDim: 8,
		Vocab: 50, MaxPositions: 64, RopeTheta: 10000, NormEps: 1e-5, TiedEmbeddings: true, BOS: -1}
	rt, err := newRandomRuntime(newHostOps(BF16), cfg, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close()
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		b    model.Batch
		opts model.ForwardOptions
		want error
	}{
		{"token past vocab", model.Batch{Tokens: []int32{50}, Pos: []int32{0}}, model.ForwardOptions{}, model.ErrToken},
		{"negative token", model.Batch{Tokens: []int32{-1}, Pos: []int32{0}}, model.ForwardOptions{}, model.ErrToken},
		{"position past limit", model.Batch{Tokens: []int32{3}, Pos: []int32{64}}, model.ForwardOptions{}, model.ErrPosition},
		{"positions not increasing", model.Batch{Tokens: []int32{3, 4}, Pos: []int32{5, 5}}, model.ForwardOptions{}, model.ErrPosition},
		{"empty batch", model.Batch{}, model.ForwardOptions{}, nil},
		{"length mismatch", model.Batch{Tokens: []int32{3}, Pos: []int32{0, 1}}, model.ForwardOptions{}, nil},
		{"logits index", model.Batch{Tokens: []int32{3}, Pos: []int32{0}}, model.ForwardOptions{Logits: []int{1}}, nil},
		{"attention layer", model.Batch{Tokens: []int32{3}, Pos: []int32{0}}, model.ForwardOptions{AttentionLayers: []int{1}}, nil},
		{"append without cache", model.Batch{Tokens: []int32{3}, Pos: []int32{0}}, model.ForwardOptions{Append: true}, nil},
	} {
		_, err := rt.Forward(ctx, nil, tc.b, tc.opts)
		if err == nil {
			t.Errorf("%s: no error", tc.name)
			continue
		}
		if tc.want != nil && !errors.Is(err, tc.want) {
			t.Errorf("%s: error %v, want %v", tc.name, err, tc.want)
		}
	}
	bad := cfg
	bad.HeadDim, bad.Dim = 256, 512
	if _, err := newRandomRuntime(newHostOps(BF16), bad, 1); !errors.Is(err, model.ErrUnsupported) {
		t.Errorf("head dim 256: error %v, want ErrUnsupported", err)
	}
	if _, err := newRuntime(newHostOps(BF16), cfg, nil); !errors.Is(err, model.ErrFormat) {
		t.Errorf("no weights: error %v, want ErrFormat", err)
	}
	ctxDone, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := rt.Forward(ctxDone, nil, model.Batch{Tokens: []int32{3}, Pos: []int32{0}}, model.ForwardOptions{}); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled context: error %v", err)
	}
	// A random model runs and gives finite logits.
	r, err := rt.Forward(ctx, nil, model.Batch{Tokens: []int32{3, 4, 5}, Pos: []int32{0, 1, 2}}, model.ForwardOptions{Logits: []int{2}})
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range r.Logits[0] {
		if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
			t.Fatalf("random model logits not finite: %v", r.Logits[0])
		}
	}
	rt.Close()
	if _, err := rt.Forward(ctx, nil, model.Batch{Tokens: []int32{3}, Pos: []int32{0}}, model.ForwardOptions{}); !errors.Is(err, ErrClosed) {
		t.Errorf("closed runtime: error %v, want ErrClosed", err)
	}
}
