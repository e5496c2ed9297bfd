// Package shareddata locates the reference data (../shared/data: the
// stories260K model with golden outputs, RAG evaluation sets) that tests and
// benchmarks read by path. It is never copied into the repository.
package shareddata

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/fusionrag/fusionrag/internal/skiplog"
)

// EnvVar names the variable that points at the data directory.
const EnvVar = "FUSIONRAG_DATA"

// Dir returns the data directory: $FUSIONRAG_DATA, else ../shared/data next to
// the repository root (found by walking up to go.mod from the working
// directory). The bool is false when the directory does not exist.
func Dir() (string, bool) {
	if d := os.Getenv(EnvVar); d != "" {
		st, err := os.Stat(d)
		return d, err == nil && st.IsDir()
	}
	wd, err := os.Getwd()
	if err != nil {
		return "", false
	}
	for d := wd; ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			p := filepath.Join(d, "..", "shared", "data")
			st, err := os.Stat(p)
			return filepath.Clean(p), err == nil && st.IsDir()
		}
		if filepath.Dir(d) == d {
			return "", false
		}
	}
}

// Path returns the path of rel inside the data directory, skipping the test
// loudly when the directory or the file is absent.
func Path(tb testing.TB, rel string) string {
	tb.Helper()
	d, ok := Dir()
	if !ok {
		skiplog.Record(skiplog.SharedData, tb.Name())
		tb.Skipf("SKIPPING: reference data not found (set %s or place it at ../shared/data); this test needs %s", EnvVar, rel)
	}
	p := filepath.Join(d, rel)
	if _, err := os.Stat(p); err != nil {
		skiplog.Record(skiplog.SharedData, tb.Name())
		tb.Skipf("SKIPPING: reference file %s missing: %v", p, err)
	}
	return p
}

// MustDir is Dir for commands: it returns an error that says where it looked.
func MustDir() (string, error) {
	d, ok := Dir()
	if !ok {
		return "", fmt.Errorf("reference data not found at %q: set %s", d, EnvVar)
	}
	return d, nil
}
