package bench

import (
	"bytes"
	"compress/gzip"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fusionrag/fusionrag/internal/shareddata"
	"github.com/google/go-cmp/cmp"
)

func TestParseDataset(t *testing.T) {
	list := `[{"question":"q1","answers":["a"],"ctxs":[{"title":"t","text":"x"},{"title":"","text":"  "}]}]`
	lines := "{\"input\":\"q2\",\"answers\":\"b\",\"ctxs\":[{\"title\":\"t\",\"text\":\"y\",\"isgold\":true}]}\n\n"
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write([]byte(lines))
	zw.Close()
	for _, tc := range []struct {
		name string
		data []byte
		want []Example
	}{
		{"list", []byte(list), []Example{{ID: "list/0", Question: "q1", Answers: []string{"a"}, Passages: []Passage{{Title: "t", Text: "x"}}}}},
		{"lines", []byte(lines), []Example{{ID: "lines/0", Question: "q2", Answers: []string{"b"}, Passages: []Passage{{Title: "t", Text: "y", Gold: true}}}}},
		{"gz", gz.Bytes(), []Example{{ID: "gz/0", Question: "q2", Answers: []string{"b"}, Passages: []Passage{{Title: "t", Text: "y", Gold: true}}}}},
	} {
		ds, err := ParseDataset(tc.name, tc.data)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if d := cmp.Diff(tc.want, ds.Examples); d != "" {
			t.Errorf("%s (-want +got):\n%s", tc.name, d)
		}
	}
	for _, bad := range []string{
		``, `[]`, `[{"question":"q"}]`, `{"question":"q","answers":[],"ctxs":[{"text":"x"}]}`,
		`{"question":"","answers":["a"],"ctxs":[{"text":"x"}]}`, `{"question":"q","answers":["a"],"ctxs":[]}`,
		`{"question":"q","answers":7,"ctxs":[{"text":"x"}]}`, "{\"question\":\"q\"\n", "\x1f\x8bnot gzip",
	} {
		if _, err := ParseDataset("bad", []byte(bad)); !errors.Is(err, ErrDataset) {
			t.Errorf("%q: err %v, want ErrDataset", bad, err)
		}
	}
}

func TestAddDistractors(t *testing.T) {
	ds, err := LoadDataset(filepath.Join("testdata", "tiny_rag.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	if ds.Name != "tiny_rag" || len(ds.Examples) != 4 {
		t.Fatalf("%s: %d examples", ds.Name, len(ds.Examples))
	}
	own := map[string]string{}
	for _, e := range ds.Examples {
		own[e.ID] = e.Passages[0].Text
	}
	ds.AddDistractors(3, 1)
	for _, e := range ds.Examples {
		if len(e.Passages) < 3 {
			t.Errorf("%s: %d passages, want 3", e.ID, len(e.Passages))
		}
		n := 0
		for _, p := range e.Passages {
			if p.Text == own[e.ID] {
				n++
			}
		}
		if n != 1 {
			t.Errorf("%s: own passage %d times", e.ID, n)
		}
	}
}

// TestRealDatasets loads the shared RAG sets: shapes as documented.
func TestRealDatasets(t *testing.T) {
	mu, err := LoadDataset(shareddata.Path(t, "rag/cacheblend_musique_s.json"))
	if err != nil {
		t.Fatal(err)
	}
	if len(mu.Examples) != 150 || len(mu.Examples[0].Passages) != 10 {
		t.Errorf("musique: %d examples, %d passages", len(mu.Examples), len(mu.Examples[0].Passages))
	}
	if testing.Short() {
		return
	}
	nq, err := LoadDataset(shareddata.Path(t, "rag/nq-open-oracle.jsonl.gz"))
	if err != nil {
		t.Fatal(err)
	}
	if len(nq.Examples) != 2655 || !nq.Examples[0].Passages[0].Gold {
		t.Errorf("nq: %d examples, first passage gold %v", len(nq.Examples), nq.Examples[0].Passages[0].Gold)
	}
}

// FuzzParseDataset: any bytes give a dataset whose examples all have a
// question, an answer and a passage, or an error matching ErrDataset; never
// a panic.
func FuzzParseDataset(f *testing.F) {
	b, err := os.ReadFile(filepath.Join("testdata", "tiny_rag.jsonl"))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b)
	f.Add([]byte(`[{"question":"q","answers":["a"],"ctxs":[{"title":"t","text":"x"}]}]`))
	f.Add([]byte(`{"input":"q","answers":"a","ctxs":[{"text":"x","isgold":true}]}`))
	f.Add([]byte("\x1f\x8b\x08\x00\x00\x00\x00\x00"))
	f.Fuzz(func(t *testing.T, data []byte) {
		ds, err := ParseDataset("fuzz", data)
		if err != nil {
			if !errors.Is(err, ErrDataset) {
				t.Fatalf("error %v does not match ErrDataset", err)
			}
			return
		}
		for _, e := range ds.Examples {
			if strings.TrimSpace(e.Question) == "" || len(e.Answers) == 0 || len(e.Passages) == 0 {
				t.Fatalf("incomplete example %+v", e)
			}
		}
		ds.AddDistractors(3, 1) // must not panic either
	})
}
