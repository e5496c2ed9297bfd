package model

import (
	"context"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
)

// forwarderBackend is a backend that takes whole passes (the CUDA hook):
// it records what it was handed and answers with a marker result.
type forwarderBackend struct {
	cpuBackend
	bound []NamedWeight
	calls []Batch
}

func (f *forwarderBackend) BindWeights(cfg Config, ws []NamedWeight) error {
	f.bound = ws
	return nil
}

func (f *forwarderBackend) Forward(ctx context.Context, cache *Cache, b Batch, opts ForwardOptions) (*ForwardResult, error) {
	f.calls = append(f.calls, b)
	return &ForwardResult{Logits: [][]float32{{42}}}, nil
}

// testBackends registers the test's two backends once per process (the
// registry is global and refuses a name twice; -count=N runs the test N
// times); the forwarder factory hands out the current run's backend.
var (
	testBackends  sync.Once
	testForwarder atomic.Pointer[forwarderBackend]
)

func TestBackendHooks(t *testing.T) {
	fb := &forwarderBackend{}
	testForwarder.Store(fb)
	testBackends.Do(func() {
		RegisterBackend("test-forwarder", func() (Backend, error) { return testForwarder.Load(), nil })
		RegisterBackend("test-failing", func() (Backend, error) { return nil, errors.New("no device") })
	})
	if !slices.Contains(Backends(), "cpu") || !slices.Contains(Backends(), "test-forwarder") {
		t.Fatalf("Backends() = %v", Backends())
	}
	dir := writeTiny(t, SaveOptions{})
	m, err := Load(dir, LoadOptions{Backend: "test-forwarder"})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if len(fb.bound) != len(m.namedWeights()) || fb.bound[0].Name != "model.embed_tokens.weight" {
		t.Errorf("BindWeights got %d weights, want %d", len(fb.bound), len(m.namedWeights()))
	}
	r, err := m.Forward(context.Background(), nil, Batch{Tokens: []int32{1}, Pos: []int32{0}}, ForwardOptions{Logits: []int{0}})
	if err != nil || r.Logits[0][0] != 42 || len(fb.calls) != 1 {
		t.Errorf("Forward not delegated: %v %v %d calls", r, err, len(fb.calls))
	}
	// Arguments are validated before the hand-over.
	if _, err := m.Forward(context.Background(), nil, Batch{Tokens: []int32{999}, Pos: []int32{0}}, ForwardOptions{}); !errors.Is(err, ErrToken) || len(fb.calls) != 1 {
		t.Errorf("bad token reached the backend: %v", err)
	}
	if _, err := Load(dir, LoadOptions{Backend: "test-failing"}); err == nil {
		t.Error("failing backend factory: no error")
	}
	defer func() {
		if recover() == nil {
			t.Error("registering a name twice did not panic")
		}
	}()
	RegisterBackend("cpu", nil)
}
