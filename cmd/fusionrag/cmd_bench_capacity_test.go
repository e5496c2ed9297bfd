package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fusionrag/fusionrag/bench"
)

func TestBenchCapacityUpdate(t *testing.T) {
	p := filepath.Join(t.TempDir(), "scale.md")
	if err := os.WriteFile(p, []byte("# x\n\n"+bench.CapacityBegin+"\nold\n"+bench.CapacityEnd+"\ntail\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := runBench([]string{"capacity", "--update", p, "--mfu", "40"}); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(p)
	s := string(b)
	if strings.Contains(s, "\nold\n") || !strings.Contains(s, "| Llama-3-8B | f16/bf16 | 131072 | 128 | 32 MiB |") ||
		!strings.Contains(s, "MFU 40%") || !strings.HasSuffix(s, bench.CapacityEnd+"\ntail\n") {
		t.Errorf("updated doc:\n%s", s)
	}
	if err := runBench([]string{"capacity", "--mfu", "200"}); err == nil {
		t.Error("--mfu 200: no error")
	}
	if err := runBench([]string{"capacity", "--update", filepath.Join(t.TempDir(), "none.md")}); err == nil {
		t.Error("missing file: no error")
	}
}
