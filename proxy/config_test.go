package proxy

import (
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/fusionrag/fusionrag/adapters"
	_ "github.com/fusionrag/fusionrag/adapters/llamacpp"
	_ "github.com/fusionrag/fusionrag/adapters/native"
	_ "github.com/fusionrag/fusionrag/adapters/passthrough"
	"github.com/fusionrag/fusionrag/recompute"
)

var update = flag.Bool("update", false, "rewrite golden files (docs/configuration.md)")

// configTestAdapter and configSlotAdapter are registered by this file
// only: fusion.adapter accepts any registered name, and the second says it
// needs a slot dir, as llamacpp does.
const (
	configTestAdapter = "config-test"
	configSlotAdapter = "config-test-slots"
)

func init() {
	adapters.Register(configTestAdapter, func(adapters.Config) (adapters.Engine, error) { return nil, adapters.ErrConfig })
	adapters.Register(configSlotAdapter, func(adapters.Config) (adapters.Engine, error) { return nil, adapters.ErrConfig },
		adapters.Needs{SlotDir: "the test engine's slot directory"})
}

func TestConfigPrecedence(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "fusionrag.yaml")
	yaml := `
upstream: http://127.0.0.1:8000
listen: 127.0.0.1:9999
timeouts:
  read: 3s
  connect: 250ms
fusion:
  ratio: 0.2
  strategy: cacheblend
  separator: " # # "
limits:
  max_chunks: 16
`
	if err := os.WriteFile(file, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{
		"FUSIONRAG_TIMEOUTS_READ":     "4s",
		"FUSIONRAG_FUSION_STRATEGY":   "epic",
		"FUSIONRAG_LIMITS_MAX_CHUNKS": "32",
	}
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	cf := RegisterFlags(fs)
	if err := fs.Parse([]string{"-timeouts.read=5s", "-limits.max_chunks", "8"}); err != nil {
		t.Fatal(err)
	}
	c, err := LoadConfig(file, func(k string) (string, bool) { v, ok := env[k]; return v, ok }, cf.Visited())
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]any{
		"listen": c.Listen, "read": c.Timeouts.Read, "connect": c.Timeouts.Connect, "write": c.Timeouts.Write,
		"strategy": c.Fusion.Strategy, "ratio": c.Fusion.Ratio, "sep": c.Fusion.Separator, "chunks": c.Limits.MaxChunks,
		"tenant": c.Tenant.Header, "metrics": c.MetricsPath,
	}
	want := map[string]any{
		"listen": "127.0.0.1:9999", "read": 5 * time.Second, "connect": 250 * time.Millisecond, "write": time.Minute,
		"strategy": "epic", "ratio": 0.2, "sep": " # # ", "chunks": 8,
		"tenant": "-", "metrics": "/metrics",
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("flags > env > file > defaults violated (-want +got):\n%s", d)
	}
}

func TestConfigErrors(t *testing.T) {
	tests := []struct {
		name, yaml string
		env        map[string]string
		want       string // substring of the error
	}{
		{"no upstream", "listen: 127.0.0.1:1\n", nil, "upstream: required"},
		{"https upstream", "upstream: https://x\n", nil, "only http://"},
		{"upstream with path", "upstream: http://x:1/v1\n", nil, "without a path"},
		{"unknown key", "upstream: http://x:1\nfusion:\n  ratoi: 0.2\n", nil, "ratoi"},
		{"bad strategy", "upstream: http://x:1\nfusion:\n  strategy: magic\n", nil, "fusion.strategy"},
		{"bad ratio", "upstream: http://x:1\nfusion:\n  ratio: 1.5\n", nil, "fusion.ratio"},
		{"marker pair", "upstream: http://x:1\nfusion:\n  marker_open: <doc>\n", nil, "marker_close go together"},
		{"negative timeout", "upstream: http://x:1\ntimeouts:\n  read: -1s\n", nil, "timeouts.read"},
		{"bad env duration", "upstream: http://x:1\n", map[string]string{"FUSIONRAG_TIMEOUTS_FUSION": "soon"}, "FUSIONRAG_TIMEOUTS_FUSION"},
		{"bad tenant header", "upstream: http://x:1\ntenant:\n  header: \"a b\"\n", nil, "tenant.header"},
		{"bad metrics path", "upstream: http://x:1\nmetrics_path: metrics\n", nil, "metrics_path"},
		{"unregistered adapter", "upstream: http://x:1\nfusion:\n  adapter: vllm\n", nil, `fusion.adapter: "vllm" is not one of the registered adapters [`},
		{"relative slot dir", "upstream: http://x:1\nfusion:\n  slot_dir: slots\n", nil, "fusion.slot_dir"},
		{"slot adapter without slot dir", "upstream: http://x:1\nfusion:\n  adapter: config-test-slots\n", nil,
			"fusion.slot_dir: required by the config-test-slots adapter (the test engine's slot directory)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			file := filepath.Join(t.TempDir(), "c.yaml")
			_ = os.WriteFile(file, []byte(tt.yaml), 0o644)
			_, err := LoadConfig(file, func(k string) (string, bool) { v, ok := tt.env[k]; return v, ok }, nil)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want one mentioning %q", err, tt.want)
			}
		})
	}
	if _, err := LoadConfig("", nil, map[string]string{"upstream": "http://127.0.0.1:8000"}); err != nil {
		t.Errorf("flags only: %v", err)
	}
	// Any registered adapter is accepted (the test binary registers native
	// through this file's import), with its slot dir.
	for _, name := range []string{"native", configTestAdapter, configSlotAdapter} {
		if _, err := LoadConfig("", nil, map[string]string{"upstream": "http://127.0.0.1:8000", "fusion.adapter": name,
			"fusion.slot_dir": "/slots"}); err != nil {
			t.Errorf("adapter %s: %v", name, err)
		}
	}
	if _, err := LoadConfig("", nil, map[string]string{"upstream": "http://127.0.0.1:8000", "fusion.adapter": "vllm",
		"fusion.disabled": "true"}); err != nil {
		t.Errorf("unregistered adapter with fusion disabled: %v", err)
	}
	if _, err := LoadConfig(filepath.Join(t.TempDir(), "absent.yaml"), nil, nil); err == nil {
		t.Error("missing file: no error")
	}
	empty := filepath.Join(t.TempDir(), "empty.yaml")
	_ = os.WriteFile(empty, nil, 0o644)
	if _, err := LoadConfig(empty, nil, map[string]string{"upstream": "http://127.0.0.1:8000"}); err != nil {
		t.Errorf("empty file: %v", err)
	}
}

// TestReference keeps docs/configuration.md in step with Config.
func TestReference(t *testing.T) {
	path := filepath.Join("..", "docs", "configuration.md")
	got := Reference()
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./proxy -run TestReference -update)", err)
	}
	if d := cmp.Diff(string(want), got); d != "" {
		t.Errorf("docs/configuration.md is stale; run go test ./proxy -run TestReference -update (-file +generated):\n%s", d)
	}
}

// TestDocNamesRegistered: the configuration reference lists exactly the
// strategies and adapters this binary registers (recompute.Register,
// adapters.Register), since the doc tags are text while validation reads the
// registries. The proxy's tests import the three adapter packages (and
// register configTestAdapter and configSlotAdapter, which the doc does not list).
func TestDocNamesRegistered(t *testing.T) {
	docOf := func(key string) string {
		var doc string
		var c Config
		_ = walkConfig(reflect.ValueOf(&c).Elem(), "", func(f setting) error {
			if f.key == key {
				doc = f.doc
			}
			return nil
		})
		return doc
	}
	// names reads "a (...), b (...) or c (...)." after prefix.
	names := func(doc, prefix string) []string {
		_, list, ok := strings.Cut(doc, prefix)
		if !ok {
			t.Fatalf("doc %q lacks %q", doc, prefix)
		}
		list = regexp.MustCompile(`\s*\([^)]*\)`).ReplaceAllString(list, "")
		list, _, _ = strings.Cut(list, ".")
		out := strings.FieldsFunc(strings.ReplaceAll(list, " or ", ","), func(r rune) bool { return r == ',' || r == ' ' })
		slices.Sort(out)
		return out
	}
	if d := cmp.Diff(recompute.Strategies(), names(docOf("fusion.strategy"), "Default recompute strategy: ")); d != "" {
		t.Errorf("fusion.strategy's doc against the registered strategies (-registered +doc):\n%s", d)
	}
	registered := slices.DeleteFunc(adapters.Names(), func(n string) bool { return n == configTestAdapter || n == configSlotAdapter })
	if d := cmp.Diff(registered, names(docOf("fusion.adapter"), "registered in the binary: ")); d != "" {
		t.Errorf("fusion.adapter's doc against the registered adapters (-registered +doc):\n%s", d)
	}
}
