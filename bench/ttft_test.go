package bench

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/fusionrag/fusionrag/model"
)

// TestTTFTQuick runs the TTFT harness on a tiny model: rows are complete and
// consistent; timings are logged, never asserted (a shared 2-core machine).
func TestTTFTQuick(t *testing.T) {
	cfg := TTFTQuickModel()
	cfg.Layers, cfg.Dim, cfg.HiddenDim, cfg.Heads, cfg.KVHeads, cfg.HeadDim = 3, 64, 128, 4, 2, 16
	m, err := model.Synthetic(cfg, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	start := time.Now()
	rows, err := RunTTFT(context.Background(), TTFTConfig{Model: m, Name: "tiny", Contexts: []int{200, 400}})
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 2*5 {
		t.Fatalf("%d rows, want 10", len(rows))
	}
	for _, r := range rows {
		if r.TTFTMs <= 0 || r.FullTTFTMs <= 0 || r.Limit < 1 && r.Strategy != "full" || r.Strategy == "full" && r.Limit != 1 {
			t.Errorf("bad row %+v", r)
		}
		if r.Strategy != "full" && r.BytesLoaded == 0 {
			t.Errorf("%s at %d loaded no KV: the store was not seeded", r.Strategy, r.ContextTokens)
		}
		if want := map[string]int{"full": r.ContextTokens, "reuse": 0}; r.Strategy == "full" || r.Strategy == "reuse" {
			if r.Recomputed != want[r.Strategy] {
				t.Errorf("%s recomputed %d, want %d", r.Strategy, r.Recomputed, want[r.Strategy])
			}
		} else if r.Recomputed != r.ContextTokens*15/100 {
			t.Errorf("%s recomputed %d at context %d, want 15%%", r.Strategy, r.Recomputed, r.ContextTokens)
		}
	}
	var md strings.Builder
	TTFTTable(rows, cfg.Params(), time.Since(start)).WriteMarkdown(&md)
	t.Logf("\n%s", md.String())
}

func TestTTFTBadConfig(t *testing.T) {
	cfg := TTFTQuickModel()
	cfg.Layers, cfg.Dim, cfg.HiddenDim, cfg.Heads, cfg.KVHeads, cfg.HeadDim, cfg.MaxPositions = 1, 32, 64, 2, 2, 16, 256
	m, err := model.Synthetic(cfg, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	for _, c := range []TTFTConfig{{}, {Model: m, Contexts: []int{1024}}, {Model: m, Contexts: []int{5}}} {
		if _, err := RunTTFT(context.Background(), c); err == nil {
			t.Errorf("config %+v: no error", c)
		}
	}
}
