package bench

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/fusionrag/fusionrag/model"
)

func TestTTFTQuick(t *testing.T) {
	cfg := TTFTQuickModel()
	m, err := model.Synthetic(cfg, 1)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	rows, err := RunTTFT(context.Background(), TTFTConfig{Model: m, Name: "quick", Contexts: []int{256, 512}})
	if err != nil {
		t.Fatal(err)
	}
	TTFTTable(rows, cfg.Params(), time.Since(start)).WriteMarkdown(os.Stdout)
}
