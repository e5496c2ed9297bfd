package fusion

import (
	"context"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestWords(t *testing.T) {
	for _, tc := range []struct {
		in   string
		keep bool
		want []string
	}{
		{"The Quick, brown-fox!", false, []string{"quick", "brown", "fox"}},
		{"The Quick, brown-fox!", true, []string{"the", "quick", "brown", "fox"}},
		{"Röntgen won in 1901; Curie (1903)", false, []string{"röntgen", "won", "1901", "curie", "1903"}},
		{"日本 語", false, []string{"日本", "語"}},
		{"   ", false, nil},
	} {
		got := Words(tc.in, tc.keep)
		if len(got) == 0 {
			got = nil
		}
		if diff := cmp.Diff(tc.want, got); diff != "" {
			t.Errorf("Words(%q, %v) (-want +got):\n%s", tc.in, tc.keep, diff)
		}
	}
}

func TestBM25Neighbours(t *testing.T) {
	chunks := []Chunk{
		{Text: "red ball park dog"},       // 0
		{Text: "red ball birthday"},       // 1
		{Text: "dog park sunny day"},      // 2
		{Text: "fish boat sea sand"},      // 3
		{Text: "quantum chromodynamics"},  // 4: shares nothing
		{Text: "red ball birthday"},       // 5: same text as 1 (a tie for 1's neighbours)
		{Title: "Sea", Text: "boat trip"}, // 6: the title counts
		{Text: "the and of"},              // 7: stop words only
	}
	got, err := (&BM25{}).Neighbours(context.Background(), chunks, 3)
	if err != nil {
		t.Fatal(err)
	}
	want := [][]int{
		0: {2, 1, 5},
		1: {5, 0},
		2: {0},
		3: {6},
		4: {},
		5: {1, 0},
		6: {3},
		7: {},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("neighbours (-want +got):\n%s", diff)
	}
	// Deterministic whatever the parallelism.
	for _, w := range []int{1, 3} {
		again, err := (&BM25{Workers: w}).Neighbours(context.Background(), chunks, 3)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(got, again); diff != "" {
			t.Errorf("workers %d (-first +again):\n%s", w, diff)
		}
	}
	// n = 0 and n larger than the corpus.
	if z, _ := (&BM25{}).Neighbours(context.Background(), chunks, 0); len(z[0]) != 0 {
		t.Errorf("n=0 gave %v", z[0])
	}
	if all, _ := (&BM25{}).Neighbours(context.Background(), chunks, 100); len(all[0]) != 3 {
		t.Errorf("n=100 gave %v for chunk 0, want its 3 chunks sharing words", all[0])
	}
	if _, err := (&BM25{B: 2}).Neighbours(context.Background(), chunks, 1); err == nil {
		t.Error("B=2 accepted")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := (&BM25{}).Neighbours(ctx, chunks, 1); err == nil {
		t.Error("cancelled context: no error")
	}
}
