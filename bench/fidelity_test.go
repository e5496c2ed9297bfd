package bench

import (
	"context"
	"os"
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

func TestFidelityStories(t *testing.T) {
	m := loadStories(t)
	n := 2
	if !testing.Short() {
		n = 4
	}
	start := time.Now()
	rows, err := RunFidelity(context.Background(), FidelityConfig{Model: m, Name: "stories260K", Prompts: n, Continuation: 16})
	if err != nil {
		t.Fatal(err)
	}
	FidelityTable(rows, time.Since(start)).WriteMarkdown(os.Stdout)
}

func TestFidelitySynthetic(t *testing.T) {
	m, err := model.Synthetic(SyntheticFidelityModel(), 7)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	rows, err := RunFidelity(context.Background(), FidelityConfig{Model: m, Name: "synthetic", Prompts: 2, Continuation: 16})
	if err != nil {
		t.Fatal(err)
	}
	FidelityTable(rows, time.Since(start)).WriteMarkdown(os.Stdout)
}
