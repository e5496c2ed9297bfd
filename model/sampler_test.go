package model

import (
	"context"
	"math"
	"slices"
	"testing"
)

var (
	nan  = float32(math.NaN())
	inf  = float32(math.Inf(1))
	ninf = float32(math.Inf(-1))
)

func TestArgmax(t *testing.T) {
	tests := []struct {
		name string
		x    []float32
		want int32
	}{
		{"empty", nil, -1},
		{"one", []float32{-3}, 0},
		{"first maximum on ties", []float32{0.1, 2, 2, -1}, 1},
		{"NaN first never wins", []float32{nan, -5, 1}, 2},
		{"NaN later never wins", []float32{1, nan, 0}, 0},
		{"all NaN: lowest id", []float32{nan, nan}, 0},
		{"all -Inf: lowest id", []float32{ninf, ninf, ninf}, 0},
		{"-Inf beats NaN", []float32{nan, ninf}, 1},
		{"+Inf wins", []float32{1, inf, inf}, 1},
		{"negative values", []float32{-3, -1, -2}, 1},
	}
	for _, tt := range tests {
		if got := Argmax(tt.x); got != tt.want {
			t.Errorf("%s: Argmax(%v) = %d, want %d", tt.name, tt.x, got, tt.want)
		}
	}
}

// TestSamplerDeterministic: cases whose answer does not depend on the
// random stream (greedy, top-k 1, a single candidate, non-finite logits).
func TestSamplerDeterministic(t *testing.T) {
	tests := []struct {
		name   string
		p      Sampling
		logits []float32
		want   int32
	}{
		{"greedy ties: first", Sampling{}, []float32{0.1, 3, 3, -1, nan}, 1},
		{"negative temperature is greedy", Sampling{Temperature: -1}, []float32{0, 1}, 1},
		{"top-k 1 is greedy", Sampling{Temperature: 5, TopK: 1, Seed: 3}, []float32{0.1, 3, 3, -1, nan}, 1},
		{"only one finite candidate", Sampling{Temperature: 1}, []float32{ninf, nan, 0, ninf}, 2},
		{"all -Inf", Sampling{Temperature: 1}, []float32{ninf, ninf}, 0},
		{"all NaN", Sampling{Temperature: 1}, []float32{nan, nan}, 0},
		{"+Inf wins", Sampling{Temperature: 1}, []float32{0, inf, 1, inf}, 1},
		{"empty", Sampling{Temperature: 1}, nil, -1},
		{"single id", Sampling{Temperature: 1}, []float32{4}, 0},
		// softmax(T=1) of [3 0 -3] = [.95 .047 .002]: top-p 0.9 keeps id 0 alone.
		{"top-p smaller than the first", Sampling{Temperature: 1, TopP: 0.9}, []float32{-3, 3, 0}, 1},
		// A tiny top-p keeps exactly one id (the first whose mass reaches it).
		{"top-p tiny", Sampling{Temperature: 1, TopP: 1e-9}, []float32{1, 2, 3}, 2},
		{"top-k and top-p ties: lower id", Sampling{Temperature: 1, TopK: 1, TopP: 0.5}, []float32{2, 2}, 0},
	}
	for _, tt := range tests {
		s := NewSampler(tt.p)
		for range 50 {
			if got := s.Sample(tt.logits); got != tt.want {
				t.Fatalf("%s: Sample(%v) = %d, want %d", tt.name, tt.logits, got, tt.want)
			}
		}
	}
}

// TestSamplerSeed: the same Sampling replays the same ids, another seed
// gives other ids, and the stream is the engine's: PCG(seed,
// 0x9e3779b97f4a7c15), one Float64 per draw (the pinned ids were what the
// engine's own sampler drew before the samplers were merged; they are what
// a client sending seed 7 gets).
func TestSamplerSeed(t *testing.T) {
	logits := []float32{0.1, 3, 3, -1, nan, 2, 2.5}
	draw := func(p Sampling) []int32 {
		s := NewSampler(p)
		out := make([]int32, 24)
		for i := range out {
			out[i] = s.Sample(logits)
		}
		return out
	}
	// want: what the engine's own sampler (engine/sample.go before the
	// merge) drew for these parameters with seed 7.
	for _, tt := range []struct {
		p    Sampling
		want []int32
	}{
		{Sampling{Temperature: 1, Seed: 7}, []int32{2, 2, 2, 2, 1, 1, 1, 2, 2, 1, 1, 1, 2, 5, 6, 2, 5, 2, 1, 6, 1, 6, 2, 1}},
		{Sampling{Temperature: 0.7, TopK: 3, Seed: 7}, []int32{2, 2, 1, 2, 1, 1, 1, 1, 2, 1, 1, 1, 2, 2, 6, 1, 2, 2, 1, 6, 1, 6, 2, 1}},
		{Sampling{Temperature: 1.3, TopP: 0.8, Seed: 7}, []int32{2, 2, 2, 2, 1, 1, 1, 2, 2, 1, 1, 1, 2, 2, 6, 2, 2, 2, 1, 6, 1, 6, 2, 1}},
		{Sampling{Temperature: 1, TopK: 4, TopP: 0.9, Seed: 7}, []int32{2, 2, 2, 2, 1, 1, 1, 2, 2, 1, 1, 1, 2, 6, 6, 2, 6, 2, 1, 5, 1, 5, 2, 1}},
	} {
		a, b := draw(tt.p), draw(tt.p)
		if !slices.Equal(a, tt.want) || !slices.Equal(b, tt.want) {
			t.Errorf("%+v:\n got %v\n and %v\nwant %v (the stream changed: clients' seeded completions change)", tt.p, a, b, tt.want)
		}
		q := tt.p
		q.Seed++
		if c := draw(q); slices.Equal(a, c) {
			t.Errorf("%+v: seeds %d and %d drew the same 24 ids %v", tt.p, tt.p.Seed, q.Seed, a)
		}
	}
}

// TestSamplerDistribution: frequencies follow softmax(logits/T) restricted
// to top-k, then top-p, renormalised, within 5 standard deviations of a
// binomial count.
func TestSamplerDistribution(t *testing.T) {
	logits := []float32{2, 1, 0.5, 0, -1, ninf, nan}
	softmax := func(T float64, keep int) []float64 {
		p := make([]float64, len(logits))
		var s float64
		for i := range keep {
			p[i] = math.Exp(float64(logits[i]) / T)
			s += p[i]
		}
		for i := range p {
			p[i] /= s
		}
		return p
	}
	tests := []struct {
		name string
		p    Sampling
		want []float64
	}{
		{"T=1", Sampling{Temperature: 1}, softmax(1, 5)},
		{"T=0.5", Sampling{Temperature: 0.5}, softmax(0.5, 5)},
		{"T=1 top-p 1 is off", Sampling{Temperature: 1, TopP: 1}, softmax(1, 5)},
		{"top-k 2", Sampling{Temperature: 1, TopK: 2}, softmax(1, 2)},
		{"top-k past the candidates", Sampling{Temperature: 1, TopK: 100}, softmax(1, 5)},
		// softmax(T=1) = [.53 .20 .12 .07 .03]: top-p 0.7 keeps 2 ids (0.73 >= 0.7).
		{"top-p 0.7", Sampling{Temperature: 1, TopP: 0.7}, softmax(1, 2)},
		// top-k 3 renormalises to [.62 .23 .14]: top-p 0.8 keeps 2 ids (0.85).
		{"top-k 3 then top-p 0.8", Sampling{Temperature: 1, TopK: 3, TopP: 0.8}, softmax(1, 2)},
		{"top-k 3 then top-p 0.9", Sampling{Temperature: 1, TopK: 3, TopP: 0.9}, softmax(1, 3)},
	}
	const n = 20000
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.p.Seed = 1
			s := NewSampler(tt.p)
			count := make([]float64, len(logits))
			for range n {
				count[s.Sample(logits)]++
			}
			for i, p := range tt.want {
				sd := math.Sqrt(n * p * (1 - p))
				if d := math.Abs(count[i] - n*p); d > 5*sd+1e-9 {
					t.Errorf("id %d: %v draws, want %.0f ± %.0f", i, count[i], n*p, 5*sd)
				}
			}
		})
	}
}

func TestGenerateMatchesGolden(t *testing.T) {
	m := loadStories(t)
	var emitted []int32
	got, err := m.Generate(context.Background(), []int32{1, 403, 407, 261, 378}, 40, Greedy(), func(id int32) bool {
		emitted = append(emitted, id)
		return true
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []int32{432, 383, 286, 261, 376, 298, 315, 421, 395, 317, 426, 338, 401, 396, 267, 337, 410, 408, 419, 292,
		411, 322, 265, 282, 295, 433, 426, 385, 328, 432, 358, 394, 261, 370, 432, 352, 266, 268, 388, 426}
	if !slices.Equal(got, want) || !slices.Equal(emitted, want) {
		t.Errorf("Generate:\n got %v\nemit %v\nwant %v", got, emitted, want)
	}
	// Stops at the position limit without error.
	long, err := m.Generate(context.Background(), []int32{1}, 10000, NewSampler(Sampling{Temperature: 1, Seed: 3}), nil)
	if err != nil || 1+len(long) > m.Config.MaxPositions {
		t.Errorf("Generate past the limit: %d tokens, err %v", len(long), err)
	}
}

func TestStopIDs(t *testing.T) {
	m := loadStories(t)
	if got, want := m.StopIDs(), []int32{2, 1}; !slices.Equal(got, want) {
		t.Errorf("stories260K StopIDs() = %v, want %v (EOS, then BOS)", got, want)
	}
	s := &Model{Config: Config{Vocab: 10, BOS: -1, EOS: []int32{3, 3, 12, -1}}}
	if got, want := s.StopIDs(), []int32{3}; !slices.Equal(got, want) {
		t.Errorf("StopIDs() = %v, want %v (no BOS, duplicates and out-of-vocabulary ids dropped)", got, want)
	}
}

// FuzzSampler: any logits (NaN, ±Inf, huge, subnormal) and parameters give
// an id in [0, len) (or -1 when empty), never a NaN id while a number exists,
// and never a panic.
func FuzzSampler(f *testing.F) {
	f.Add([]byte{0, 0, 0x80, 0x3f, 0, 0, 0xc0, 0x7f}, 1.0, 0, 0.9, uint64(1))
	f.Add([]byte{0, 0, 0x80, 0x7f, 0, 0, 0x80, 0xff, 1, 2, 3, 4}, 0.5, 2, 0.0, uint64(7))
	f.Add([]byte{}, 1.0, 0, 1.0, uint64(0))
	f.Fuzz(func(t *testing.T, raw []byte, temp float64, topK int, topP float64, seed uint64) {
		logits := make([]float32, len(raw)/4)
		for i := range logits {
			logits[i] = math.Float32frombits(uint32(raw[4*i]) | uint32(raw[4*i+1])<<8 | uint32(raw[4*i+2])<<16 | uint32(raw[4*i+3])<<24)
		}
		s := NewSampler(Sampling{Temperature: temp, TopK: topK, TopP: topP, Seed: seed})
		for range 3 {
			id := s.Sample(logits)
			if len(logits) == 0 {
				if id != -1 {
					t.Fatalf("empty logits: %d", id)
				}
				continue
			}
			if id < 0 || int(id) >= len(logits) {
				t.Fatalf("id %d outside [0, %d)", id, len(logits))
			}
			if v := logits[id]; v != v && slices.ContainsFunc(logits, func(x float32) bool { return x == x }) {
				t.Fatalf("picked NaN id %d of %v", id, logits)
			}
		}
	})
}
