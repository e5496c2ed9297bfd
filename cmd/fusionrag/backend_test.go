package main

import (
	"context"
	"errors"
	"os"
	"testing"

	"github.com/fusionrag/fusionrag/model"
	"github.com/fusionrag/fusionrag/sidecar"
)

// TestSyntheticSeededBackend: synthetic models honour --backend (before,
// bench ttft built them on cpu whatever the flag said): an unknown backend
// is refused with ErrUnsupported before anything is written, cpu and the
// default give a cpu model.
func TestSyntheticSeededBackend(t *testing.T) {
	cfg := model.Config{Arch: model.ArchLlama, Dim: 32, HiddenDim: 64, Layers: 1, Heads: 4, KVHeads: 2, HeadDim: 8,
		Vocab: 64, MaxPositions: 64, RopeTheta: 10000, NormEps: 1e-5, TiedEmbeddings: true, BOS: 1, EOS: []int32{2}}
	if _, err := syntheticSeeded(cfg, 1, "no-such-backend", false); !errors.Is(err, model.ErrUnsupported) {
		t.Fatalf("unknown backend: err = %v, want ErrUnsupported", err)
	}
	for _, name := range []string{"", "cpu"} {
		m, err := syntheticSeeded(cfg, 1, name, false)
		if err != nil {
			t.Fatalf("backend %q: %v", name, err)
		}
		if got := m.Backend().Name(); got != "cpu" {
			t.Errorf("backend %q: model on %q, want cpu", name, got)
		}
		m.Close()
	}
}

// TestServeBackend: serve's fusion path loads its model on --backend; an
// unknown one is refused at start with ErrUnsupported.
func TestServeBackend(t *testing.T) {
	dir := t.TempDir()
	cfg := model.Config{Arch: model.ArchLlama, Dim: 32, HiddenDim: 64, Layers: 1, Heads: 4, KVHeads: 2, HeadDim: 8,
		Vocab: 300, MaxPositions: 64, RopeTheta: 10000, NormEps: 1e-5, TiedEmbeddings: true, BOS: 1, EOS: []int32{2}}
	if err := model.WriteSynthetic(dir, cfg, 1, model.SaveOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"FUSIONRAG_CONFIG", "FUSIONRAG_MODEL", "FUSIONRAG_STORE", "FUSIONRAG_FUSION_DISABLED"} {
		t.Setenv(k, "") // restored after the test
		os.Unsetenv(k)
	}
	pcfg, backend, err := parseServe([]string{"--upstream", "http://127.0.0.1:1", "--model", dir, "--backend", "no-such-backend"})
	if err != nil {
		t.Fatal(err)
	}
	_, err = sidecar.New(context.Background(), sidecar.Config{Proxy: pcfg, Backend: backend, Env: sidecar.NoEnv})
	if !errors.Is(err, model.ErrUnsupported) {
		t.Fatalf("serve's sidecar with an unknown backend: err = %v, want ErrUnsupported", err)
	}
}
