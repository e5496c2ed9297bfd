package layering

import (
	"bytes"
	"encoding/json"
	"io"
	"os/exec"
	"slices"
	"sort"
	"strings"
	"testing"
)

const module = "github.com/fusionrag/fusionrag/"

// allowed is the layering of docs/architecture.md: for each package of the
// module (path relative to the module), the module packages it may import
// (non-test imports). A package missing here fails the test: place it.
// Top to bottom: the binary and the benchmarks; the composition root; the
// fusion path; the proxy; the offline stage and the engine; the online
// stage; the shared layers; the model.
var allowed = map[string][]string{
	"cmd/fusionrag": {"bench", "sidecar", "proxy", "engine", "fusion", "prompt", "fingerprint", "kvstore", "model", "model/tokenizer",
		"internal/otelenv", "internal/llamaserver", "internal/redisproc", "internal/shareddata"},
	"bench": {"sidecar", "proxy", "adapters", "adapters/llamacpp", "engine", "fusion", "recompute", "chunkkv", "fingerprint", "kvstore",
		"model", "model/tokenizer", "internal/promexport", "internal/llamaserver", "internal/redisproc", "internal/shareddata"},
	"sidecar":              {"rag", "proxy", "adapters", "adapters/llamacpp", "adapters/native", "adapters/passthrough", "fusion", "recompute", "kvstore", "model"},
	"rag":                  {"proxy", "adapters", "recompute", "chunkkv", "prompt", "fingerprint", "kvstore", "model", "model/tokenizer", "internal/jsonobj"},
	"proxy":                {"adapters", "recompute", "prompt", "fingerprint", "internal/jsonobj", "internal/otelenv", "internal/promexport"},
	"adapters":             {"kvstore", "model"},
	"adapters/llamacpp":    {"adapters", "model"},
	"adapters/native":      {"adapters", "engine", "fingerprint", "kvstore"},
	"adapters/passthrough": {"adapters"},
	"engine":               {"prompt", "fingerprint", "kvstore", "model", "model/tokenizer", "internal/otelenv", "internal/promexport"},
	"fusion":               {"chunkkv", "prompt", "fingerprint", "kvstore", "model", "model/tokenizer"},
	"recompute":            {"chunkkv", "fingerprint", "model"},
	"chunkkv":              {"fingerprint", "kvstore", "model"},
	"prompt":               {"fingerprint", "model/tokenizer"},
	"kvstore":              {"fingerprint"},
	"fingerprint":          {},
	"model":                {"model/blas", "model/safetensors", "model/tokenizer"},
	"model/cuda":           {"model", "model/blas"},
	"model/blas":           {},
	"model/openblas":       {},
	"model/safetensors":    {},
	"model/tokenizer":      {},
	"deploy":               {},
	"internal/golden":      {},
	"internal/jsonobj":     {},
	"internal/layering":    {},
	"internal/llamaserver": {"internal/skiplog"},
	"internal/modeltest":   {"internal/shareddata", "model"},
	"internal/otelenv":     {},
	"internal/otlptest":    {},
	"internal/proxytest":   {"proxy"},
	"internal/promexport":  {},
	"internal/redisproc":   {},
	"internal/redistest":   {"internal/redisproc", "internal/skiplog"},
	"internal/shareddata":  {"internal/skiplog"},
	"internal/skiplog":     {},
	"internal/streamtest":  {},
}

// rules are the reasons behind the table, checked first so that a failure
// names the rule an import breaks, not just a missing row.
var rules = []struct {
	rule string
	bad  func(from, to string) bool
}{
	{"no package imports the binary or the benchmarks (cmd, bench)", func(from, to string) bool {
		return strings.HasPrefix(to, "cmd/") || to == "bench" && !strings.HasPrefix(from, "cmd/")
	}},
	{"the composition root (sidecar) is imported only by cmd and bench", func(from, to string) bool {
		return to == "sidecar" && !strings.HasPrefix(from, "cmd/") && from != "bench"
	}},
	{"the proxy imports neither the engine, the offline stage, the fusion path nor the composition root (engine, fusion, rag, sidecar)", func(from, to string) bool {
		return from == "proxy" && slices.Contains([]string{"engine", "fusion", "rag", "sidecar"}, to)
	}},
	{"the proxy does not compute (model, kvstore, chunkkv: the fusion path does, in rag)", func(from, to string) bool {
		return from == "proxy" && (to == "model" || strings.HasPrefix(to, "model/") || to == "kvstore" || to == "chunkkv")
	}},
	{"the offline stage (fusion) never imports the online one (recompute, rag, proxy, sidecar, engine)", func(from, to string) bool {
		return from == "fusion" && slices.Contains([]string{"recompute", "rag", "proxy", "sidecar", "engine"}, to)
	}},
	{"the fusion path (rag) is wired by sidecar, never imported by the proxy or below it", func(from, to string) bool {
		return to == "rag" && from != "sidecar"
	}},
	{"the engine is a separate server: it imports no sidecar package (proxy, rag, recompute, fusion, adapters)", func(from, to string) bool {
		return from == "engine" && (slices.Contains([]string{"proxy", "rag", "recompute", "fusion", "sidecar"}, to) || strings.HasPrefix(to, "adapters"))
	}},
	{"model, fingerprint and kvstore are the bottom: they import no stage", func(from, to string) bool {
		bottom := from == "fingerprint" || from == "kvstore" || from == "model" || strings.HasPrefix(from, "model/")
		return bottom && slices.Contains([]string{"prompt", "chunkkv", "recompute", "fusion", "engine", "proxy", "rag", "sidecar", "adapters"}, to)
	}},
}

type pkg struct {
	ImportPath string
	Imports    []string
}

// moduleImports runs go list over the module and returns every package's
// module-internal non-test imports, paths relative to the module.
func moduleImports(t *testing.T) map[string][]string {
	t.Helper()
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("SKIPPING: no go command on PATH to list the module's imports")
	}
	cmd := exec.Command("go", "list", "-json", module+"...")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, stderr.String())
	}
	got := map[string][]string{}
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var p pkg
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatalf("go list output: %v", err)
		}
		from := strings.TrimPrefix(p.ImportPath, module)
		got[from] = []string{}
		for _, imp := range p.Imports {
			if strings.HasPrefix(imp, module) {
				got[from] = append(got[from], strings.TrimPrefix(imp, module))
			}
		}
	}
	if len(got) < 10 {
		t.Fatalf("go list found %d packages of the module: not run from inside it?", len(got))
	}
	return got
}

// TestLayering fails on every import that goes against the layering, with
// the import and the rule it breaks.
func TestLayering(t *testing.T) {
	graph := moduleImports(t)
	froms := make([]string, 0, len(graph))
	for from := range graph {
		froms = append(froms, from)
	}
	sort.Strings(froms)
	for _, from := range froms {
		ok, placed := allowed[from]
		if !placed {
			t.Errorf("package %s is not placed in the layering (internal/layering's allowed table and docs/architecture.md); it imports %v", from, graph[from])
			continue
		}
		for _, to := range graph[from] {
			broken := ""
			for _, r := range rules {
				if r.bad(from, to) {
					broken = r.rule
					break
				}
			}
			switch {
			case broken != "":
				t.Errorf("%s imports %s: breaks the rule %q", module+from, module+to, broken)
			case !slices.Contains(ok, to):
				t.Errorf("%s imports %s: not an allowed edge (allowed: %v); if it belongs, add it to the table and to docs/architecture.md", module+from, module+to, ok)
			}
		}
	}
}

// TestRulesCatch: each rule fails the import it is about (a rule that can
// never fire would let the graph drift silently).
func TestRulesCatch(t *testing.T) {
	for _, tc := range []struct{ from, to string }{
		{"proxy", "cmd/fusionrag"}, {"sidecar", "bench"}, {"rag", "sidecar"}, {"proxy", "engine"}, {"proxy", "fusion"},
		{"proxy", "model"}, {"fusion", "recompute"}, {"proxy", "rag"}, {"engine", "adapters"}, {"kvstore", "recompute"},
	} {
		caught := false
		for _, r := range rules {
			caught = caught || r.bad(tc.from, tc.to)
		}
		if !caught {
			t.Errorf("%s -> %s: no rule catches it", tc.from, tc.to)
		}
		if slices.Contains(allowed[tc.from], tc.to) {
			t.Errorf("%s -> %s is in the allowed table although a rule forbids it", tc.from, tc.to)
		}
	}
}
