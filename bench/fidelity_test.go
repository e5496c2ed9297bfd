package bench

import (
	"context"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/fusionrag/fusionrag/internal/shareddata"
	"github.com/fusionrag/fusionrag/model"
	"github.com/fusionrag/fusionrag/recompute"
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

// rowKey names a row: strategy@ratio/variant[/neighbours][/ff].
func rowKey(r FidelityRow) string {
	k := r.Strategy + "@" + f(r.Ratio*100, 0) + "/" + r.Variant
	if r.Neighbours != "" {
		k += "/" + r.Neighbours
	}
	if r.FirstChunkFused {
		k += "/ff"
	}
	return k
}

// checkFidelityRows asserts the invariants of one fidelity run: the
// normalisation is the paper's, pinned exactly (full = 100, reuse of RAW KV
// = 0, for every table), ratio 0 of fusionrag and epic is reuse on the same
// KV, every value is finite, and every row read the chunk KV it says.
func checkFidelityRows(t *testing.T, rows []FidelityRow) map[string]FidelityRow {
	t.Helper()
	by := map[string]FidelityRow{}
	for _, r := range rows {
		k := rowKey(r)
		if _, dup := by[k]; dup {
			t.Errorf("row %s twice", k)
		}
		by[k] = r
		if math.IsNaN(r.KL) || r.KL < 0 || r.Top1 < 0 || r.Top1 > 1 || math.IsNaN(r.NormalizedFidelity) {
			t.Errorf("bad row %+v", r)
		}
		// The KV source: what the row says is what was read (RunFidelity
		// also fails on any single result that differs: checkSource).
		switch {
		case r.Strategy == "full":
		case r.Variant == "raw":
			if r.FusedHits != 0 || r.ExactChunks != 1 {
				t.Errorf("%s: %.2f of chunks fused, %.2f exact; a raw row reads no fused KV and its first chunk is exact", k, r.FusedHits, r.ExactChunks)
			}
		case r.Variant == "fused" && r.FirstChunkFused:
			if r.FusedHits != 1 || r.ExactChunks != 0 {
				t.Errorf("%s: %.2f of chunks fused, %.2f exact; want all fused", k, r.FusedHits, r.ExactChunks)
			}
		case r.Variant == "fused":
			if want := 1 - 1/4.0; r.FusedHits != want || r.ExactChunks != 1 {
				t.Errorf("%s: %.2f of chunks fused, %.2f exact; want %.2f (all but the exact first chunk)", k, r.FusedHits, r.ExactChunks, want)
			}
		default:
			t.Errorf("%s: unknown variant %q", k, r.Variant)
		}
		for i, s := range r.SelectionShare {
			if i == 0 && s != 0 && !r.FirstChunkFused {
				t.Errorf("%s: %.0f%% of the selection in the exact first chunk", k, 100*s)
			}
		}
	}
	full, reuse := by["full@100/"], by["reuse@0/raw"]
	if full.KL != 0 || full.NormalizedFidelity != 100 || full.MedianPromptFidelity != 100 || full.Top1 != 1 {
		t.Errorf("full row %+v: want KL 0, fidelity exactly 100, top-1 1", full)
	}
	if reuse.NormalizedFidelity != 0 || reuse.MedianPromptFidelity != 0 {
		t.Errorf("reuse (raw) row %+v: want fidelity exactly 0", reuse)
	}
	for _, v := range []string{"raw", "fused/bm25"} {
		for _, s := range []string{"fusionrag@0/", "epic@0/"} {
			if r, ok := by[s+v]; ok && r.KL != by["reuse@0/"+v].KL {
				t.Errorf("%s KL %v != reuse KL %v", s+v, r.KL, by["reuse@0/"+v].KL)
			}
		}
	}
	if r := by["reuse@0/fused/bm25"]; r.OwnNormalizedFidelity == nil || *r.OwnNormalizedFidelity != 0 {
		t.Errorf("fused reuse's own-KV normalised fidelity %v, want exactly 0", r.OwnNormalizedFidelity)
	}
	return by
}

// TestFidelityStories runs the fidelity harness on the real model, every
// workload: the invariants hold, and fusionrag at 15% on fused KV is closer
// to full than reuse (the figure itself is reported, not asserted).
func TestFidelityStories(t *testing.T) {
	m := loadStories(t)
	ds, err := LoadDataset(shareddata.Path(t, "rag/cacheblend_musique_s.json"))
	if err != nil {
		t.Fatal(err)
	}
	ds.Limit(4)
	for _, wl := range []string{"stories", "recall", "coretrieval"} {
		t.Run(wl, func(t *testing.T) {
			start := time.Now()
			rows, err := RunFidelity(context.Background(), FidelityConfig{Model: m, Name: "stories260K", Workload: wl, Dataset: ds,
				Prompts: 2, Continuation: 8, Ratios: []float64{0, 0.15}})
			if err != nil {
				t.Fatal(err)
			}
			by := checkFidelityRows(t, rows)
			var md strings.Builder
			for _, tb := range FidelityTables(rows, time.Since(start)) {
				tb.WriteMarkdown(&md)
			}
			t.Logf("\n%s", md.String())
			if r := by["fusionrag@15/fused/bm25"]; !(r.NormalizedFidelity > 0) {
				t.Errorf("fusionrag@15%% normalised fidelity %.1f, want > 0 (closer to full than reuse)", r.NormalizedFidelity)
			}
			if r := by["reuse@0/fused/coretrieved"]; r.CoRetrieved == nil || *r.CoRetrieved != 1 {
				t.Errorf("co-retrieved neighbours: share %v, want 1", r.CoRetrieved)
			}
		})
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
	checkFidelityRows(t, rows)
	if _, err := RunFidelity(context.Background(), FidelityConfig{Model: m, Workload: "cooked"}); err == nil {
		t.Error("unknown workload: no error")
	}
	if _, err := RunFidelity(context.Background(), FidelityConfig{Model: m, NeighbourSources: []string{"psychic"}}); err == nil {
		t.Error("unknown neighbour source: no error")
	}
}

// TestCheckSource: a result whose chunk KV differs from its row's fails.
func TestCheckSource(t *testing.T) {
	raw, fused := kvSource{variant: "raw"}, kvSource{variant: "fused", neighbours: "bm25"}
	ff := fused
	ff.firstFused = true
	for _, tc := range []struct {
		kv     kvSource
		rec    recompute.Record
		wantOK bool
	}{
		{raw, recompute.Record{Strategy: "reuse", Chunks: 4, RawHits: 4, ExactChunks: 1}, true},
		{raw, recompute.Record{Strategy: "reuse", Chunks: 4, RawHits: 1, FusedHits: 3, ExactChunks: 1}, false},
		{fused, recompute.Record{Strategy: "fusionrag", Chunks: 4, RawHits: 1, FusedHits: 3, ExactChunks: 1}, true},
		{fused, recompute.Record{Strategy: "fusionrag", Chunks: 4, RawHits: 4, ExactChunks: 1}, false},
		{fused, recompute.Record{Strategy: "fusionrag", Chunks: 4, RawHits: 2, FusedHits: 2, Misses: 1, ExactChunks: 1}, false},
		{ff, recompute.Record{Strategy: "cacheblend", Chunks: 4, FusedHits: 4}, true},
		{ff, recompute.Record{Strategy: "cacheblend", Chunks: 4, RawHits: 1, FusedHits: 3, ExactChunks: 1}, false},
		{raw, recompute.Record{Strategy: "full", Chunks: 4}, true},
	} {
		if err := checkSource(tc.kv, tc.rec); (err == nil) != tc.wantOK {
			t.Errorf("checkSource(%+v, %+v) = %v, want ok %v", tc.kv, tc.rec, err, tc.wantOK)
		}
	}
}

// TestNormalizedLoss pins the exactness of the normalisation.
func TestNormalizedLoss(t *testing.T) {
	for _, k := range []float64{0.0196, 0.00449, 1e-300, 3, 0.1 + 0.2} {
		if got := normalizedLoss(k, k); got != 0 {
			t.Errorf("normalizedLoss(%v, %v) = %v, want exactly 0", k, k, got)
		}
		if got := normalizedLoss(0, k); got != 100 {
			t.Errorf("normalizedLoss(0, %v) = %v, want exactly 100", k, got)
		}
	}
	if got := normalizedLoss(0, 0); got != 100 {
		t.Errorf("exact baseline, exact method: %v, want 100", got)
	}
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
		{Model: "a", Workload: "w", Table: TableMain, Strategy: "full", Ratio: 1, NormalizedFidelity: 100, CostRatio: 1},
		{Model: "a", Workload: "w", Table: TableMain, Variant: "raw", Strategy: "reuse", CostRatio: 0.03},
		{Model: "a", Workload: "w", Table: TableMain, Variant: "fused", Neighbours: "bm25", Strategy: "fusionrag", Ratio: 0.15, NormalizedFidelity: 50, CostRatio: 0.2},
		{Model: "a", Workload: "w", Table: TableMain, Variant: "fused", Neighbours: "bm25", Strategy: "fusionrag", Ratio: 0.3, NormalizedFidelity: 80, CostRatio: 0.4},
		{Model: "a", Workload: "w", Table: TableAblation, Variant: "raw", Strategy: "fusionrag", Ratio: 0.3, NormalizedFidelity: 70},
		{Model: "b/c", Workload: "w", Table: TableMain, Variant: "raw", Strategy: "epic", Ratio: 0.15, NormalizedFidelity: 10},
	}
	ps := FidelityPlots(rows)
	if len(ps) != 4 || ps[0].File != "fidelity-a-w.png" || ps[1].File != "fidelity-a-w-flops.png" || ps[2].File != "fidelity-b-c-w.png" {
		t.Fatalf("plots %+v", ps)
	}
	if s := ps[0].Series; len(s) != 2 || s[1].Name != "fusionrag (fused (bm25) KV)" || len(s[1].X) != 2 || s[1].X[1] != 30 || s[1].Y[1] != 80 {
		t.Errorf("series %+v", s)
	}
	if s := ps[1].Series; s[1].X[1] != 0.4 || s[0].Name != "reuse (raw KV)" {
		t.Errorf("FLOPs series %+v", s)
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
