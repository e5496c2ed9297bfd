package model

import (
	"context"
	"encoding/json"
	"flag"
	"math"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
)

var update = flag.Bool("update", false, "rewrite golden files under testdata/")

// syntheticGolden pins the synthetic generator: the same (config, seed) must
// give the same weights (fingerprint) and logits in every build, since
// benchmarks and other packages' tests rely on it.
type syntheticGolden struct {
	Fingerprint string      `json:"fingerprint"`
	Tokens      []int32     `json:"tokens"`
	Logits      [][]float32 `json:"logits"` // first 8 logits of each position
}

func TestSyntheticGolden(t *testing.T) {
	m, err := Synthetic(tinyConfig, 9)
	if err != nil {
		t.Fatal(err)
	}
	toks := []int32{1, 5, 17, 63, 0, 9}
	r, err := m.Forward(context.Background(), nil, Batch{Tokens: toks, Pos: seq(0, len(toks))}, ForwardOptions{Logits: allRows(len(toks))})
	if err != nil {
		t.Fatal(err)
	}
	got := syntheticGolden{Fingerprint: m.Fingerprint(), Tokens: toks}
	for _, l := range r.Logits {
		got.Logits = append(got.Logits, l[:8])
	}
	path := filepath.Join("testdata", "synthetic_tiny_seed9.golden.json")
	if *update {
		b, _ := json.MarshalIndent(got, "", " ")
		if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	var want syntheticGolden
	if err := json.Unmarshal(b, &want); err != nil {
		t.Fatal(err)
	}
	// 1e-5: float32 round trip through JSON is exact; the slack covers a
	// GEMM kernel with another summation order on another machine.
	opt := cmp.Comparer(func(a, b float32) bool { return math.Abs(float64(a-b)) <= 1e-5 })
	if d := cmp.Diff(want, got, opt); d != "" {
		t.Errorf("synthetic model changed (-golden +got):\n%s", d)
	}
}
