package sidecar

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fusionrag/fusionrag/adapters"
	"github.com/fusionrag/fusionrag/fingerprint"
	"github.com/fusionrag/fusionrag/kvstore"
	"github.com/fusionrag/fusionrag/model"
	"github.com/fusionrag/fusionrag/proxy"
	"github.com/fusionrag/fusionrag/recompute"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// synthetic is a small random Llama with the synthetic tokenizer, loaded
// from a directory as serve loads --model; maxPos 4 makes it fail the
// reuse self-check.
func synthetic(t *testing.T, maxPos int) (dir string, m *model.Model) {
	t.Helper()
	dir = t.TempDir()
	cfg := model.Config{Arch: model.ArchLlama, Dim: 32, HiddenDim: 64, Layers: 2, Heads: 4, KVHeads: 2, HeadDim: 8,
		Vocab: 300, MaxPositions: maxPos, RopeTheta: 10000, NormEps: 1e-5, TiedEmbeddings: true, BOS: 1, EOS: []int32{2}}
	if err := model.WriteSynthetic(dir, cfg, 1, model.SaveOptions{}); err != nil {
		t.Fatal(err)
	}
	m, err := model.Load(dir, model.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return dir, m
}

// upstream is a fake engine that answers every request with 200 and
// counts them.
func upstream(t *testing.T) (url string, hits *atomic.Int64) {
	t.Helper()
	hits = new(atomic.Int64)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"id":"x","object":"text_completion","choices":[{"index":0,"text":"ok","finish_reason":"stop"}]}`)
	}))
	t.Cleanup(srv.Close)
	return srv.URL, hits
}

func config(up string) proxy.Config {
	c := proxy.DefaultConfig()
	c.Upstream = up
	return c
}

// serve starts sc on a loopback port and returns its base URL; sc is closed
// at cleanup.
func serve(t *testing.T, sc *Sidecar) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go sc.Serve(ln)
	t.Cleanup(func() {
		if err := sc.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return "http://" + ln.Addr().String()
}

// TestNewErrors: what New refuses, and that it says why.
func TestNewErrors(t *testing.T) {
	up, _ := upstream(t)
	dir, m := synthetic(t, 256)
	tinyDir, _ := synthetic(t, 4)
	noTok, err := model.Synthetic(model.Config{Arch: model.ArchLlama, Dim: 32, HiddenDim: 64, Layers: 1, Heads: 4, KVHeads: 2,
		HeadDim: 8, Vocab: 64, MaxPositions: 64, RopeTheta: 10000, NormEps: 1e-5, BOS: 1, EOS: []int32{2}}, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer noTok.Close()
	withModel := func(path string) proxy.Config {
		c := config(up)
		c.Model = path
		return c
	}
	storeTransport := config(up)
	storeTransport.Fusion.Transport = adapters.TransportStore
	for _, tc := range []struct {
		name string
		cfg  Config
		is   error  // errors.Is, when set
		want string // in the message, when set
	}{
		{name: "no upstream", cfg: Config{Proxy: proxy.DefaultConfig()}, want: "upstream"},
		{name: "unknown backend", cfg: Config{Proxy: withModel(dir), Backend: "no-such-backend"}, is: model.ErrUnsupported},
		{name: "no such model", cfg: Config{Proxy: withModel(dir + "/absent")}, want: "sidecar: model"},
		{name: "fails self-check", cfg: Config{Proxy: withModel(tinyDir)}, want: "fails the reuse self-check"},
		{name: "no tokenizer", cfg: Config{Proxy: config(up), Model: noTok}, want: "no tokenizer"},
		{name: "store transport without store", cfg: Config{Proxy: storeTransport, Model: m}, want: "needs a store"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.cfg.Env, tc.cfg.Logger = NoEnv, quiet
			sc, err := New(context.Background(), tc.cfg)
			if err == nil {
				sc.Close()
				t.Fatal("got no error")
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("got %v, want one that is %v", err, tc.is)
			}
			if tc.want != "" && !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %q, want one containing %q", err, tc.want)
			}
		})
	}
}

// TestPassThrough: without a model there is no fusion path, and requests
// reach the engine.
func TestPassThrough(t *testing.T) {
	up, hits := upstream(t)
	sc, err := New(context.Background(), Config{Proxy: config(up), Env: NoEnv, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	if sc.Fuser() != nil || sc.Model() != nil || sc.Store() != nil {
		t.Errorf("got fuser %v, model %v, store %v; want none without a model", sc.Fuser(), sc.Model(), sc.Store())
	}
	base := serve(t, sc)
	resp, err := http.Post(base+"/v1/completions", "application/json", strings.NewReader(`{"model":"m","prompt":"hi"}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || hits.Load() != 1 {
		t.Errorf("got status %d, %d upstream hits; want 200, 1", resp.StatusCode, hits.Load())
	}
	if err := sc.Close(); err != nil {
		t.Errorf("first Close: %v", err)
	}
	if err := sc.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

// TestFusionPath: with a model the sidecar builds the fuser (handed to
// WrapFuser), the documents queue on the store (POST /v1/fusion/documents
// is answered by the sidecar, the job stores KV), and Close leaves the
// caller's model and store open.
func TestFusionPath(t *testing.T) {
	up, hits := upstream(t)
	_, m := synthetic(t, 256)
	store, err := kvstore.Open("mem://?max=64MiB")
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	pcfg := config(up)
	pcfg.Documents.AdminKey = "secret"
	var wrapped bool
	sc, err := New(context.Background(), Config{Proxy: pcfg, Model: m, Store: store, Env: NoEnv, Logger: quiet,
		WrapFuser: func(f proxy.Fuser) proxy.Fuser { wrapped = true; return f }})
	if err != nil {
		t.Fatal(err)
	}
	if sc.Fuser() == nil || !wrapped || sc.Model() != m || sc.Store() != store {
		t.Fatalf("got fuser %v, wrapped %v, model given %v, store given %v; want all", sc.Fuser() != nil, wrapped, sc.Model() == m, sc.Store() == store)
	}
	base := serve(t, sc)
	req, _ := http.NewRequest(http.MethodPost, base+proxy.DocumentsPath,
		strings.NewReader(`[{"id":"d1","text":"Lily had a red ball. Every day she went to the park to play with it."}]`))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(proxy.HeaderAdminKey, "secret")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var job struct {
		ID    string `json:"id"`
		State string `json:"state"`
	}
	err = json.NewDecoder(resp.Body).Decode(&job)
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted || err != nil || job.ID == "" {
		t.Fatalf("POST %s: got status %d, job %+v (%v); want 202 with a job id", proxy.DocumentsPath, resp.StatusCode, job, err)
	}
	for deadline := time.Now().Add(30 * time.Second); job.State != "done"; {
		if time.Now().After(deadline) || job.State == "failed" {
			t.Fatalf("job %s: state %q, want done", job.ID, job.State)
		}
		time.Sleep(20 * time.Millisecond)
		req, _ := http.NewRequest(http.MethodGet, base+proxy.DocumentsPath+"/"+job.ID, nil)
		req.Header.Set(proxy.HeaderAdminKey, "secret")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		json.NewDecoder(resp.Body).Decode(&job)
		resp.Body.Close()
	}
	if hits.Load() != 0 {
		t.Errorf("the engine got %d requests, want 0 (the documents routes are the sidecar's)", hits.Load())
	}
	if err := sc.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	// The caller's model and store are still open.
	if err := recompute.SelfCheck(context.Background(), m); err != nil {
		t.Errorf("model after Close: %v", err)
	}
	if _, err := store.Has(context.Background(), fingerprint.Key{}); err != nil {
		t.Errorf("store after Close: %v", err)
	}
}

// TestNoDocuments: with NoDocuments the documents routes go to the engine.
func TestNoDocuments(t *testing.T) {
	up, hits := upstream(t)
	_, m := synthetic(t, 256)
	pcfg := config(up)
	pcfg.Store = "mem://?max=16MiB"
	sc, err := New(context.Background(), Config{Proxy: pcfg, Model: m, NoDocuments: true, SkipSelfCheck: true, Env: NoEnv, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	if sc.Store() == nil {
		t.Fatal("no store opened from Proxy.Store")
	}
	base := serve(t, sc)
	resp, err := http.Post(base+proxy.DocumentsPath, "application/json", strings.NewReader(`[{"id":"d","text":"x"}]`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if hits.Load() != 1 {
		t.Errorf("the engine got %d requests, want 1 (no documents queue)", hits.Load())
	}
}
