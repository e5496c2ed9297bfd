package bench

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/fusionrag/fusionrag/internal/redisproc"
	"github.com/fusionrag/fusionrag/internal/shareddata"
	"github.com/fusionrag/fusionrag/model"
)

// TestFaults runs the fault-and-load harness on a short configuration
// (stories260K, 400 requests or more, 8 clients, a 3 s last phase) and asserts what does not depend
// on timing: no wrong answer, no failure outside the engine-down window,
// every phase reached, and the faults hit (corruptions counted, Redis
// marked down). Throughput is reported, never asserted.
func TestFaults(t *testing.T) {
	if testing.Short() {
		t.Skip("SKIPPING: the fault-and-load harness takes about a minute (run without -short)")
	}
	if _, err := redisproc.Binary(); err != nil {
		t.Skipf("SKIPPING: %v", err)
	}
	m, err := model.Load(shareddata.Path(t, "models/stories260K/stories260K.bin"), model.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	res, err := RunFaults(ctx, FaultConfig{Model: m, Requests: 400, Concurrency: 8, Prompts: 16,
		EngineDown: 300 * time.Millisecond, After: 3 * time.Second, Dir: t.TempDir(), Quiet: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, tb := range FaultTables(res) {
		tb.WriteMarkdown(testWriter{t})
	}
	if res.Requests < 400 {
		t.Errorf("requests: got %d, want at least 400", res.Requests)
	}
	if res.Wrong != 0 {
		t.Errorf("wrong answers: got %d, want 0: %v", res.Wrong, res.WrongExamples)
	}
	if res.Failed != 0 {
		t.Errorf("failed outside engine-down windows: got %d, want 0: %v", res.Failed, res.FirstErrors)
	}
	if res.Fused == 0 {
		t.Error("no request was fused")
	}
	var corrupt, downs int64
	for _, p := range res.Phases {
		if p.Requests == 0 {
			t.Errorf("phase %s got no request", p.Phase)
		}
		corrupt += p.Store["disk corruptions"] + p.Store["redis corruptions"]
		downs += p.Store["redis went down"]
	}
	if corrupt == 0 {
		t.Error("no corrupt blob was counted: the corruption faults did not reach the store")
	}
	if downs == 0 {
		t.Error("the Redis tier never went down")
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) { w.t.Log(string(p)); return len(p), nil }

func TestFaultAnswersCheck(t *testing.T) {
	a := faultAnswers{full: "a ball", fullSep: "a kite", fused1: "a box", fused2: "a hat"}
	for _, tc := range []struct {
		text  string
		fused bool
		wrong bool
	}{
		{"a ball", false, false},
		{"a kite", false, false},
		{"a ball", true, false}, // fused and exact
		{"a box", true, false},
		{"a hat", true, false},
		{"a box", false, true}, // the engine alone never gives the fused answer
		{"a cake", true, true},
		{"", true, true},
	} {
		if got := a.check(tc.text, tc.fused); got != tc.wrong {
			t.Errorf("check(%q, fused %v): got wrong=%v, want %v", tc.text, tc.fused, got, tc.wrong)
		}
	}
	// An unfused clean pass leaves fused1 empty: an empty answer is still wrong.
	if !(faultAnswers{full: "x", fullSep: "y"}).check("", true) {
		t.Error("an empty fused answer matched an empty reference")
	}
}

func TestMetricByLabel(t *testing.T) {
	m := map[string]float64{
		`fusionrag_proxy_requests_total{path="fusion",route="chat"}`:        2,
		`fusionrag_proxy_requests_total{path="fusion",route="completions"}`: 3,
		`fusionrag_proxy_requests_total{route="chat",path="fallback"}`:      1,
		`fusionrag_proxy_requests_total_other{path="fusion"}`:               7,
		`fusionrag_proxy_skips_total{reason="too_many_missing"}`:            4,
	}
	got := metricByLabel(m, "fusionrag_proxy_requests_total", "path")
	if len(got) != 2 || got["fusion"] != 5 || got["fallback"] != 1 {
		t.Errorf("got %v, want map[fallback:1 fusion:5]", got)
	}
	if got := counts(metricByLabel(m, "fusionrag_proxy_skips_total", "reason")); got != "too_many_missing 4" {
		t.Errorf("counts: got %q, want %q", got, "too_many_missing 4")
	}
}

func TestFaultPromptsFit(t *testing.T) {
	m, err := model.Load(shareddata.Path(t, "models/stories260K/stories260K.bin"), model.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	ps, err := faultPrompts(m, 64, 4, 8, 18)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	classes := map[string]int{}
	for _, p := range ps {
		classes[p.class]++
		parts := strings.Split(p.text, StackSeparator)
		if len(parts) != 6 {
			t.Fatalf("prompt has %d parts, want S, 4 chunks, Q: %q", len(parts), p.text)
		}
		for _, c := range parts[1:5] {
			if seen[c] {
				t.Errorf("chunk %q in two prompts", c)
			}
			seen[c] = true
		}
	}
	if classes[ClassLocal] != 32 || classes[ClassRedis] != 32 {
		t.Errorf("classes: got %v, want 32 each", classes)
	}
	if _, err := faultPrompts(m, 2, 40, 8, 18); err == nil {
		t.Error("40 passages fit stories260K's 512 positions: want an error")
	}
}
