package llamacpp

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fusionrag/fusionrag/adapters"
	"github.com/fusionrag/fusionrag/internal/llamaserver"
	"github.com/fusionrag/fusionrag/internal/shareddata"
	"github.com/fusionrag/fusionrag/model"
)

// Tests against a real llama-server (FUSIONRAG_LLAMA_SERVER or PATH); they
// skip loudly without one.

const (
	p1Text = "Once upon a time, there was a little girl named Lily. She loved to play outside"
	p2Text = p1Text + " in the park. One day"
)

// startServer starts llama-server on gguf with a slot directory of its own
// and returns it and the directory. --cache-ram 0 is required by the
// adapter (docs/llamacpp.md): with the server's RAM prompt cache on,
// TestServerConcurrent got wrong answers for unpinned requests.
func startServer(tb testing.TB, gguf string, slots int, extra ...string) (*llamaserver.Server, string) {
	tb.Helper()
	bin := llamaserver.Bin(tb)
	dir := tb.TempDir()
	args := append([]string{"--slot-save-path", dir, "--temp", "0", "-t", "1", "-tb", "1", "--cache-ram", "0",
		"--override-kv", "llama.context_length=int:512"}, extra...)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s, err := llamaserver.Start(ctx, llamaserver.Config{Bin: bin, Model: gguf, Context: 512 * slots, Slots: slots, Args: args})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { s.Close() })
	return s, dir
}

func openAdapter(tb testing.TB, url, dir string, m *model.Model) *Adapter {
	tb.Helper()
	a, err := Open(adapters.Config{URL: url, Model: m, SlotDir: dir})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { a.Close() })
	return a
}

// post sends body to the server and returns the decoded /completion answer
// (streamed answers are concatenated).
type answer struct {
	Content string
	Tokens  []int32
	Timings struct {
		CacheN  int `json:"cache_n"`
		PromptN int `json:"prompt_n"`
	}
	IDSlot int
}

func complete(tb testing.TB, url string, body []byte) answer {
	tb.Helper()
	a, err := tryComplete(url, body)
	if err != nil {
		tb.Fatal(err)
	}
	return a
}

// noKeepAlive: llama-server serves one connection per HTTP thread
// (--threads-http) and holds it while the connection idles, so concurrent
// tests must not keep connections open.
var noKeepAlive = &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}

func tryComplete(url string, body []byte) (answer, error) {
	var a answer
	resp, err := noKeepAlive.Post(url+"/completion", "application/json", bytes.NewReader(body))
	if err != nil {
		return a, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		return a, fmt.Errorf("/completion: %d %s", resp.StatusCode, b)
	}
	type chunk struct {
		Content string  `json:"content"`
		Tokens  []int32 `json:"tokens"`
		IDSlot  int     `json:"id_slot"`
		Timings *struct {
			CacheN  int `json:"cache_n"`
			PromptN int `json:"prompt_n"`
		} `json:"timings"`
	}
	add := func(c chunk) {
		a.Content += c.Content
		a.Tokens = append(a.Tokens, c.Tokens...)
		a.IDSlot = c.IDSlot
		if c.Timings != nil {
			a.Timings.CacheN, a.Timings.PromptN = c.Timings.CacheN, c.Timings.PromptN
		}
	}
	return a, EachAnswer(resp, add)
}

// EachAnswer decodes a completion response of llama-server into T and
// hands each to add: every `data:` event of a stream, or the one JSON
// object of a plain answer. Exported (from a test file) for the e2e tests
// of package llamacpp_test.
func EachAnswer[T any](resp *http.Response, add func(T)) error {
	if strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			line, ok := strings.CutPrefix(sc.Text(), "data: ")
			if !ok || line == "[DONE]" {
				continue
			}
			var c T
			if err := json.Unmarshal([]byte(line), &c); err != nil {
				return fmt.Errorf("SSE line %q: %v", line, err)
			}
			add(c)
		}
		return sc.Err()
	}
	var c T
	if err := json.NewDecoder(resp.Body).Decode(&c); err != nil {
		return err
	}
	add(c)
	return nil
}

func ids(m *model.Model, text string) []int32 {
	t := m.Tokenizer.Encode(text)
	if m.Tokenizer.AddBOS() {
		t = append([]int32{m.Tokenizer.BOS()}, t...)
	}
	return t
}

// publication is the exact KV (ratio 1.0) of prompt[:len-1].
func publication(tb testing.TB, m *model.Model, path string, body []byte, prompt []int32) adapters.Publication {
	return adapters.Publication{Prompt: prompt, KV: prefillKV(tb, m, prompt[:len(prompt)-1]), Path: path, Body: body}
}

// TestServerFusion: the handshake learns the default layout (flash
// attention on the CPU: V rows, one stream per slot); a published prefix
// is restored, the pinned request prefills only the last token
// (timings.prompt_n 1, cache_n the rest) and its greedy answer equals the
// server's own full prefill, streamed and not. The flash-attention-off
// (V transposed) and --kv-unified layouts run the same check.
func TestServerFusion(t *testing.T) {
	m := loadStories(t)
	gguf := shareddata.Path(t, "llamacpp/stories260K.gguf")
	for _, c := range []struct {
		name  string
		flags []string
		want  Layout
	}{
		{"fa", nil, Layout{Streams: 2, VTrans: false}},
		{"nofa", []string{"-fa", "off"}, Layout{Streams: 2, VTrans: true}},
		{"unified", []string{"--kv-unified"}, Layout{Streams: 1}},
	} {
		t.Run(c.name, func(t *testing.T) {
			srv, dir := startServer(t, gguf, 2, c.flags...)
			a := openAdapter(t, srv.URL, dir, m)
			lay, ok := a.Layout()
			c.want.KType, c.want.VType, c.want.Layers, c.want.KVHeads, c.want.HeadDim = TypeF16, TypeF16, m.Config.Layers, m.Config.KVHeads, m.Config.HeadDim
			if !ok || lay != c.want {
				t.Fatalf("layout %v, want %v", lay, c.want)
			}
			prompt := ids(m, p2Text)
			for _, stream := range []bool{false, true} {
				body, _ := json.Marshal(map[string]any{"prompt": p2Text, "n_predict": 24, "temperature": 0, "stream": stream})
				ref, _ := json.Marshal(map[string]any{"prompt": p2Text, "n_predict": 24, "temperature": 0, "stream": stream, "cache_prompt": false})
				want := complete(t, srv.URL, ref)
				l, err := a.Publish(context.Background(), publication(t, m, "/completion", body, prompt))
				if err != nil {
					t.Fatal(err)
				}
				rb, err := l.Rewrite(body)
				if err != nil {
					t.Fatal(err)
				}
				got := complete(t, srv.URL, rb)
				l.Release()
				if got.Content != want.Content {
					t.Errorf("stream %v: fused answer %q, server's own %q", stream, got.Content, want.Content)
				}
				if got.Timings.PromptN != 1 || got.Timings.CacheN != len(prompt)-1 {
					t.Errorf("stream %v: prompt_n %d cache_n %d, want 1 and %d", stream, got.Timings.PromptN, got.Timings.CacheN, len(prompt)-1)
				}
				if got.IDSlot != l.(*lease).slot {
					t.Errorf("answered from slot %d, lease pinned %d", got.IDSlot, l.(*lease).slot)
				}
			}
			waitErased(t, a)
		})
	}
}

// waitErased waits until every released slot is erased.
func waitErased(tb testing.TB, a *Adapter) {
	tb.Helper()
	a.bg.Wait()
	a.mu.Lock()
	defer a.mu.Unlock()
	for i, s := range a.slots {
		if s != slotFree || a.dirty[i] {
			tb.Errorf("slot %d: state %d dirty %v after release", i, s, a.dirty[i])
		}
	}
}

// TestServerChat: a chat body is proved through /apply-template and
// /tokenize; the published prompt must be the server's rendering.
func TestServerChat(t *testing.T) {
	m := loadStories(t)
	srv, dir := startServer(t, shareddata.Path(t, "llamacpp/stories260K.gguf"), 1)
	a := openAdapter(t, srv.URL, dir, m)
	body := []byte(`{"messages":[{"role":"user","content":"Lily saw a cat"}],"max_tokens":8,"temperature":0}`)
	var tmpl struct{ Prompt string }
	postJSON(t, srv.URL+"/apply-template", body, &tmpl)
	prompt := ids(m, tmpl.Prompt)
	l, err := a.Publish(context.Background(), publication(t, m, "/v1/chat/completions", body, prompt))
	if err != nil {
		t.Fatalf("publish (template %q): %v", tmpl.Prompt, err)
	}
	l.Release()
	// One id off: refused with token_mismatch.
	bad := slices.Clone(prompt)
	bad[len(bad)-1] = (bad[len(bad)-1] + 1) % int32(m.Config.Vocab)
	_, err = a.Publish(context.Background(), publication(t, m, "/v1/chat/completions", body, bad))
	if !errors.Is(err, ErrTokenMismatch) || adapters.ReasonOf(err) != ReasonTokenMismatch {
		t.Errorf("publish with a wrong id: %v, want ErrTokenMismatch", err)
	}
	waitErased(t, a)
}

func postJSON(tb testing.TB, url string, body []byte, out any) {
	tb.Helper()
	resp, err := http.Post(url, "application/json", bytes.NewReader(body))
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		tb.Fatalf("%s: %d %s", url, resp.StatusCode, b)
	}
	if err := json.Unmarshal(b, out); err != nil {
		tb.Fatalf("%s: %v", url, err)
	}
}

// TestServerWrongModel: the server runs stories260K, the sidecar a model of
// the same shape with other weights: Open refuses with a MismatchError
// (ErrMismatch), naming layer and head.
func TestServerWrongModel(t *testing.T) {
	m := loadStories(t)
	srv, dir := startServer(t, shareddata.Path(t, "llamacpp/stories260K.gguf"), 1)
	other, err := model.Synthetic(m.Config, 7)
	if err != nil {
		t.Fatal(err)
	}
	_, err = Open(adapters.Config{URL: srv.URL, Model: other, SlotDir: dir})
	var me *MismatchError
	if !errors.Is(err, adapters.ErrMismatch) || !errors.As(err, &me) || adapters.ReasonOf(err) != ReasonMismatch {
		t.Fatalf("Open with another model: %v, want a MismatchError", err)
	}
	t.Logf("refused: %v", err)
}

// TestServerConcurrent: 200 publish + complete against -np 4, 20 distinct
// prompts, half streamed; every answer equals its own prompt's reference
// (no cross-talk between slots), fused answers prefilled one token, and
// Busy publishes fell back to the original request. Run twice: all 200 at
// once (nearly all find the 4 slots leased), and 24 in flight (slots are
// released, erased and leased again many times).
func TestServerConcurrent(t *testing.T) {
	for _, inflight := range []int{200, 24} {
		t.Run(fmt.Sprint(inflight), func(t *testing.T) { testConcurrent(t, inflight) })
	}
}

func testConcurrent(t *testing.T, inflight int) {
	m := loadStories(t)
	srv, dir := startServer(t, shareddata.Path(t, "llamacpp/stories260K.gguf"), 4, "--threads-http", "32")
	a := openAdapter(t, srv.URL, dir, m)
	const distinct, total, nPredict = 20, 200, 8
	texts := make([]string, distinct)
	refs := make([]string, distinct)
	kvs := make([]*model.Cache, distinct)
	prompts := make([][]int32, distinct)
	names := []string{"Lily", "Tom", "Ben", "Sue", "Max"}
	places := []string{"park", "garden", "forest", "house"}
	for i := range distinct {
		texts[i] = fmt.Sprintf("Once upon a time, %s went to the %s. %s saw", names[i%5], places[i/5], names[(i+1)%5])
		ref, _ := json.Marshal(map[string]any{"prompt": texts[i], "n_predict": nPredict, "temperature": 0, "cache_prompt": false})
		refs[i] = complete(t, srv.URL, ref).Content
		prompts[i] = ids(m, texts[i])
		kvs[i] = prefillKV(t, m, prompts[i][:len(prompts[i])-1])
	}
	var mu sync.Mutex
	fused, busy, hits := 0, 0, 0
	var wg sync.WaitGroup
	errs := make(chan error, 2*total)
	sem := make(chan struct{}, inflight)
	for k := range total {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			i := k % distinct
			body, _ := json.Marshal(map[string]any{"prompt": texts[i], "n_predict": nPredict, "temperature": 0, "stream": k%2 == 0})
			p := adapters.Publication{Prompt: prompts[i], KV: kvs[i], Path: "/completion", Body: body}
			l, err := a.Publish(context.Background(), p)
			send := body
			if err == nil {
				if send, err = l.Rewrite(body); err != nil {
					errs <- err
					return
				}
			} else if !errors.Is(err, adapters.ErrBusy) {
				errs <- fmt.Errorf("request %d: publish: %v", k, err)
				return
			}
			got, cerr := tryComplete(srv.URL, send)
			if cerr != nil {
				errs <- fmt.Errorf("request %d: %v", k, cerr)
			}
			mu.Lock()
			if l != nil {
				fused++
				// A request sent without id_slot (the busy fallbacks here)
				// may take the restored slot before the pinned one starts
				// (docs/llamacpp.md): the answer stays right, the prefill
				// is full.
				if got.Timings.PromptN == 1 {
					hits++
				}
				l.Release()
			} else {
				busy++
			}
			mu.Unlock()
			if got.Content != refs[i] {
				errs <- fmt.Errorf("request %d (prompt %d, fused %v, slot %d, cache_n %d, prompt_n %d): %q, want %q", k, i, l != nil, got.IDSlot, got.Timings.CacheN, got.Timings.PromptN, got.Content, refs[i])
			}
		}()
	}
	wg.Wait()
	close(errs)
	n := 0
	for err := range errs {
		if n++; n <= 10 {
			t.Error(err)
		}
	}
	t.Logf("%d in flight: %d published (%d prefilled 1 token, the others lost their slot to an unpinned request), %d busy fallbacks; stats %+v", inflight, fused, hits, busy, a.Stats())
	if fused == 0 {
		t.Error("no request was fused")
	}
	waitErased(t, a)
}

// TestServerFusionPermuted: a synthetic Hugging Face Llama (rotate_half in
// our runtime, permuted wq/wk rows and adjacent pairs in llama.cpp) and a
// synthetic Qwen2 (NEOX in both): the handshake finds the K order, the
// slot file we write restores, and the pinned request prefills one token
// and generates what the server generates alone. Token-id prompts (these
// models have no meaningful text); byte tokens are banned because a
// random model's partial UTF-8 makes the server answer 500.
func TestServerFusionPermuted(t *testing.T) {
	llamaserver.Bin(t)
	dir := t.TempDir()
	qwen := goldenConfig()
	qwen.Arch, qwen.QKVBias, qwen.KVHeads, qwen.RopeTheta, qwen.TiedEmbeddings = model.ArchQwen2, true, 1, 1e6, true
	for i, c := range []struct {
		name     string
		cfg      model.Config
		permuted bool
	}{{"llama-hf", goldenConfig(), true}, {"qwen2-hf", qwen, false}} {
		t.Run(c.name, func(t *testing.T) {
			d := filepath.Join(dir, c.name)
			if err := model.WriteSynthetic(d, c.cfg, uint64(50+i), model.SaveOptions{}); err != nil {
				t.Fatal(err)
			}
			m, err := model.Load(d, model.LoadOptions{})
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			gguf := d + ".gguf"
			if err := m.WriteGGUF(gguf, model.GGUFOptions{DType: "F32"}); err != nil {
				t.Fatal(err)
			}
			srv, slots := startServer(t, gguf, 2)
			a := openAdapter(t, srv.URL, slots, m)
			if lay, _ := a.Layout(); lay.PermuteK != c.permuted {
				t.Fatalf("layout %v, want PermuteK %v", lay, c.permuted)
			}
			prompt := []int32{1, 300, 301, 302, 350, 260, 270, 399, 310, 320, 330, 340}
			var ban [][]any
			for b := 3; b < 259; b++ {
				ban = append(ban, []any{b, false})
			}
			body, _ := json.Marshal(map[string]any{"prompt": prompt, "n_predict": 12, "temperature": 0, "logit_bias": ban})
			ref, _ := json.Marshal(map[string]any{"prompt": prompt, "n_predict": 12, "temperature": 0, "logit_bias": ban, "cache_prompt": false})
			want := complete(t, srv.URL, ref)
			l, err := a.Publish(context.Background(), publication(t, m, "/completion", body, prompt))
			if err != nil {
				t.Fatal(err)
			}
			rb, _ := l.Rewrite(body)
			got := complete(t, srv.URL, rb)
			l.Release()
			if got.Content != want.Content || got.Timings.PromptN != 1 {
				t.Errorf("fused %q (prompt_n %d), server alone %q", got.Content, got.Timings.PromptN, want.Content)
			}
			waitErased(t, a)
		})
	}
}

// TestServerRestartOtherWeights: llama-server is restarted on the same
// port, the same model path, build and flags, but the file now holds other
// weights of the same shape (nothing in /props changes). The adapter must
// not restore the old model's KV into it: publishes fail (restart noticed
// from the task ids, a failed call or the handshake), the re-handshake
// refuses the new weights, and every answer through the adapter's path is
// the new server's own. Then the right file comes back and fusion resumes.
func TestServerRestartOtherWeights(t *testing.T) {
	bin := llamaserver.Bin(t)
	m := loadStories(t)
	src := shareddata.Path(t, "llamacpp/stories260K.gguf")
	dir := t.TempDir()
	gguf := filepath.Join(dir, "model.gguf")
	good, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	gm, err := model.Load(src, model.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer gm.Close()
	other, err := model.Synthetic(gm.Config, 11)
	if err != nil {
		t.Fatal(err)
	}
	other.Tokenizer = gm.Tokenizer
	if err := other.WriteGGUF(filepath.Join(dir, "other.gguf"), model.GGUFOptions{DType: "F32"}); err != nil {
		t.Fatal(err)
	}
	bad, err := os.ReadFile(filepath.Join(dir, "other.gguf"))
	if err != nil {
		t.Fatal(err)
	}
	slots := t.TempDir()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	url := fmt.Sprintf("http://127.0.0.1:%d", port)
	// Started here, not with llamaserver.Start, which picks its own port.
	start := func(weights []byte) *fixedServer {
		if err := os.WriteFile(gguf, weights, 0o644); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(bin, "-m", gguf, "--host", "127.0.0.1", "--port", strconv.Itoa(port), "-c", "1024", "-np", "2",
			"-t", "1", "-tb", "1", "--slot-save-path", slots, "--cache-ram", "0", "--temp", "0",
			"--override-kv", "llama.context_length=int:512")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		s := &fixedServer{URL: url, cmd: cmd}
		for deadline := time.Now().Add(time.Minute); ; {
			if r, err := http.Get(url + "/health"); err == nil {
				r.Body.Close()
				if r.StatusCode == 200 {
					return s
				}
			}
			if time.Now().After(deadline) {
				s.Close()
				t.Fatal("llama-server not ready")
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	srv := start(good)
	a := openAdapter(t, srv.URL, slots, m)
	prompt := ids(m, p2Text)
	var ban [][]any // the random weights' partial UTF-8 bytes make the server answer 500
	for b := 3; b < 259; b++ {
		ban = append(ban, []any{b, false})
	}
	body, _ := json.Marshal(map[string]any{"prompt": p2Text, "n_predict": 12, "temperature": 0, "logit_bias": ban})
	ref, _ := json.Marshal(map[string]any{"prompt": p2Text, "n_predict": 12, "temperature": 0, "logit_bias": ban, "cache_prompt": false})
	round := func(srv *fixedServer) (fused bool, got, want answer) {
		want = complete(t, srv.URL, ref)
		send := body
		l, err := a.Publish(context.Background(), publication(t, m, "/completion", body, prompt))
		if err == nil {
			send, _ = l.Rewrite(body)
			defer func() { l.Release(); a.bg.Wait() }()
		} else {
			t.Logf("publish: %v", err)
		}
		return err == nil, complete(t, srv.URL, send), want
	}
	if fused, got, want := round(srv); !fused || got.Content != want.Content || got.Timings.PromptN != 1 {
		t.Fatalf("before the restart: fused %v, %q (prompt_n %d), want %q", fused, got.Content, got.Timings.PromptN, want.Content)
	}
	srv.Close()
	srv = start(bad)
	for i := range 4 {
		fused, got, want := round(srv)
		if fused || got.Content != want.Content {
			t.Errorf("other weights, round %d: fused %v, %q, the server alone %q", i, fused, got.Content, want.Content)
		}
	}
	srv.Close()
	srv = start(good)
	defer srv.Close()
	a.mu.Lock()
	a.retryAt = time.Time{} // skip the hold of the failed handshake
	a.mu.Unlock()
	fused := false
	for range 3 {
		var got, want answer
		if fused, got, want = round(srv); fused {
			if got.Content != want.Content {
				t.Errorf("after the right weights came back: %q, want %q", got.Content, want.Content)
			}
			break
		}
	}
	if !fused {
		t.Error("fusion did not resume on the right weights")
	}
	t.Logf("stats %+v", a.Stats())
}

type fixedServer struct {
	URL string
	cmd *exec.Cmd
}

func (s *fixedServer) Close() {
	s.cmd.Process.Kill()
	s.cmd.Wait()
}
