package cuda

import (
	"context"
	"fmt"
	"testing"

	"github.com/fusionrag/fusionrag/internal/shareddata"
	"github.com/fusionrag/fusionrag/model"
)

// hostBackendName is the Backend on hostOps (fp32), registered for tests:
// the same code path model.Load takes with -tags cuda, minus the GPU.
const hostBackendName = "cuda-test-hostops"

func init() {
	model.RegisterBackend(hostBackendName, func() (model.Backend, error) {
		return newBackend(func() (ops, error) { return newHostOps(F32), nil }), nil
	})
}

// TestBackendThroughModel loads stories260K on the backend and checks
// model.Forward (whole passes through model.Forwarder, with Append on a host
// cache) and model.Step (host layers, device GEMMs through MatMulT) against
// the cpu backend.
func TestBackendThroughModel(t *testing.T) {
	path := shareddata.Path(t, "models/stories260K/stories260K.bin")
	ref, err := model.Load(path, model.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer ref.Close()
	dev, err := model.Load(path, model.LoadOptions{Backend: hostBackendName})
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	be := dev.Backend().(*Backend)
	if be.Runtime() == nil {
		t.Fatal("weights not bound")
	}
	ctx := context.Background()
	tol := tolerance[F32]

	// Prefill a prompt into a host cache, then decode 20 tokens greedily,
	// each appended: both backends must pick the same tokens.
	prompt := []int32{1, 403, 407, 261, 378, 425}
	run := func(m *model.Model) ([]int32, [][]float32, *model.Cache) {
		c := model.NewCache(m.Config, 64)
		b := model.Batch{Tokens: prompt, Pos: seq(0, len(prompt))}
		var toks []int32
		var lgs [][]float32
		for step := range 20 {
			r, err := m.Forward(ctx, c, b, model.ForwardOptions{Logits: []int{len(b.Tokens) - 1}, Append: true})
			if err != nil {
				t.Fatal(err)
			}
			lg := r.Logits[0]
			best := 0
			for j, v := range lg {
				if v > lg[best] {
					best = j
				}
			}
			toks = append(toks, int32(best))
			lgs = append(lgs, lg)
			b = model.Batch{Tokens: []int32{int32(best)}, Pos: []int32{int32(len(prompt) + step)}}
		}
		return toks, lgs, c
	}
	wantToks, wantLg, wantCache := run(ref)
	gotToks, gotLg, gotCache := run(dev)
	if fmt.Sprint(gotToks) != fmt.Sprint(wantToks) {
		t.Fatalf("greedy tokens:\n got %v\nwant %v", gotToks, wantToks)
	}
	for i := range wantLg {
		if err := closeTo(fmt.Sprintf("step %d logits", i), gotLg[i], wantLg[i], tol); err != nil {
			t.Error(err)
		}
	}
	if fmt.Sprint(gotCache.Pos) != fmt.Sprint(wantCache.Pos) {
		t.Fatalf("cache positions: got %v, want %v", gotCache.Pos, wantCache.Pos)
	}
	for l := range wantCache.K {
		if err := closeTo(fmt.Sprintf("cache K[%d]", l), gotCache.K[l], wantCache.K[l], tol); err != nil {
			t.Error(err)
		}
	}

	// Step: host layers with device GEMMs.
	b := model.Batch{Tokens: prompt, Pos: seq(0, len(prompt))}
	var last [2][]float32
	for i, m := range []*model.Model{ref, dev} {
		st, err := m.Embed(b)
		if err != nil {
			t.Fatal(err)
		}
		for range m.Config.Layers {
			if _, err := m.Step(ctx, nil, st, model.StepOptions{}); err != nil {
				t.Fatal(err)
			}
		}
		last[i] = m.Logits(st, []int{len(prompt) - 1})[0]
	}
	if err := closeTo("Step logits", last[1], last[0], tol); err != nil {
		t.Error(err)
	}
	if err := be.Err(); err != nil {
		t.Errorf("device GEMM fell back to the host: %v", err)
	}
}
