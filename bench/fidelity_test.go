package bench

import (
	"context"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/fusionrag/fusionrag/internal/shareddata"
	"github.com/fusionrag/fusionrag/model"
)

func loadStories(t testing.TB) *model.Model {
	t.Helper()
	m, err := model.Load(shareddata.Path(t, "models/stories260K/stories260K.bin"), model.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

// checkFidelityRows asserts the invariants of a fidelity table: full is
// exact (KL 0, fidelity 100), reuse defines 0, ratio 0 of fusionrag and epic
// is reuse, every value is finite and top-1 is a fraction.
func checkFidelityRows(t *testing.T, rows []FidelityRow, strategies, ratios int) map[string]FidelityRow {
	t.Helper()
	if len(rows) != 2+strategies*ratios {
		t.Fatalf("%d rows, want %d", len(rows), 2+strategies*ratios)
	}
	by := map[string]FidelityRow{}
	for _, r := range rows {
		by[r.Strategy+"@"+f(r.Ratio*100, 0)] = r
		if math.IsNaN(r.KL) || r.KL < 0 || r.Top1 < 0 || r.Top1 > 1 || math.IsNaN(r.NormalizedFidelity) {
			t.Errorf("bad row %+v", r)
		}
	}
	if r := by["full@100"]; r.KL != 0 || r.NormalizedFidelity != 100 || r.Top1 != 1 {
		t.Errorf("full row %+v: want KL 0, fidelity 100, top-1 1", r)
	}
	if r := by["reuse@0"]; r.NormalizedFidelity != 0 {
		t.Errorf("reuse row %+v: want fidelity 0", r)
	}
	for _, s := range []string{"fusionrag@0", "epic@0"} {
		if by[s].KL != by["reuse@0"].KL {
			t.Errorf("%s KL %v != reuse KL %v", s, by[s].KL, by["reuse@0"].KL)
		}
	}
	return by
}

// TestFidelityStories runs the fidelity harness on the real model. It logs
// the table; it asserts the invariants, and that fusionrag at 15% is closer
// to full than reuse (the figure itself is reported, not asserted).
func TestFidelityStories(t *testing.T) {
	m := loadStories(t)
	start := time.Now()
	rows, err := RunFidelity(context.Background(), FidelityConfig{Model: m, Name: "stories260K", Prompts: 2, Continuation: 12,
		Ratios: []float64{0, 0.15}})
	if err != nil {
		t.Fatal(err)
	}
	by := checkFidelityRows(t, rows, 3, 2)
	var md strings.Builder
	FidelityTable(rows, time.Since(start)).WriteMarkdown(&md)
	t.Logf("\n%s", md.String())
	if r := by["fusionrag@15"]; !(r.NormalizedFidelity > 0) {
		t.Errorf("fusionrag@15%% normalised fidelity %.1f, want > 0 (closer to full than reuse)", r.NormalizedFidelity)
	}
}

func TestFidelitySynthetic(t *testing.T) {
	m, err := model.Synthetic(SyntheticFidelityModel(), 7)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	rows, err := RunFidelity(context.Background(), FidelityConfig{Model: m, Name: "synthetic", Prompts: 2, Continuation: 8,
		Ratios: []float64{0, 0.3}})
	if err != nil {
		t.Fatal(err)
	}
	checkFidelityRows(t, rows, 3, 2)
}

func TestKL(t *testing.T) {
	p := []float32{1, 2, 3}
	if kl := KL(p, p); kl != 0 {
		t.Errorf("KL(p||p) = %v, want 0", kl)
	}
	// softmax is shift invariant.
	if kl := KL(p, []float32{11, 12, 13}); kl > 1e-12 {
		t.Errorf("KL of shifted logits = %v, want 0", kl)
	}
	// Two-point distributions: p = (1/2, 1/2), q = (e/(1+e), 1/(1+e)).
	want := 0.5*math.Log(0.5*(1+math.E)/math.E) + 0.5*math.Log(0.5*(1+math.E))
	if kl := KL([]float32{0, 0}, []float32{1, 0}); math.Abs(kl-want) > 1e-7 {
		t.Errorf("KL = %v, want %v", kl, want)
	}
}

func TestFidelityAndTTFTPlots(t *testing.T) {
	rows := []FidelityRow{
		{Model: "a", Strategy: "full", Ratio: 1, NormalizedFidelity: 100},
		{Model: "a", Strategy: "reuse"},
		{Model: "a", Strategy: "fusionrag", Ratio: 0.15, NormalizedFidelity: 50},
		{Model: "a", Strategy: "fusionrag", Ratio: 0.3, NormalizedFidelity: 80},
		{Model: "b/c", Strategy: "epic", Ratio: 0.15, NormalizedFidelity: 10},
	}
	ps := FidelityPlots(rows)
	if len(ps) != 2 || ps[0].File != "fidelity-a.png" || ps[1].File != "fidelity-b-c.png" {
		t.Fatalf("plots %+v", ps)
	}
	if s := ps[0].Series; len(s) != 1 || s[0].Name != "fusionrag" || len(s[0].X) != 2 || s[0].X[1] != 30 || s[0].Y[1] != 80 {
		t.Errorf("series %+v", s)
	}
	tp := TTFTPlots([]TTFTRow{
		{Strategy: "full", ContextTokens: 1024, Speedup: 1, CPUSpeedup: 1, Limit: 1},
		{Strategy: "reuse", ContextTokens: 1024, Speedup: 20, CPUSpeedup: 15, Limit: 30},
		{Strategy: "fusionrag", Ratio: 0.15, ContextTokens: 1024, Speedup: 4, Limit: 5},
	})
	if len(tp) != 3 || len(tp[0].Series) != 2 || tp[0].Series[1].Name != "fusionrag 15%" || len(tp[1].Series[1].X) != 0 {
		t.Errorf("ttft plots %+v", tp)
	}
}

// TestFidelityFused runs the harness on fused chunk KV (package fusion's
// builder, BM25 neighbours): the invariants hold and the fused rows say so.
func TestFidelityFused(t *testing.T) {
	m := loadStories(t)
	rows, err := RunFidelity(context.Background(), FidelityConfig{Model: m, Name: "stories260K", Prompts: 2, Continuation: 8,
		Ratios: []float64{0, 0.15}, Variant: "fused"})
	if err != nil {
		t.Fatal(err)
	}
	checkFidelityRows(t, rows, 3, 2)
	for _, r := range rows {
		if r.Variant != "fused" {
			t.Fatalf("row %+v: variant %q", r, r.Variant)
		}
		if r.Strategy != "full" && r.FusedHits != 1 {
			t.Errorf("%s@%v served %.0f%% of chunks from fused KV, want 100%%", r.Strategy, r.Ratio, 100*r.FusedHits)
		}
	}
	if _, err := RunFidelity(context.Background(), FidelityConfig{Model: m, Variant: "cooked"}); err == nil {
		t.Error("unknown variant: no error")
	}
}
