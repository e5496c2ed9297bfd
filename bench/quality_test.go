package bench

import (
	"context"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fusionrag/fusionrag/internal/shareddata"
)

func TestNormalizeAnswer(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"The Eiffel Tower", "eiffel tower"},
		{"  a  cat,  an apple; THE end. ", "cat apple end"},
		{"Wilhelm Conrad Röntgen", "wilhelm conrad röntgen"},
		{"theater", "theater"},             // an article only as a whole word
		{"U.S.A.", "usa"},                  // punctuation removed, not replaced
		{"the’s", "’s"},                    // ’ is not ASCII punctuation and ends the word "the"
		{"1,000 (approx.)", "1000 approx"}, // digits are words
		{"", ""},
		{"—", "—"}, // non-ASCII punctuation stays, as in Python's string.punctuation
	} {
		if got := NormalizeAnswer(tc.in); got != tc.want {
			t.Errorf("NormalizeAnswer(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestTokenF1(t *testing.T) {
	for _, tc := range []struct {
		pred, gold string
		want       float64
	}{
		{"Paris", "paris", 1},
		{"the city of Paris", "Paris", 2 * (1.0 / 3) * 1 / (1.0/3 + 1)}, // tokens city, of, paris: P 1/3, R 1
		{"Paris Paris", "Paris", 2 * 0.5 * 1 / 1.5},                     // multiset overlap counts once
		{"London", "Paris", 0},
		{"", "Paris", 0},
		{"the", "a", 0}, // both normalise to nothing
	} {
		if got := TokenF1(tc.pred, tc.gold); math.Abs(got-tc.want) > 1e-12 {
			t.Errorf("TokenF1(%q, %q) = %v, want %v", tc.pred, tc.gold, got, tc.want)
		}
	}
	if got := BestF1("New York City", []string{"Boston", "New York", "nyc"}); math.Abs(got-0.8) > 1e-12 {
		t.Errorf("BestF1 = %v, want 0.8 (P 2/3, R 1)", got)
	}
	if !AnyExact("The Beatles!", []string{"x", "beatles"}) || AnyExact("Beatles band", []string{"beatles"}) {
		t.Error("AnyExact wrong")
	}
	if got := FirstLine("\n\n Paris \nis the capital"); got != "Paris" {
		t.Errorf("FirstLine = %q", got)
	}
}

func TestTemplate(t *testing.T) {
	got := CacheBlendTemplate.QuestionText("Who wrote Hamlet")
	if !strings.HasSuffix(got, "\nQuestion:who wrote Hamlet?\nAnswer:") {
		t.Errorf("question text %q", got)
	}
	if got := CacheBlendTemplate.PassageText(Passage{Title: "T", Text: "x"}); got != "T\n\nx\n\n" {
		t.Errorf("passage text %q", got)
	}
}

func TestAggregateQuality(t *testing.T) {
	kl := func(v float64) *float64 { return &v }
	res := []QualityResult{
		{Dataset: "d", Strategy: "full", Ratio: 1, F1: 0.8, EM: true, F1ToFull: 1, SameAsFull: true, KL: kl(0), Top1: kl(1)},
		{Dataset: "d", Strategy: "reuse", Ratio: 0, F1: 0.2, KL: kl(2), Top1: kl(0.5)},
		{Dataset: "d", Strategy: "fusionrag", Ratio: 0.15, F1: 0.5, KL: kl(0.5), Top1: kl(0.75)},
	}
	rows := AggregateQuality(res, "m", "in-process")
	if len(rows) != 3 {
		t.Fatalf("%d rows", len(rows))
	}
	want := []struct{ nf1, nfid float64 }{{100, 100}, {0, 0}, {50, 75}}
	for i, r := range rows {
		if r.NormalizedF1 == nil || math.Abs(*r.NormalizedF1-want[i].nf1) > 1e-9 ||
			r.NormalizedFidelity == nil || math.Abs(*r.NormalizedFidelity-want[i].nfid) > 1e-9 {
			t.Errorf("row %d %s: normalised F1 %v fidelity %v, want %v", i, r.Strategy, r.NormalizedF1, r.NormalizedFidelity, want[i])
		}
	}
	// Equal full and reuse F1: normalised F1 undefined, not NaN.
	res[1].F1 = 0.8
	if r := AggregateQuality(res, "m", "x")[2]; r.NormalizedF1 != nil {
		t.Errorf("normalised F1 %v with F1_full = F1_reuse, want nil", *r.NormalizedF1)
	}
}

// TestQualityStories answers a few MuSiQue questions with stories260K in
// process, checks the invariants (full agrees with itself, reuse KL > 0 on
// several chunks), then resumes from the results file without re-running.
func TestQualityStories(t *testing.T) {
	m := loadStories(t)
	ds, err := LoadDataset(shareddata.Path(t, "rag/cacheblend_musique_s.json"))
	if err != nil {
		t.Fatal(err)
	}
	if len(ds.Examples) != 150 {
		t.Errorf("%d MuSiQue examples, want 150", len(ds.Examples))
	}
	ds.Limit(2)
	results := filepath.Join(t.TempDir(), "results.jsonl")
	cfg := QualityConfig{Model: m, Name: "stories260K", Datasets: []*Dataset{ds}, Passages: 4, PassageTokens: 64,
		AnswerTokens: 8, Ratios: []float64{0.15}, ResultsFile: results, Quiet: true}
	start := time.Now()
	rows, per, err := RunQuality(context.Background(), cfg)
	for _, r := range per {
		t.Logf("%s: %q", r.Key, r.Answer)
	}
	if err != nil {
		t.Fatal(err)
	}
	if len(per) != 2*5 || len(rows) != 5 {
		t.Fatalf("%d results, %d rows; want 10, 5", len(per), len(rows))
	}
	for _, r := range per {
		if r.PromptTokens > m.Config.MaxPositions-cfg.AnswerTokens || r.ContextTokens > 4*64 {
			t.Errorf("%s: prompt %d tokens, context %d: not cut to fit", r.Key, r.PromptTokens, r.ContextTokens)
		}
	}
	full := rows[0]
	if full.Strategy != "full" || full.SameAsFull != 100 || *full.KL != 0 || *full.Top1 != 100 {
		t.Errorf("full row %+v", full)
	}
	if *rows[1].KL <= 0 {
		t.Errorf("reuse KL %v, want > 0 with 4 chunks", *rows[1].KL)
	}
	var md strings.Builder
	for _, tb := range QualityTables(rows, time.Since(start)) {
		tb.WriteMarkdown(&md)
	}
	t.Logf("\n%s", md.String())

	// Resume: every result is in the file, nothing runs again (no model).
	b, _ := os.ReadFile(results)
	if n := strings.Count(string(b), "\n"); n != 10 {
		t.Fatalf("results file has %d lines, want 10", n)
	}
	os.WriteFile(results, append(b, []byte(`{"run":"torn`)...), 0o644) // a crash mid-line
	again, per2, err := RunQuality(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if len(per2) != 10 || again[2].F1ToFull != rows[2].F1ToFull {
		t.Errorf("resumed run differs: %d results", len(per2))
	}
	if b2, _ := os.ReadFile(results); len(b2) != len(b)+len(`{"run":"torn`) {
		t.Errorf("resumed run appended %d bytes, want none", len(b2)-len(b)-len(`{"run":"torn`))
	}
}

// TestQualityEndpoint answers through HTTP: the engine directly and the
// sidecar's fusion path (chunks marked with the separator); every method
// gets an answer, and nothing claims fidelity figures it cannot have.
func TestQualityEndpoint(t *testing.T) {
	m := tinyTokModel(t)
	st, err := StartStack(StackConfig{Model: m, Fusion: true})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ds, err := LoadDataset(filepath.Join("testdata", "tiny_rag.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	ds.Limit(2)
	for _, tc := range []struct {
		name, url, sep string
	}{{"engine", st.EngineURL, ""}, {"fusion", st.FusionURL, StackSeparator}} {
		rows, per, err := RunQuality(context.Background(), QualityConfig{Model: m, Endpoint: tc.url, Name: tc.name, Datasets: []*Dataset{ds},
			Passages: 2, PassageTokens: 32, AnswerTokens: 4, Ratios: []float64{0.15}, Separator: tc.sep, Quiet: true})
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if len(per) != 2*5 || len(rows) != 5 {
			t.Fatalf("%s: %d results, %d rows", tc.name, len(per), len(rows))
		}
		for _, r := range rows {
			if r.Source != "endpoint" || r.KL != nil || r.NormalizedFidelity != nil {
				t.Errorf("%s: row %+v", tc.name, r)
			}
		}
		if rows[0].SameAsFull != 100 {
			t.Errorf("%s: full agrees with itself on %.0f%%", tc.name, rows[0].SameAsFull)
		}
	}
	if _, _, err := RunQuality(context.Background(), QualityConfig{Endpoint: "http://127.0.0.1:1", Datasets: []*Dataset{ds}, Quiet: true}); err == nil {
		t.Error("dead endpoint: no error")
	}
}

// TestQualityNormalisationPinned: in every dataset's table, reuse (raw chunk
// KV, the paper's baseline) is exactly 0 and full exactly 100, for F1 and
// for fidelity, whatever the values.
func TestQualityNormalisationPinned(t *testing.T) {
	kl := func(v float64) *float64 { return &v }
	var results []QualityResult
	for i, x := range []float64{0.0196, 0.00449, 1.0 / 3, 0.1 + 0.2} {
		ds := fmt.Sprintf("d%d", i)
		results = append(results,
			QualityResult{Dataset: ds, Strategy: "full", Ratio: 1, F1: x + 0.7, KL: kl(0), Top1: kl(1)},
			QualityResult{Dataset: ds, Strategy: "reuse", F1: x / 7, KL: kl(x), Top1: kl(0.9)},
			QualityResult{Dataset: ds, Strategy: "fusionrag", Ratio: 0.15, F1: x / 2, KL: kl(x / 3), Top1: kl(0.95)})
	}
	for _, r := range AggregateQuality(results, "m", "in-process") {
		switch r.Strategy {
		case "full":
			if *r.NormalizedF1 != 100 || *r.NormalizedFidelity != 100 {
				t.Errorf("%s full: normalised F1 %v, fidelity %v; want exactly 100", r.Dataset, *r.NormalizedF1, *r.NormalizedFidelity)
			}
		case "reuse":
			if *r.NormalizedF1 != 0 || *r.NormalizedFidelity != 0 {
				t.Errorf("%s reuse: normalised F1 %v, fidelity %v; want exactly 0", r.Dataset, *r.NormalizedF1, *r.NormalizedFidelity)
			}
		}
	}
}
