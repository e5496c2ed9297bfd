package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fusionrag/fusionrag/bench"
)

// TestBenchMoreFlags: the quality, store, load, e2e and all harnesses refuse
// bad flags with an error naming the problem, before measuring anything.
func TestBenchMoreFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"quality", "--ratios", "5,500"}, "bad ratio"},
		{[]string{"quality", "--datasets", "/nonexistent/set.jsonl"}, "no such file"},
		{[]string{"quality", "--datasets", ","}, "no dataset"},
		{[]string{"load", "--target", "nourl"}, "name=http"},
		{[]string{"load", "--target", "x=http://127.0.0.1:1", "--concurrency", "0"}, "bad size"},
		{[]string{"e2e", "--contexts", "x"}, "bad size"},
		{[]string{"store", "--tiers", "nope://x", "--quick", "--quiet"}, "nope"},
		{[]string{"all", "--only", "nope"}, `unknown harness "nope"`},
		{[]string{"all", "extra"}, "unexpected arguments"},
	} {
		err := runBench(tc.args)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("bench %v: got %v, want an error containing %q", tc.args, err, tc.want)
		}
	}
}

// TestBenchStoreAndAssemble runs bench store --quick on the memory tier into
// a directory and assembles a page from it with bench all --assemble-only.
func TestBenchStoreAndAssemble(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "bench")
	stdout := os.Stdout
	devnull, _ := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	os.Stdout = devnull
	err := runBench([]string{"store", "--quick", "--quiet", "--shapes", "default", "--tiers", "mem://?max=256MiB", "--out", out})
	os.Stdout = stdout
	if err != nil {
		t.Fatal(err)
	}
	var rows []bench.StoreRow
	doc, err := bench.ReadReportFile(filepath.Join(out, "store.json"), &rows)
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 2 || rows[0].Tier != "mem" || doc.Meta.Command == "" || len(doc.Plots) != 2 {
		t.Errorf("rows %+v, meta %+v", rows, doc.Meta)
	}
	page := filepath.Join(dir, "benchmarks.md")
	if err := runBench([]string{"all", "--assemble-only", "--out", out, "--doc", page}); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(page)
	if err != nil || !strings.Contains(string(b), "](bench/store-get.png)") || !strings.Contains(string(b), "_Not run: no quality report") {
		t.Errorf("page: %v\n%s", err, b)
	}
}
