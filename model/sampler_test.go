package model

import (
	"context"
	"math"
	"testing"
)

func TestSamplerGreedyAndSeeded(t *testing.T) {
	logits := []float32{0.1, 2, 2, -1}
	if got := NewSampler(0, 0, 1).Sample(logits); got != 1 {
		t.Errorf("greedy = %d, want 1 (first maximum, as run.c)", got)
	}
	a, b := NewSampler(1, 0, 42), NewSampler(1, 0, 42)
	for range 100 {
		if a.Sample(logits) != b.Sample(logits) {
			t.Fatal("same seed, different samples")
		}
	}
}

// TestSamplerDistribution: frequencies follow softmax(logits/T) (and the
// renormalised nucleus with top-p) within 5 standard deviations.
func TestSamplerDistribution(t *testing.T) {
	logits := []float32{1, 2, 0, 3}
	const n = 20000
	for _, tc := range []struct {
		temp, topP float64
	}{{1, 0}, {0.5, 0}, {1, 0.7}} {
		s := NewSampler(tc.temp, tc.topP, 7)
		count := make([]float64, len(logits))
		for range n {
			count[s.Sample(logits)]++
		}
		p := make([]float64, len(logits))
		var sum float64
		for i, l := range logits {
			p[i] = math.Exp(float64(l) / tc.temp)
			sum += p[i]
		}
		for i := range p {
			p[i] /= sum
		}
		if tc.topP > 0 { // probabilities 0.64 (id 3), 0.24 (id 1): nucleus {3, 1}
			p = []float64{0, p[1] / (p[1] + p[3]), 0, p[3] / (p[1] + p[3])}
		}
		for i := range p {
			sd := math.Sqrt(n * p[i] * (1 - p[i]))
			if d := math.Abs(count[i] - n*p[i]); d > 5*sd+1 {
				t.Errorf("T=%g top-p=%g id %d: %v draws, expected %.0f ± %.0f", tc.temp, tc.topP, i, count[i], n*p[i], sd)
			}
		}
	}
}

func TestGenerateMatchesGolden(t *testing.T) {
	m := loadStories(t)
	var emitted []int32
	got, err := m.Generate(context.Background(), []int32{1, 403, 407, 261, 378}, 40, NewSampler(0, 0, 0), func(id int32) bool {
		emitted = append(emitted, id)
		return true
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []int32{432, 383, 286, 261, 376, 298, 315, 421, 395, 317, 426, 338, 401, 396, 267, 337, 410, 408, 419, 292,
		411, 322, 265, 282, 295, 433, 426, 385, 328, 432, 358, 394, 261, 370, 432, 352, 266, 268, 388, 426}
	if !equalIDs(got, want) || !equalIDs(emitted, want) {
		t.Errorf("Generate:\n got %v\nemit %v\nwant %v", got, emitted, want)
	}
	// Stops at the position limit without error.
	long, err := m.Generate(context.Background(), []int32{1}, 10000, NewSampler(1, 0, 3), nil)
	if err != nil || 1+len(long) > m.Config.MaxPositions {
		t.Errorf("Generate past the limit: %d tokens, err %v", len(long), err)
	}
}
