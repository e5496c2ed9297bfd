package main

import (
	"encoding/json"
	"os"
	"strings"
	"testing"

	"github.com/fusionrag/fusionrag/internal/shareddata"
)

// captureStdout runs f with os.Stdout redirected to a pipe.
func captureStdout(t *testing.T, f func() error) string {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	old := os.Stdout
	os.Stdout = w
	done := make(chan string)
	go func() {
		b := new(strings.Builder)
		buf := make([]byte, 4096)
		for {
			n, err := r.Read(buf)
			b.Write(buf[:n])
			if err != nil {
				break
			}
		}
		done <- b.String()
	}()
	ferr := f()
	os.Stdout = old
	w.Close()
	out := <-done
	if ferr != nil {
		t.Fatal(ferr)
	}
	return out
}

// TestGenerateGolden: the generate subcommand prints exactly the golden
// greedy continuation of stories260K and run.c's BOS-only output.
func TestGenerateGolden(t *testing.T) {
	bin := shareddata.Path(t, "models/stories260K/stories260K.bin")
	got := captureStdout(t, func() error {
		return runGenerate([]string{"--model", bin, "--prompt", "Once upon a time", "--max-tokens", "40", "--temperature", "0"})
	})
	var golden struct {
		Cases []struct {
			GreedyText string `json:"greedy_text"`
		} `json:"cases"`
	}
	b, err := os.ReadFile(shareddata.Path(t, "models/stories260K/golden_stories260K.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &golden); err != nil {
		t.Fatal(err)
	}
	want := golden.Cases[0].GreedyText + "\n" // case 0: "Once upon a time", 40 tokens
	if got != want {
		t.Errorf("generate output:\n got %q\nwant %q", got, want)
	}
	runc, err := os.ReadFile(shareddata.Path(t, "models/stories260K/runc_greedy_bos_only_256.txt"))
	if err != nil {
		t.Fatal(err)
	}
	got = captureStdout(t, func() error {
		return runGenerate([]string{"--model", bin, "--max-tokens", "256", "--temperature", "0"})
	})
	if got != string(runc) {
		t.Errorf("BOS-only generate differs from run.c:\n got %q\nwant %q", got, runc)
	}
}

func TestGenerateFlags(t *testing.T) {
	for _, args := range [][]string{
		{},
		{"--model", "/nonexistent/model.bin"},
		{"--model", "x", "--top-p", "2"},
		{"--model", "x", "--max-tokens", "-1"},
	} {
		if err := runGenerate(args); err == nil {
			t.Errorf("runGenerate(%q): no error", args)
		}
	}
}
