package llamacpp

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fusionrag/fusionrag/adapters"
	"github.com/fusionrag/fusionrag/model"
)

// fakeServer implements the llama-server endpoints the adapter calls, with
// faults on demand. It is a legitimate mock: restore refusals, 503s and
// restarts cannot be made to show on demand on a real server. Its probe
// slot file is written by encodeSlot from its own model's KV (the real
// server's files are covered by TestSharedSlotFiles and the server tests).
type fakeServer struct {
	t   *testing.T
	srv *httptest.Server
	dir string

	mu          sync.Mutex
	m           *model.Model // the model it "runs"
	lay         Layout       // its layout
	slots       int
	nCtx        int
	build       string
	tokens      []int32 // what /tokenize answers (nil: ids of the content's runes)
	restoreCode int     // non-zero: answer restores with this status
	restoreWait time.Duration
	lastTask    int64 // > 0: /slots reports it as slot 0's id_task
	down        bool  // every call answers 503
	restored    map[int][]int32
	busySlots   map[int]bool
	calls       map[string]int
}

func tinyConfig() model.Config {
	return model.Config{Arch: model.ArchLlama, Dim: 32, HiddenDim: 48, Layers: 2, Heads: 4, KVHeads: 2, HeadDim: 8,
		Vocab: 64, MaxPositions: 256, RopeTheta: 10000, RopeInterleaved: true, NormEps: 1e-5, BOS: 1, EOS: []int32{2}}
}

func tinyModel(tb testing.TB, seed uint64) *model.Model {
	tb.Helper()
	m, err := model.Synthetic(tinyConfig(), seed)
	if err != nil {
		tb.Fatal(err)
	}
	return m
}

func newFake(t *testing.T, m *model.Model) *fakeServer {
	c := m.Config
	f := &fakeServer{t: t, dir: t.TempDir(), m: m, slots: 2, nCtx: 128, build: "b10573",
		lay:      Layout{Streams: 2, KType: TypeF16, VType: TypeF16, Layers: c.Layers, KVHeads: c.KVHeads, HeadDim: c.HeadDim},
		restored: map[int][]int32{}, busySlots: map[int]bool{}, calls: map[string]int{}}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.srv.Close)
	return f
}

var probeDone = map[*fakeServer][]int32{}

func (f *fakeServer) serve(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls[r.URL.Path+"?"+r.URL.Query().Get("action")]++
	if f.down {
		http.Error(w, `{"error":"loading model"}`, http.StatusServiceUnavailable)
		return
	}
	var in map[string]json.RawMessage
	json.NewDecoder(r.Body).Decode(&in)
	reply := func(v any) { json.NewEncoder(w).Encode(v) }
	switch {
	case r.URL.Path == "/props":
		reply(map[string]any{"total_slots": f.slots, "default_generation_settings": map[string]any{"n_ctx": f.nCtx},
			"model_path": "m.gguf", "build_info": f.build})
	case r.URL.Path == "/slots" && r.Method == http.MethodGet:
		var out []map[string]any
		for i := range f.slots {
			e := map[string]any{"id": i, "is_processing": f.busySlots[i]}
			if i == 0 && f.lastTask > 0 {
				e["id_task"] = f.lastTask
			}
			out = append(out, e)
		}
		reply(out)
	case r.URL.Path == "/completion":
		var p []int32
		json.Unmarshal(in["prompt"], &p)
		probeDone[f] = p
		reply(map[string]any{"content": "x"})
	case strings.HasPrefix(r.URL.Path, "/slots/"):
		id, _ := strconv.Atoi(strings.TrimPrefix(r.URL.Path, "/slots/"))
		var name string
		json.Unmarshal(in["filename"], &name)
		switch r.URL.Query().Get("action") {
		case "save":
			p := probeDone[f]
			pos := make([]int32, len(p))
			for i := range pos {
				pos[i] = int32(i)
			}
			res, err := f.m.Forward(context.Background(), nil, model.Batch{Tokens: p, Pos: pos}, model.ForwardOptions{ReturnKV: true})
			if err != nil {
				f.t.Error(err)
			}
			var b bytes.Buffer
			encodeSlot(f.lay, newRope(f.m.Config), p, res.KV, int32(id)).Encode(&b)
			os.WriteFile(filepath.Join(f.dir, name), b.Bytes(), 0o644)
			reply(map[string]any{"id_slot": id, "n_saved": len(p)})
		case "restore":
			if f.restoreWait > 0 {
				f.mu.Unlock()
				time.Sleep(f.restoreWait)
				f.mu.Lock()
			}
			if f.restoreCode != 0 {
				http.Error(w, `{"error":{"message":"Unable to restore slot"}}`, f.restoreCode)
				return
			}
			raw, err := os.ReadFile(filepath.Join(f.dir, name))
			if err != nil {
				http.Error(w, `{"error":"no file"}`, 400)
				return
			}
			sf, err := DecodeSlotFile(raw)
			if err != nil {
				http.Error(w, `{"error":"bad file"}`, 400)
				return
			}
			lay, err := layoutOf(sf, f.m.Config)
			if err != nil || lay.Streams != f.lay.Streams || lay.VTrans != f.lay.VTrans || lay.KType != f.lay.KType {
				http.Error(w, `{"error":"layout"}`, 400)
				return
			}
			f.restored[id] = sf.Tokens
			reply(map[string]any{"id_slot": id, "n_restored": len(sf.Tokens)})
		case "erase":
			delete(f.restored, id)
			reply(map[string]any{"id_slot": id, "n_erased": 0})
		}
	case r.URL.Path == "/apply-template":
		reply(map[string]any{"prompt": "<rendered>"})
	case r.URL.Path == "/tokenize":
		reply(map[string]any{"tokens": f.tokens})
	default:
		http.NotFound(w, r)
	}
}

func (f *fakeServer) set(fn func(f *fakeServer)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

func (f *fakeServer) open(t *testing.T, m *model.Model) *Adapter {
	t.Helper()
	a, err := Open(adapters.Config{URL: f.srv.URL, Model: m, SlotDir: f.dir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	return a
}

// pub is a publication of prompt [1, 5, 6, ...] with the exact KV of all
// but its last token, for a /completion body.
func pub(tb testing.TB, m *model.Model, n int) adapters.Publication {
	p := make([]int32, n)
	p[0] = 1
	for i := 1; i < n; i++ {
		p[i] = int32(4 + i)
	}
	return adapters.Publication{Prompt: p, KV: prefillKV(tb, m, p[:n-1]), Path: "/completion", Body: []byte(`{"prompt":"some text","n_predict":4}`)}
}

// TestLeaseLifecycle: leases take distinct slots, the pool runs dry
// (ErrBusy, reason busy), Release erases in the background and returns
// the slot, a second Release does nothing, Rewrite pins the slot and
// overrides the client's id_slot and cache_prompt.
func TestLeaseLifecycle(t *testing.T) {
	m := tinyModel(t, 1)
	f := newFake(t, m)
	a := f.open(t, m)
	p := pub(t, m, 10)
	f.set(func(f *fakeServer) { f.tokens = p.Prompt })
	l0, err := a.Publish(context.Background(), p)
	if err != nil {
		t.Fatal(err)
	}
	l1, err := a.Publish(context.Background(), p)
	if err != nil {
		t.Fatal(err)
	}
	s0, s1 := l0.(*lease).slot, l1.(*lease).slot
	if s0 == s1 {
		t.Fatalf("two leases on slot %d", s0)
	}
	f.set(func(f *fakeServer) {
		if !slices.Equal(f.restored[s0], p.Prompt[:9]) {
			t.Errorf("slot %d restored %v, want %v", s0, f.restored[s0], p.Prompt[:9])
		}
	})
	if _, err := a.Publish(context.Background(), p); !errors.Is(err, adapters.ErrBusy) || adapters.ReasonOf(err) != ReasonBusy {
		t.Fatalf("third publish on 2 slots: %v, want ErrBusy", err)
	}
	body, err := l0.Rewrite([]byte(`{"prompt":"x","id_slot":1,"cache_prompt":false,"n_predict":3}`))
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	json.Unmarshal(body, &got)
	if got["id_slot"] != float64(s0) || got["cache_prompt"] != true || got["n_predict"] != float64(3) || got["prompt"] != "x" {
		t.Errorf("rewritten body %s", body)
	}
	l0.Release()
	l0.Release() // harmless
	a.bg.Wait()
	f.set(func(f *fakeServer) {
		if _, ok := f.restored[s0]; ok {
			t.Errorf("slot %d not erased after Release", s0)
		}
		if n := f.calls["/slots/"+strconv.Itoa(s0)+"?erase"]; n != 2 { // handshake + release
			t.Errorf("slot %d erased %d times, want 2 (handshake, one release)", s0, n)
		}
	})
	l2, err := a.Publish(context.Background(), p)
	if err != nil {
		t.Fatalf("publish after release: %v", err)
	}
	if l2.(*lease).slot != s0 {
		t.Errorf("got slot %d, want the released %d", l2.(*lease).slot, s0)
	}
	l1.Release()
	l2.Release()
	a.bg.Wait()
	if st := a.Stats(); st.Published != 3 || st.Fallbacks[ReasonBusy] != 1 {
		t.Errorf("stats %+v", st)
	}
	// The slot files are gone: none left in SlotDir.
	if ents, _ := os.ReadDir(f.dir); len(ents) != 0 {
		t.Errorf("SlotDir holds %d files after the leases", len(ents))
	}
}

// TestFallbacks: every failure of the publish path is an error with its
// reason, and the adapter recovers when the fault goes away.
func TestFallbacks(t *testing.T) {
	m := tinyModel(t, 1)
	ctx := context.Background()
	for _, c := range []struct {
		name   string
		fault  func(f *fakeServer, a *Adapter, p *adapters.Publication)
		reason string
		is     error
	}{
		{"restore refused", func(f *fakeServer, _ *Adapter, _ *adapters.Publication) { f.restoreCode = 400 }, ReasonRestoreRefused, nil},
		{"server down", func(f *fakeServer, a *Adapter, _ *adapters.Publication) { f.down = true; a.propsEvery = 0 }, ReasonEngineError, nil},
		{"token mismatch", func(f *fakeServer, _ *Adapter, p *adapters.Publication) { f.tokens = append(slices.Clone(p.Prompt), 7) }, ReasonTokenMismatch, ErrTokenMismatch},
		{"chat token mismatch", func(f *fakeServer, _ *Adapter, p *adapters.Publication) {
			f.tokens = p.Prompt[1:]
			p.Path, p.Body = "/v1/chat/completions", []byte(`{"messages":[{"role":"user","content":"hi"}]}`)
		}, ReasonTokenMismatch, ErrTokenMismatch},
		{"several prompts", func(_ *fakeServer, _ *Adapter, p *adapters.Publication) { p.Body = []byte(`{"prompt":["a","b"]}`) }, ReasonUnsupported, nil},
		{"unknown path", func(_ *fakeServer, _ *Adapter, p *adapters.Publication) { p.Path = "/v1/embeddings" }, ReasonUnsupported, nil},
		{"write error", func(f *fakeServer, a *Adapter, _ *adapters.Publication) { a.cfg.SlotDir = filepath.Join(f.dir, "gone") }, ReasonWriteError, nil},
		{"too long", func(f *fakeServer, a *Adapter, _ *adapters.Publication) {
			f.nCtx, f.build = 9, "b2" // a restart with a smaller context (the probe still fits)
			a.propsEvery = 0
		}, ReasonTooLong, nil},
		{"bad publication", func(_ *fakeServer, _ *Adapter, p *adapters.Publication) { p.KV = p.KV.Clone(); p.KV.Pos[1] = 7 }, ReasonBadPublication, nil},
		{"server busy", func(f *fakeServer, _ *Adapter, _ *adapters.Publication) { f.busySlots = map[int]bool{0: true, 1: true} }, ReasonBusy, adapters.ErrBusy},
		{"restart onto another model", func(f *fakeServer, a *Adapter, _ *adapters.Publication) {
			f.m, f.build = tinyModel(t, 2), "b3"
			a.propsEvery = 0
		}, ReasonMismatch, adapters.ErrMismatch},
		{"restart onto another layout", func(f *fakeServer, a *Adapter, _ *adapters.Publication) {
			f.lay.VTrans, f.lay.Streams = true, 1 // restarted with -fa off --kv-unified
			a.handshakeEvery = 0
		}, "", nil},
		{"restore refused after a silent layout change", func(f *fakeServer, a *Adapter, _ *adapters.Publication) {
			f.lay.VTrans = true // same /props: the adapter learns it from the refusal
		}, ReasonRestoreRefused, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := newFake(t, m)
			a := f.open(t, m)
			p := pub(t, m, 10)
			f.set(func(f *fakeServer) { f.tokens = p.Prompt })
			f.set(func(f *fakeServer) { c.fault(f, a, &p) })
			l, err := a.Publish(ctx, p)
			if c.reason == "" {
				// Not a failure: the adapter re-handshakes and publishes in the new layout.
				if err != nil {
					t.Fatalf("publish: %v", err)
				}
				if lay, _ := a.Layout(); !lay.VTrans || lay.Streams != 1 {
					t.Errorf("layout after the restart %v", lay)
				}
				l.Release()
				a.bg.Wait()
				return
			}
			if err == nil {
				l.Release()
				t.Fatalf("publish succeeded, want reason %s", c.reason)
			}
			if got := adapters.ReasonOf(err); got != c.reason {
				t.Errorf("reason %q, want %q (err %v)", got, c.reason, err)
			}
			if c.is != nil && !errors.Is(err, c.is) {
				t.Errorf("err %v, want errors.Is %v", err, c.is)
			}
			if n := a.Stats().Fallbacks[c.reason]; n != 1 {
				t.Errorf("fallback count %s = %d, want 1", c.reason, n)
			}
			a.bg.Wait()
			// Every slot is back and clean.
			a.mu.Lock()
			for i, s := range a.slots {
				if s != slotFree {
					t.Errorf("slot %d state %d after a failed publish", i, s)
				}
			}
			a.mu.Unlock()
		})
	}
}

// TestCanceled: a request whose deadline passes during the restore is
// "canceled", not an engine failure: the handshake stays valid, and the
// slot is erased before reuse (the restore may still run).
func TestCanceled(t *testing.T) {
	m := tinyModel(t, 1)
	f := newFake(t, m)
	a := f.open(t, m)
	p := pub(t, m, 10)
	f.set(func(f *fakeServer) { f.tokens, f.restoreWait = p.Prompt, 200*time.Millisecond })
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := a.Publish(ctx, p); adapters.ReasonOf(err) != ReasonCanceled {
		t.Fatalf("publish past its deadline: %v, want reason canceled", err)
	}
	if _, ok := a.Layout(); !ok {
		t.Error("a client's deadline dropped the handshake")
	}
	a.bg.Wait()
	a.mu.Lock()
	for i := range a.slots {
		if a.slots[i] != slotFree || a.dirty[i] {
			t.Errorf("slot %d: state %d dirty %v", i, a.slots[i], a.dirty[i])
		}
	}
	a.mu.Unlock()
}

// TestRestartByTaskIDs: a restart that /props cannot show (same model
// path, build and flags) is noticed by the task ids /slots reports going
// back; the next publish re-runs the handshake.
func TestRestartByTaskIDs(t *testing.T) {
	m := tinyModel(t, 1)
	f := newFake(t, m)
	a := f.open(t, m)
	p := pub(t, m, 10)
	publish := func() error {
		l, err := a.Publish(context.Background(), p)
		if err == nil {
			l.Release()
			a.bg.Wait()
		}
		return err
	}
	f.set(func(f *fakeServer) { f.tokens, f.lastTask = p.Prompt, 5000 })
	if err := publish(); err != nil {
		t.Fatal(err)
	}
	f.set(func(f *fakeServer) { f.lastTask = 4500 }) // a deferred older task: not a restart
	if err := publish(); err != nil {
		t.Fatalf("ids back by 500: %v", err)
	}
	f.set(func(f *fakeServer) { f.lastTask = 3 })
	if err := publish(); adapters.ReasonOf(err) != ReasonEngineRestarted {
		t.Fatalf("ids back to 3: %v, want engine_restarted", err)
	}
	if err := publish(); err != nil {
		t.Fatalf("after the re-handshake: %v", err)
	}
	if st := a.Stats(); st.Handshakes != 2 {
		t.Errorf("%d handshakes, want 2", st.Handshakes)
	}
}

// TestRecovery: a server that goes down and comes back (after restart, a
// new /props) is handshaken again and publishes resume; a failed
// handshake is held for retryAfter, not retried per request.
func TestRecovery(t *testing.T) {
	m := tinyModel(t, 1)
	f := newFake(t, m)
	a := f.open(t, m)
	a.propsEvery = 0
	p := pub(t, m, 10)
	f.set(func(f *fakeServer) { f.tokens, f.down = p.Prompt, true })
	for range 3 {
		if _, err := a.Publish(context.Background(), p); adapters.ReasonOf(err) != ReasonEngineError {
			t.Fatalf("server down: %v", err)
		}
	}
	f.set(func(f *fakeServer) {
		if n := f.calls["/props?"]; n != 3 { // Open, the props check, the failed handshake
			t.Errorf("%d /props calls while down, want 3 (the failed handshake is held)", n)
		}
	})
	f.set(func(f *fakeServer) { f.down, f.build = false, "b2" })
	a.mu.Lock()
	a.retryAt = time.Time{}
	a.mu.Unlock()
	l, err := a.Publish(context.Background(), p)
	if err != nil {
		t.Fatalf("after recovery: %v", err)
	}
	l.Release()
	a.bg.Wait()
	if st := a.Stats(); st.Handshakes != 3 {
		t.Errorf("%d handshakes, want 3 (open, failed, recovered)", st.Handshakes)
	}
}

// TestOpenRefuses: a wrong model, a quantised cache, a missing SlotDir.
func TestOpenRefuses(t *testing.T) {
	m := tinyModel(t, 1)
	f := newFake(t, tinyModel(t, 9))
	_, err := Open(adapters.Config{URL: f.srv.URL, Model: m, SlotDir: f.dir})
	var me *MismatchError
	if !errors.As(err, &me) || !errors.Is(err, adapters.ErrMismatch) || adapters.ReasonOf(err) != ReasonMismatch {
		t.Errorf("other weights: %v, want a MismatchError", err)
	} else if me.Layer != 0 || me.What != "K" {
		t.Logf("mismatch %v", me)
	}
	if _, err := Open(adapters.Config{URL: f.srv.URL, Model: m}); !errors.Is(err, adapters.ErrConfig) {
		t.Errorf("no SlotDir: %v, want ErrConfig", err)
	}
	if _, err := Open(adapters.Config{URL: f.srv.URL, SlotDir: f.dir}); !errors.Is(err, adapters.ErrConfig) {
		t.Errorf("no Model: %v, want ErrConfig", err)
	}
	// A quantised cache: the probe file says q8_0.
	raw := probeFile(t, m, Layout{Streams: 1, KType: TypeF16, VType: TypeF16, Layers: 2, KVHeads: 2, HeadDim: 8})
	sf, _ := DecodeSlotFile(raw)
	for l := range sf.Streams[0].Layers {
		sf.Streams[0].Layers[l].KType = 8
		sf.Streams[0].Layers[l].KRowSize = 34 // one q8_0 block of 32 values
		sf.Streams[0].Layers[l].K = make([]byte, 34*len(sf.Streams[0].Cells))
	}
	var b bytes.Buffer
	sf.Encode(&b)
	a := &Adapter{m: m, rot: newRope(m.Config), probe: probeTokens(m.Config)}
	if _, err := a.checkProbe(b.Bytes()); !errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), "q8_0") {
		t.Errorf("q8_0 cache: %v, want ErrUnsupported naming q8_0", err)
	}
}

func probeFile(tb testing.TB, m *model.Model, lay Layout) []byte {
	p := probeTokens(m.Config)
	var b bytes.Buffer
	if err := encodeSlot(lay, newRope(m.Config), p, prefillKV(tb, m, p), 0).Encode(&b); err != nil {
		tb.Fatal(err)
	}
	return b.Bytes()
}

// TestPermutedLayout: a server holding K in the permuted head order (an HF
// Llama converted to GGUF) is recognised by the handshake, and what the
// adapter writes for it decodes, un-permuted and un-rotated, to the
// published KV.
func TestPermutedLayout(t *testing.T) {
	cfg := tinyConfig()
	cfg.RopeInterleaved = false
	m, err := model.Synthetic(cfg, 3)
	if err != nil {
		t.Fatal(err)
	}
	lay := Layout{Streams: 1, VTrans: true, KType: TypeF32, VType: TypeF32, Layers: 2, KVHeads: 2, HeadDim: 8, PermuteK: true}
	a := &Adapter{m: m, rot: newRope(m.Config), probe: probeTokens(m.Config)}
	a.probeKV = prefillKV(t, m, a.probe)
	got, err := a.checkProbe(probeFile(t, m, lay))
	if err != nil || got != lay {
		t.Fatalf("handshake on a permuted server: %v %v, want %v", got, err, lay)
	}
	kv := prefillKV(t, m, []int32{1, 9, 8, 7, 6})
	sf := encodeSlot(lay, a.rot, []int32{1, 9, 8, 7, 6}, kv, 0)
	pos, K, V := decodeStream(lay, &sf.Streams[0])
	fromServer(lay, a.rot, pos, K)
	if err := compareKV(Layout{KType: TypeF32, VType: TypeF32, Layers: 2, KVHeads: 2, HeadDim: 8}, K, V, kv.K, kv.V); err != nil {
		t.Error(err)
	}
	// The unpermuted reading of the same file is refused.
	lay.PermuteK = false
	wK, wV := serverKV(lay, a.rot, kv)
	_, K2, V2 := decodeStream(lay, &sf.Streams[0])
	if compareKV(lay, K2, V2, wK, wV) == nil {
		t.Error("permuted K compared equal to unpermuted K")
	}
}
