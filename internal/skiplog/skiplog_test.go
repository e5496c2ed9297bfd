package skiplog

import (
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

func TestRecord(t *testing.T) {
	log := filepath.Join(t.TempDir(), "skips")
	t.Setenv(EnvVar, log)
	var wg sync.WaitGroup
	for _, name := range []string{"TestA", "TestB/sub\ttab"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			Record(SharedData, name)
		}()
	}
	wg.Wait()
	b, err := os.ReadFile(log)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
	if len(lines) != 2 {
		t.Fatalf("got %d lines, want 2:\n%s", len(lines), b)
	}
	wd, _ := os.Getwd()
	for _, l := range lines {
		f := strings.Split(l, "\t")
		if len(f) != 4 || f[0] != SharedData.Name || f[1] != SharedData.Hint || f[2] != wd {
			t.Errorf("line %q: want 4 tab-separated fields: input, hint, %s, test", l, wd)
		}
		if f[3] != "TestA" && f[3] != "TestB/sub tab" {
			t.Errorf("line %q: test %q, want TestA or TestB/sub tab (tabs replaced)", l, f[3])
		}
	}
}

// TestRecordUnset: without $FUSIONRAG_SKIP_LOG nothing is written, and an
// unwritable path is ignored rather than failing the caller.
func TestRecordUnset(t *testing.T) {
	t.Setenv(EnvVar, "")
	Record(Redis, t.Name()) // nothing to check but that it returns
	t.Setenv(EnvVar, filepath.Join(t.TempDir(), "no", "such", "dir", "skips"))
	Record(Redis, t.Name())
}
