package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// cliCase is one command line run in process through run.
type cliCase struct {
	args []string
	// code is the exit code; out and errOut are substrings of stdout and
	// stderr ("" = that stream must be empty).
	code        int
	out, errOut string
}

func runCLI(t *testing.T, tc cliCase) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := run(tc.args, &stdout, &stderr)
	if code != tc.code {
		t.Errorf("fusionrag %s: exit %d, want %d\nstdout:\n%s\nstderr:\n%s", strings.Join(tc.args, " "), code, tc.code, &stdout, &stderr)
	}
	check := func(stream string, got *bytes.Buffer, want string) {
		switch {
		case want == "" && got.Len() != 0:
			t.Errorf("fusionrag %s: %s is %q, want it empty", strings.Join(tc.args, " "), stream, got)
		case !strings.Contains(got.String(), want):
			t.Errorf("fusionrag %s: %s is %q, want it to contain %q", strings.Join(tc.args, " "), stream, got, want)
		}
	}
	check("stdout", &stdout, tc.out)
	check("stderr", &stderr, tc.errOut)
}

// TestHelpEverywhere: -h and --help print the usage of every command and
// every bench harness to stdout and exit 0; an unknown flag prints the
// error and the usage to stderr and exits 2. The list comes from the
// dispatch tables, so a new command or harness is covered by being
// registered. None of these runs does any work (in process: a command that
// ignored -h would start running and fail or hang here).
func TestHelpEverywhere(t *testing.T) {
	var lines [][]string
	for name := range commands {
		if name != "bench" {
			lines = append(lines, []string{name})
		}
	}
	for _, h := range benchNames() {
		lines = append(lines, []string{"bench", h})
	}
	if len(lines) < 16 {
		t.Fatalf("%d command lines, want the 6 commands besides bench and the 10 harnesses at least: %v", len(lines), lines)
	}
	for _, l := range lines {
		cmd := strings.Join(l, " ")
		t.Run(strings.ReplaceAll(cmd, " ", "_"), func(t *testing.T) {
			summary := summaryOf(cmd)
			if summary == "" {
				t.Errorf("%s has no summary", cmd)
			}
			for _, h := range []string{"-h", "--help", "-help"} {
				runCLI(t, cliCase{args: append(append([]string(nil), l...), h), out: "usage: fusionrag " + cmd + " [flags]\n\n" + summary})
			}
			runCLI(t, cliCase{args: append(append([]string(nil), l...), "--no-such-flag"), code: 2,
				errOut: "fusionrag " + cmd + ": flag provided but not defined: -no-such-flag\n\nusage: fusionrag " + cmd})
			runCLI(t, cliCase{args: append([]string{"help"}, l...), out: "usage: fusionrag " + cmd})
		})
	}
}

// TestTopLevelUsage: the top-level help and `bench -h` list every
// registered command and harness; a missing or unknown command or harness
// is a usage error (exit 2, usage on stderr).
func TestTopLevelUsage(t *testing.T) {
	for _, args := range [][]string{{"-h"}, {"--help"}, {"help"}} {
		var stdout, stderr bytes.Buffer
		if code := run(args, &stdout, &stderr); code != 0 || stderr.Len() != 0 {
			t.Errorf("fusionrag %v: exit %d, stderr %q; want 0 and nothing", args, code, &stderr)
		}
		for name := range commands {
			if !strings.Contains(stdout.String(), "\n  "+name+" ") {
				t.Errorf("fusionrag %v does not list command %s:\n%s", args, name, &stdout)
			}
		}
		for _, h := range benchNames() {
			if !strings.Contains(stdout.String(), "\n    "+h+" ") {
				t.Errorf("fusionrag %v does not list harness %s:\n%s", args, h, &stdout)
			}
		}
	}
	var stdout, stderr bytes.Buffer
	run([]string{"bench", "-h"}, &stdout, &stderr)
	for _, h := range benchNames() {
		if !strings.Contains(stdout.String(), "\n  "+h+" ") {
			t.Errorf("fusionrag bench -h does not list harness %s:\n%s", h, &stdout)
		}
	}
	for _, tc := range []cliCase{
		{args: []string{"bench", "--help"}, out: "harnesses:"},
		{args: nil, code: 2, errOut: "usage: fusionrag <command>"},
		{args: []string{"nope"}, code: 2, errOut: `unknown command "nope"`},
		{args: []string{"bench"}, code: 2, errOut: "fusionrag bench: no harness given"},
		{args: []string{"bench", "nope"}, code: 2, errOut: `fusionrag bench: unknown harness "nope"`},
		{args: []string{"demo", "extra"}, code: 2, errOut: `fusionrag demo: unexpected arguments ["extra"]`},
		{args: []string{"bench", "ttft", "--ratio", "x"}, code: 2, errOut: `invalid value "x" for flag -ratio`},
		{args: []string{"engine"}, code: 1, errOut: "fusionrag engine: --model is required"},
	} {
		runCLI(t, tc)
	}
}

// TestReadmeListsHarnesses: the README's table of bench harnesses names
// every registered harness (a row "| `name` |").
func TestReadmeListsHarnesses(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	readme := string(b)
	for _, h := range benchNames() {
		if !strings.Contains(readme, "| `"+h+"` | ") {
			t.Errorf("README.md's harness table (## Measurements) lacks a row \"| `%s` | %s |\"", h, benchCommands[h].summary)
		}
	}
}
