// Package golden compares a test's text output with a golden file under
// testdata/, for tests: the file is rewritten when the test binary runs
// with its package's -update flag. The flag stays in each package (a
// package that defined it here would clash with those that define their
// own), so the caller passes its value.
package golden

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// Text fails t when got differs from the file at path, with a cmp.Diff
// (-golden +got) under what ("keys changed"). With update set it first
// writes got there, creating the directory. A missing file fails t with a
// hint to run with -update.
func Text(t testing.TB, path, got string, update bool, what string) {
	t.Helper()
	if update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if d := cmp.Diff(string(want), got); d != "" {
		t.Errorf("%s (-golden +got):\n%s", what, d)
	}
}
