package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestDemoWriteModel: `fusionrag demo --write-model DIR`, which the compose
// file's model service runs, writes a loadable model and keeps it.
func TestDemoWriteModel(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "synthetic")
	for range 2 {
		if err := runDemo([]string{"--write-model", dir}); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{"config.json", "model.safetensors", "tokenizer.bin"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Errorf("missing %s: %v", f, err)
		}
	}
}

func TestDemoFlags(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"--ratio", "0"}, "--ratio"},
		{[]string{"--ratio", "120"}, "--ratio"},
		{[]string{"extra"}, "unexpected arguments"},
		{[]string{"--no-such-flag"}, "no-such-flag"},
		{[]string{"--quiet", "--strategies", "fusionrag,magic", "--out", ""}, "magic"},
		{[]string{"--quiet", "--corpus", "wiki", "--out", ""}, "corpus"},
	}
	for _, tt := range tests {
		err := runDemo(tt.args)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("demo %q: err %v, want one about %q", tt.args, err, tt.want)
		}
	}
}
