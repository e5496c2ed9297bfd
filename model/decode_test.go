package model

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
)

// decodeModel is a small synthetic Llama (random weights, 64 positions)
// and a prefill of prompt on it: the cache and the last position's logits.
func decodeModel(t *testing.T, prompt int) (*Model, func() (*Cache, []float32)) {
	t.Helper()
	m, err := Synthetic(Config{Arch: ArchLlama, Dim: 16, HiddenDim: 32, Layers: 2, Heads: 2, KVHeads: 1, HeadDim: 8,
		Vocab: 40, MaxPositions: 64, RopeTheta: 10000, NormEps: 1e-5, TiedEmbeddings: true, BOS: 1, EOS: []int32{2}}, 5)
	if err != nil {
		t.Fatal(err)
	}
	return m, func() (*Cache, []float32) {
		c := NewCache(m.Config, prompt)
		toks := make([]int32, prompt)
		for i := range toks {
			toks[i] = int32(3 + i%30)
		}
		r, err := m.Forward(context.Background(), c, Batch{Tokens: toks, Pos: seq(0, prompt)},
			ForwardOptions{Logits: []int{prompt - 1}, Append: true})
		if err != nil {
			t.Fatal(err)
		}
		return c, r.Logits[0]
	}
}

// TestDecode: Model.Decode stops before each stop id, after emit says
// stop, after n ids and when the context is full; the ids it returns are a
// prefix of the unstopped run (the random stream depends only on the
// draws, so one seed replays the same text up to the stop).
func TestDecode(t *testing.T) {
	ctx := context.Background()
	m, prefill := decodeModel(t, 8)
	sampling := Sampling{Temperature: 8, Seed: 11}
	cache, last := prefill()
	ref, err := m.Decode(ctx, cache, last, 20, NewSampler(sampling), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(ref) != 20 || cache.Len() != 8+19 {
		t.Fatalf("unstopped: %d ids, cache %d; want 20 ids, cache 27 (the last id is not run)", len(ref), cache.Len())
	}
	if distinct := slices.Compact(slices.Sorted(slices.Values(ref))); len(distinct) < 5 {
		t.Fatalf("reference run %v has %d distinct ids: too few to test stops", ref, len(distinct))
	}

	type tc struct {
		name string
		n    int
		stop []int32
		emit int // emit returns false on the emit-th id (1-based); 0 never
		want []int32
	}
	unused := int32(-1)
	for id := range int32(m.Config.Vocab) {
		if !slices.Contains(ref, id) {
			unused = id
			break
		}
	}
	var tests []tc
	for i, id := range ref {
		if slices.Index(ref, id) == i { // first occurrence
			tests = append(tests, tc{name: fmt.Sprintf("stop at id %d (index %d)", id, i), n: 20, stop: []int32{99, id}, want: ref[:i]})
		}
	}
	tests = append(tests,
		tc{name: "n=0", n: 0, want: nil},
		tc{name: "n=5", n: 5, want: ref[:5]},
		tc{name: "emit stops after 3", n: 20, emit: 3, want: ref[:3]},
		tc{name: "stop ids not drawn", n: 20, stop: []int32{unused}, want: ref},
	)
	for _, tt := range tests {
		cache, last := prefill()
		var emitted []int32
		emit := func(id int32) bool {
			emitted = append(emitted, id)
			return tt.emit == 0 || len(emitted) < tt.emit
		}
		got, err := m.Decode(ctx, cache, last, tt.n, NewSampler(sampling), tt.stop, emit)
		if err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		if !slices.Equal(got, tt.want) || !slices.Equal(emitted, tt.want) {
			t.Errorf("%s:\n got %v\nemit %v\nwant %v", tt.name, got, emitted, tt.want)
		}
	}
}

// TestDecodeFillsContext: prompt + output never exceed MaxPositions (64),
// and reaching it is not an error.
func TestDecodeFillsContext(t *testing.T) {
	ctx := context.Background()
	for _, prompt := range []int{60, 63, 64} {
		m, prefill := decodeModel(t, prompt)
		cache, last := prefill()
		got, err := m.Decode(ctx, cache, last, 100, NewSampler(Sampling{Temperature: 1, Seed: 1}), nil, nil)
		if err != nil {
			t.Errorf("prompt %d: %v", prompt, err)
		}
		if want := 64 - prompt; len(got) != want {
			t.Errorf("prompt %d: %d ids, want %d (prompt + output = MaxPositions)", prompt, len(got), want)
		}
	}
}

func TestDecodeErrors(t *testing.T) {
	m, prefill := decodeModel(t, 4)
	cache, last := prefill()
	if _, err := m.Decode(context.Background(), cache, last[:10], 5, nil, nil, nil); err == nil {
		t.Error("10 last logits for a 40-id vocabulary: no error")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	got, err := m.Decode(ctx, cache, last, 5, nil, nil, nil)
	if !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled: %v ids, error %v; want context.Canceled", got, err)
	}
	if len(got) != 1 {
		t.Errorf("cancelled: %d ids, want 1 (the one picked before the first forward pass)", len(got))
	}
}
