package engine

import (
	"math"
	"testing"

	"github.com/fusionrag/fusionrag/model/tokenizer"
)

// TestSamplerGreedyAndSeed: the request's Sampling reaches the model's
// sampler (whose distribution and stream tests are in package model).
func TestSamplerGreedyAndSeed(t *testing.T) {
	logits := []float32{0.1, 3, 3, -1, float32(math.NaN())}
	if got := newSampler(Sampling{Temperature: 0}).Sample(logits); got != 1 {
		t.Errorf("greedy picked %d, want 1 (first maximum)", got)
	}
	if got := newSampler(Sampling{Temperature: 1, TopK: 1, TopP: 1}).Sample(logits); got != 1 {
		t.Errorf("top_k=1 picked %d, want 1", got)
	}
	seed := int64(7)
	a, b := newSampler(Sampling{Temperature: 1, TopP: 1, Seed: &seed}), newSampler(Sampling{Temperature: 1, TopP: 1, Seed: &seed})
	for i := range 100 {
		if x, y := a.Sample(logits), b.Sample(logits); x != y {
			t.Fatalf("draw %d: seeded samplers differ: %d vs %d", i, x, y)
		}
	}
}

// TestTextStream checks incremental detokenization: stop strings that
// straddle tokens, held-back prefixes of stop strings, and UTF-8 characters
// split over byte tokens.
func TestTextStream(t *testing.T) {
	enc := byteTok{}.Encode
	tests := []struct {
		name   string
		gen    string
		stops  []string
		deltas []string // per token, then the flush as the last element
		stop   bool
	}{
		{"plain", "abc", nil, []string{"a", "b", "c", ""}, false},
		{"stop straddles", "abXYc", []string{"XY"}, []string{"a", "b", "", "", ""}, true},
		{"held prefix released", "aXb", []string{"XY"}, []string{"a", "", "Xb", ""}, false},
		{"held prefix flushed", "aX", []string{"XY"}, []string{"a", "", "X"}, false},
		{"utf8 split", "é!", nil, []string{"", "é", "!", ""}, false},
		{"stop at start", "XYa", []string{"XY"}, []string{"", "", ""}, true},
		{"earliest stop wins", "abcd", []string{"cd", "bc"}, []string{"a", "", "", ""}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var tok tokenizer.Tokenizer = byteTok{}
			d := newTextStream(tok, []int32{1, 10, 11}, tt.stops)
			var got []string
			stopped := false
			for _, id := range enc(tt.gen) {
				delta, s := d.Add(id)
				got = append(got, delta)
				if s {
					stopped = true
					break
				}
			}
			got = append(got, d.Flush())
			if len(got) != len(tt.deltas) {
				t.Fatalf("deltas %q, want %q", got, tt.deltas)
			}
			for i := range got {
				if got[i] != tt.deltas[i] {
					t.Fatalf("deltas %q, want %q", got, tt.deltas)
				}
			}
			if stopped != tt.stop {
				t.Errorf("stopped %v, want %v", stopped, tt.stop)
			}
		})
	}
}
