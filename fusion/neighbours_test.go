package fusion

import (
	"context"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestNeighbourControls(t *testing.T) {
	ctx := context.Background()
	chunks := make([]Chunk, 6)
	groups := [][]int{{0, 1, 2}, {2, 3}, {0, 2, 4}}
	co, err := CoRetrieved{Groups: groups}.Neighbours(ctx, chunks, 2)
	if err != nil {
		t.Fatal(err)
	}
	want := [][]int{{2, 1}, {0, 2}, {0, 1}, {2}, {0, 2}, nil}
	if d := cmp.Diff(want, co); d != "" {
		t.Errorf("co-retrieved neighbours (-want +got):\n%s", d)
	}
	if got := CoRetrievalShare(co, groups); got != 1 {
		t.Errorf("co-retrieved neighbours: share %v, want 1", got)
	}
	if got := CoRetrievalShare([][]int{{3, 1}, nil, nil, {5}, nil, nil}, groups); got != 1.0/3 {
		t.Errorf("share %v, want 1/3", got)
	}
	if got := CoRetrievalShare(make([][]int, 3), groups); got != 0 {
		t.Errorf("no neighbours: share %v, want 0", got)
	}
	r1, err := Random{Seed: 3}.Neighbours(ctx, chunks, 3)
	if err != nil {
		t.Fatal(err)
	}
	r2, _ := Random{Seed: 3}.Neighbours(ctx, chunks, 3)
	if d := cmp.Diff(r1, r2); d != "" {
		t.Errorf("random neighbours not deterministic:\n%s", d)
	}
	for i, js := range r1 {
		if len(js) != 3 || slices.Contains(js, i) {
			t.Errorf("chunk %d: random neighbours %v", i, js)
		}
	}
	small, _ := Random{}.Neighbours(ctx, chunks[:2], 5)
	if d := cmp.Diff([][]int{{1}, {0}}, small); d != "" {
		t.Errorf("random with n above the corpus (-want +got):\n%s", d)
	}
}
