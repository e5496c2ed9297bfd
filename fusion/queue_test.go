package fusion

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/fusionrag/fusionrag/fingerprint"
)

// mount serves a Queue the way the sidecar mounts it.
func mount(q *Queue) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/fusion/documents", func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		code, out := q.HandleSubmit(r.Header.Get("X-Tenant"), body)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		w.Write(out)
	})
	mux.HandleFunc("GET /v1/fusion/documents/{id}", func(w http.ResponseWriter, r *http.Request) {
		code, out := q.HandleStatus(r.PathValue("id"))
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		w.Write(out)
	})
	return mux
}

func TestQueueHTTP(t *testing.T) {
	m := synthModel(t, tinyConfig(2048))
	st := openStore(t, "mem://")
	in := newIngester(t, Config{Model: m, Store: st, Neighbours: 2, Workers: 2})
	ch, err := NewChunker(Chunker{Tokenizer: m.Tokenizer, Size: 32})
	if err != nil {
		t.Fatal(err)
	}
	q, err := NewQueue(QueueConfig{Ingester: in, Chunker: ch, MaxPending: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close(context.Background())
	srv := httptest.NewServer(mount(q))
	defer srv.Close()

	postAs := func(tenant, body string) (int, JobStatus, string) {
		req, _ := http.NewRequest(http.MethodPost, srv.URL+"/v1/fusion/documents", strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		if tenant != "" {
			req.Header.Set("X-Tenant", tenant)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		raw, _ := io.ReadAll(resp.Body)
		var js JobStatus
		json.Unmarshal(raw, &js)
		return resp.StatusCode, js, string(raw)
	}
	post := func(body string) (int, JobStatus, string) { return postAs("", body) }
	docs, _ := json.Marshal(map[string]any{"documents": storyDocs()})
	code, js, raw := post(string(docs))
	if code != http.StatusAccepted || js.ID == "" || js.Chunks == 0 {
		t.Fatalf("submit: %d %s", code, raw)
	}
	// JSONL bodies work too; this job belongs to tenant acme.
	xText := "A cat and a dog played in the sun all day."
	code2, js2, raw2 := postAs("acme", `{"id": "x", "text": "`+xText+`"}`+"\n")
	if code2 != http.StatusAccepted {
		t.Fatalf("JSONL submit: %d %s", code2, raw2)
	}
	for _, bad := range []struct {
		body string
		code int
	}{
		{"", http.StatusBadRequest},
		{"not json\n", http.StatusBadRequest},
		{`[{"id": "e", "text": "  "}]`, http.StatusBadRequest},
		{`[{"id": 1}]`, http.StatusBadRequest},
	} {
		if c, _, raw := post(bad.body); c != bad.code || !strings.Contains(raw, "error") {
			t.Errorf("body %q: %d %s, want %d with an error", bad.body, c, raw, bad.code)
		}
	}
	wait := func(id string) JobStatus {
		deadline := time.Now().Add(30 * time.Second)
		for {
			resp, err := http.Get(srv.URL + "/v1/fusion/documents/" + id)
			if err != nil {
				t.Fatal(err)
			}
			var s JobStatus
			json.NewDecoder(resp.Body).Decode(&s)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("status %s: HTTP %d", id, resp.StatusCode)
			}
			if s.State == JobDone || s.State == JobFailed || s.State == JobCancelled {
				return s
			}
			if time.Now().After(deadline) {
				t.Fatalf("job %s still %s after 30 s", id, s.State)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	s := wait(js.ID)
	if s.State != JobDone || s.Summary == nil || s.Summary.FusedStored != js.Chunks || s.Progress.Phase != "fused" {
		t.Errorf("job 1: %+v", s)
	}
	if s2 := wait(js2.ID); s2.State != JobDone || s2.Summary.RawStored != js2.Chunks {
		t.Errorf("job 2: %+v", s2)
	}
	// What job 1 stored is what the Ingester would look up.
	c := chunksOf(t, m, storyDocs(), 32, 0)[0]
	if ok, _ := st.Has(context.Background(), in.Key(fingerprint.VariantFused, c.Tokens)); !ok {
		t.Error("job 1's first chunk has no fused KV")
	}
	// Tenant isolation: acme's chunk is stored under acme's keys only.
	x := chunksOf(t, m, []Document{{ID: "x", Text: xText}}, 32, 0)[0]
	acme, err := chunkNamespace(m, "acme", in.Namespace().Params)
	if err != nil {
		t.Fatal(err)
	}
	if ok, _ := st.Has(context.Background(), fingerprint.ChunkKeyAfter(acme, fingerprint.VariantFused, in.Config().Prefix, x.Tokens)); !ok {
		t.Error("acme's chunk is not under acme's key")
	}
	if ok, _ := st.Has(context.Background(), in.Key(fingerprint.VariantFused, x.Tokens)); ok {
		t.Error("acme's chunk is visible to the shared tenant")
	}
	resp, err := http.Get(srv.URL + "/v1/fusion/documents/job-999")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("unknown job: HTTP %d", resp.StatusCode)
	}
}

func TestQueueFullAndClose(t *testing.T) {
	m := synthModel(t, tinyConfig(2048))
	in := newIngester(t, Config{Model: m, Store: openStore(t, "mem://"), Neighbours: 2, Workers: 1})
	ch, _ := NewChunker(Chunker{Tokenizer: m.Tokenizer, Size: 16})
	q, err := NewQueue(QueueConfig{Ingester: in, Chunker: ch, MaxPending: 1, KeepFinished: 2})
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	full := 0
	for range 6 {
		st, err := q.Submit("", storyDocs())
		switch {
		case errors.Is(err, ErrQueueFull):
			full++
		case err != nil:
			t.Fatal(err)
		default:
			ids = append(ids, st.ID)
		}
	}
	if full == 0 {
		t.Error("6 submissions into a queue of 1 pending: never full")
	}
	if err := q.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := q.Submit("", storyDocs()); !errors.Is(err, ErrQueueClosed) {
		t.Errorf("submit after close: %v", err)
	}
	if code, _ := q.HandleSubmit("", []byte(`[{"id":"a","text":"b"}]`)); code != http.StatusServiceUnavailable {
		t.Errorf("HandleSubmit after close: %d", code)
	}
	for _, id := range ids {
		if s, ok := q.Status(id); ok && s.State != JobDone && s.State != JobCancelled {
			t.Errorf("job %s after close: %s", id, s.State)
		}
	}
	if _, err := ParseDocuments(bytes.Repeat([]byte("x"), 10)); !errors.Is(err, ErrMalformed) {
		t.Errorf("ParseDocuments(garbage): %v", err)
	}
}
