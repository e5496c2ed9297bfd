package fusion

import (
	"context"
	"encoding/json"
	"errors"
	"hash/fnv"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// bagOfWords embeds a text as hashed word counts: a deterministic stand-in
// for a real embedding model behind a real HTTP endpoint.
func bagOfWords(text string, dim int) []float32 {
	v := make([]float32, dim)
	for _, w := range Words(text, false) {
		h := fnv.New32a()
		h.Write([]byte(w))
		v[h.Sum32()%uint32(dim)]++
	}
	return v
}

// embeddingServer serves POST /v1/embeddings like the OpenAI API; mangle
// may corrupt a response.
func embeddingServer(t *testing.T, mangle func(resp map[string]any)) (*httptest.Server, *atomic.Int64) {
	var calls atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		if r.Method != http.MethodPost || r.URL.Path != "/v1/embeddings" {
			http.Error(w, "not found", http.StatusNotFound)
			return
		}
		if r.Header.Get("Authorization") != "Bearer k" {
			http.Error(w, `{"error":"no key"}`, http.StatusUnauthorized)
			return
		}
		var req struct {
			Model string   `json:"model"`
			Input []string `json:"input"`
		}
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		var data []map[string]any
		// Reverse order: clients must use "index".
		for i := len(req.Input) - 1; i >= 0; i-- {
			data = append(data, map[string]any{"object": "embedding", "index": i, "embedding": bagOfWords(req.Input[i], 32)})
		}
		resp := map[string]any{"object": "list", "model": req.Model, "data": data}
		if mangle != nil {
			mangle(resp)
		}
		json.NewEncoder(w).Encode(resp)
	}))
	t.Cleanup(srv.Close)
	return srv, &calls
}

func TestEmbeddingsNeighbours(t *testing.T) {
	srv, calls := embeddingServer(t, nil)
	chunks := []Chunk{
		{Text: "red ball park dog"},
		{Text: "red ball birthday"},
		{Text: "dog park sunny day"},
		{Text: "fish boat sea sand"},
		{Text: "fish boat"},
	}
	e := &Embeddings{URL: srv.URL, Model: "bow", APIKey: "k", BatchSize: 2}
	got, err := e.Neighbours(context.Background(), chunks, 2)
	if err != nil {
		t.Fatal(err)
	}
	if calls.Load() != 3 {
		t.Errorf("%d requests for 5 texts in batches of 2, want 3", calls.Load())
	}
	// Inner products of word counts (hash collisions aside): shared words.
	if got[0][0] != 2 && got[0][0] != 1 || got[3][0] != 4 || got[4][0] != 3 {
		t.Errorf("neighbours %v", got)
	}
	for i, nb := range got {
		for _, j := range nb {
			if j == i {
				t.Errorf("chunk %d is its own neighbour", i)
			}
		}
	}
	if e.Name() != "emb:bow" {
		t.Errorf("Name = %q", e.Name())
	}
	e2 := &Embeddings{URL: srv.URL + "/v1/embeddings", Model: "bow", APIKey: "k"}
	again, err := e2.Neighbours(context.Background(), chunks, 2)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(got, again); diff != "" {
		t.Errorf("not deterministic (-first +again):\n%s", diff)
	}
}

func TestEmbeddingsErrors(t *testing.T) {
	chunks := []Chunk{{Text: "a b"}, {Text: "c d"}}
	for _, tc := range []struct {
		name   string
		key    string
		mangle func(map[string]any)
		want   string
	}{
		{"unauthorized", "wrong", nil, "HTTP 401"},
		{"too few", "k", func(r map[string]any) { r["data"] = r["data"].([]map[string]any)[:1] }, "1 embeddings for 2 inputs"},
		{"bad index", "k", func(r map[string]any) { r["data"].([]map[string]any)[0]["index"] = 7 }, "bad or repeated index"},
		{"dimension", "k", func(r map[string]any) { r["data"].([]map[string]any)[0]["embedding"] = []float32{1} }, "dimensions"},
		{"not json", "k", func(r map[string]any) { r["data"] = "x" }, "bad JSON"},
	} {
		srv, _ := embeddingServer(t, tc.mangle)
		_, err := (&Embeddings{URL: srv.URL, APIKey: tc.key}).Neighbours(context.Background(), chunks, 1)
		if !errors.Is(err, ErrEmbeddings) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want ErrEmbeddings with %q", tc.name, err, tc.want)
		}
	}
	if _, err := (&Embeddings{URL: "http://127.0.0.1:1"}).Embed(context.Background(), []string{"x"}); !errors.Is(err, ErrEmbeddings) {
		t.Errorf("connection refused: %v", err)
	}
}
