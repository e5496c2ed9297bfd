package bench

import (
	"os"
	"strings"
	"testing"
)

func TestCapacityFigures(t *testing.T) {
	c := DefaultCapacity()
	m8, m70 := c.Models[0], c.Models[1]
	for _, tc := range []struct {
		name      string
		got, want float64
	}{
		{"8B f16 bytes/token", m8.KVBytesPerToken(2), 128 << 10},          // issue 21: 128 KiB per token
		{"8B f16 256-token chunk", m8.KVBytesPerToken(2) * 256, 32 << 20}, // 32 MiB
		{"70B f16 bytes/token", m70.KVBytesPerToken(2), 320 << 10},
		{"70B 8-bit bytes/token", m70.KVBytesPerToken(1), 160 << 10},
		{"8B FLOPs/token at ctx 0", m8.PrefillFLOPsPerToken(0), 2 * 8.03e9},
	} {
		if tc.got != tc.want {
			t.Errorf("%s: got %v, want %v", tc.name, tc.got, tc.want)
		}
	}
	tabs, err := CapacityTables(c)
	if err != nil {
		t.Fatal(err)
	}
	if len(tabs) != 4 || len(tabs[0].Rows) != 4 || tabs[0].Rows[0][4] != "32 MiB" || tabs[0].Rows[2][4] != "80 MiB" {
		t.Fatalf("KV table %v", tabs[0].Rows)
	}
	// Break-even bandwidth = bytes/token × tokens/s, consistent with the
	// recompute time column.
	tps := c.prefillTokPerS(m8, c.GPUs[1])
	if be := m8.KVBytesPerToken(2) * tps / 1e9; be < 1 || be > 20 {
		t.Errorf("8B H100 break-even %v GB/s, implausible", be)
	}
	bad := c
	bad.MFU = 0
	if _, err := CapacityTables(bad); err == nil {
		t.Error("MFU 0: no error")
	}
}

// TestScaleDocCurrent: docs/scale.md's generated block is what the program
// computes from the default inputs (run `fusionrag bench capacity --update
// docs/scale.md` after changing them).
func TestScaleDocCurrent(t *testing.T) {
	doc, err := os.ReadFile("../docs/scale.md")
	if err != nil {
		t.Fatal(err)
	}
	md, err := CapacityMarkdown(DefaultCapacity())
	if err != nil {
		t.Fatal(err)
	}
	want, err := ReplaceCapacity(string(doc), md)
	if err != nil {
		t.Fatal(err)
	}
	if want != string(doc) {
		t.Error("docs/scale.md's capacity block is stale: run `go run ./cmd/fusionrag bench capacity --update docs/scale.md`")
	}
	if _, err := ReplaceCapacity("no markers", md); err == nil || !strings.Contains(err.Error(), "markers") {
		t.Errorf("no markers: %v", err)
	}
}
