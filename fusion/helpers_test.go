package fusion

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/fusionrag/fusionrag/kvstore"
	"github.com/fusionrag/fusionrag/model"
	"github.com/fusionrag/fusionrag/model/tokenizer"
)

// tinyConfig is the synthetic model of the tests: small enough that an
// ingest of hundreds of chunks takes seconds on one core.
func tinyConfig(maxPos int) model.Config {
	return model.Config{Arch: model.ArchLlama, Dim: 64, HiddenDim: 128, Layers: 3, Heads: 4, KVHeads: 2, HeadDim: 16,
		Vocab: 512, MaxPositions: maxPos, RopeTheta: 10000, RopeInterleaved: true, NormEps: 1e-5,
		TiedEmbeddings: true, BOS: 1, EOS: []int32{2}}
}

var (
	synthDirs sync.Map // config string -> dir
	synthSeq  atomic.Int64
)

// synthModel writes (once per process and shape) and loads a synthetic model
// with its llama2.c tokenizer.
func synthModel(t testing.TB, cfg model.Config) *model.Model {
	t.Helper()
	return synthModelTok(t, cfg, "")
}

// synthModelTok is synthModel with another tokenizer file ("" for the
// synthetic one).
func synthModelTok(t testing.TB, cfg model.Config, tok string) *model.Model {
	t.Helper()
	key := fmt.Sprintf("%+v", cfg)
	dir, ok := synthDirs.Load(key)
	if !ok {
		d := filepath.Join(synthRoot(t), fmt.Sprintf("m%d", synthSeq.Add(1)))
		if err := model.WriteSynthetic(d, cfg, 7, model.SaveOptions{}); err != nil {
			t.Fatal(err)
		}
		dir, _ = synthDirs.LoadOrStore(key, d)
	}
	m, err := model.Load(dir.(string), model.LoadOptions{Tokenizer: tok})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	if m.Tokenizer == nil {
		t.Fatal("synthetic model has no tokenizer")
	}
	return m
}

// rootDir holds the synthetic models of this test process (TestMain).
var rootDir string

func synthRoot(testing.TB) string { return rootDir }

func TestMain(m *testing.M) {
	d, err := os.MkdirTemp("", "fusion-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	rootDir = d
	code := m.Run()
	os.RemoveAll(d)
	os.Exit(code)
}

func openStore(t testing.TB, url string) kvstore.Store {
	t.Helper()
	st, err := kvstore.Open(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// storyDocs is a small deterministic corpus in the stories260K vocabulary.
func storyDocs() []Document {
	return []Document{
		{ID: "lily", Title: "Lily", Text: "Once upon a time, there was a little girl named Lily. She loved to play outside in the park with her dog. One day, she found a big red ball under a tree."},
		{ID: "tom", Title: "Tom", Text: "Tom was a happy boy. He liked to eat apples and run in the sun. His mom gave him a red ball for his birthday and he played with it all day."},
		{ID: "pets", Chunks: []string{"The dog ran to the park. It was a sunny day.", "The cat sat on the mat and looked at the bird in the tree."}},
		{ID: "ben", Title: "Ben", Text: "Ben and his friend went to the sea. They saw a big fish and a boat. They were very happy and played in the sand until the sun went down."},
		{ID: "sue", Title: "Sue", Text: "Sue had a little red car. She drove it around the house and the dog ran after it. Mom laughed and gave Sue a big hug."},
	}
}

func chunksOf(t testing.TB, m *model.Model, docs []Document, size, overlap int) []Chunk {
	t.Helper()
	ch, err := NewChunker(Chunker{Tokenizer: m.Tokenizer, Size: size, Overlap: overlap})
	if err != nil {
		t.Fatal(err)
	}
	cs, st := ChunkDocuments(docs, ch)
	if st.Rejected > 0 {
		t.Fatalf("rejected chunks: %v", st.Rejections)
	}
	return cs
}

func newIngester(t testing.TB, cfg Config) *Ingester {
	t.Helper()
	if cfg.Logf == nil {
		cfg.Logf = t.Logf
	}
	in, err := NewIngester(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	return in
}

func joinIDs(cs []Chunk) string {
	ids := make([]string, len(cs))
	for i, c := range cs {
		ids[i] = c.ID
	}
	return strings.Join(ids, ",")
}

func loadFuzzTokenizer(f *testing.F) tokenizer.Tokenizer {
	return synthModel(f, tinyConfig(256)).Tokenizer
}
