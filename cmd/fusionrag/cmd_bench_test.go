package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestBenchDispatch(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "no harness"},
		{[]string{"nope"}, `unknown harness "nope"`},
		{[]string{"ttft", "--ratio", "150"}, "outside [0, 100]"},
		{[]string{"ttft", "--contexts", "1024,x"}, "bad size"},
		{[]string{"fidelity", "--ratios", "5,200"}, "bad ratio"},
		{[]string{"fidelity", "--model", "/nonexistent/model.bin"}, "no such file"},
	} {
		err := runBench(tc.args)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("bench %v: got %v, want an error containing %q", tc.args, err, tc.want)
		}
	}
}

// TestBenchTTFTRows runs a tiny TTFT sweep through the command and checks
// the --json rows carry the documented fields.
func TestBenchTTFTRows(t *testing.T) {
	out := filepath.Join(t.TempDir(), "ttft.json")
	stdout := os.Stdout
	devnull, _ := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	os.Stdout = devnull
	err := runBench([]string{"ttft", "--quick", "--contexts", "64", "--json", out, "--strategies", "reuse,fusionrag"})
	os.Stdout = stdout
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var rows []map[string]any
	if err := json.Unmarshal(b, &rows); err != nil {
		t.Fatal(err)
	}
	if len(rows) != 3 {
		t.Fatalf("%d rows, want 3 (full, reuse, fusionrag)", len(rows))
	}
	for _, k := range []string{"strategy", "ratio", "context_tokens", "ttft_ms", "full_ttft_ms", "speedup", "limit"} {
		if _, ok := rows[2][k]; !ok {
			t.Errorf("row lacks %q: %v", k, rows[2])
		}
	}
}
