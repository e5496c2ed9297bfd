//go:build openblas

package main

import (
	"slices"
	"testing"

	"github.com/fusionrag/fusionrag/model"
)

// TestOpenBLASBackendInBinary: built with -tags openblas, the binary lists
// the backend and a synthetic model loads on it.
func TestOpenBLASBackendInBinary(t *testing.T) {
	if !slices.Contains(model.Backends(), "openblas") {
		t.Fatalf("backends %v: openblas not registered", model.Backends())
	}
	cfg := model.Config{Arch: model.ArchLlama, Dim: 32, HiddenDim: 64, Layers: 1, Heads: 4, KVHeads: 2, HeadDim: 8,
		Vocab: 64, MaxPositions: 64, RopeTheta: 10000, NormEps: 1e-5, TiedEmbeddings: true, BOS: 1, EOS: []int32{2}}
	m, err := syntheticSeeded(cfg, 1, "openblas", false)
	if err != nil {
		t.Skipf("SKIPPING: openblas backend refused on this machine: %v", err)
	}
	defer m.Close()
	if got := m.Backend().Name(); got != "openblas" {
		t.Fatalf("model on %q, want openblas", got)
	}
}
