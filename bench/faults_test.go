package bench

import (
	"context"
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
