package rag

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fusionrag/fusionrag/adapters"
	"github.com/fusionrag/fusionrag/adapters/native"
	"github.com/fusionrag/fusionrag/engine"
	"github.com/fusionrag/fusionrag/fusion"
	"github.com/fusionrag/fusionrag/internal/shareddata"
	"github.com/fusionrag/fusionrag/kvstore"
	"github.com/fusionrag/fusionrag/model"
	"github.com/fusionrag/fusionrag/prompt"
	"github.com/fusionrag/fusionrag/proxy"
)

// The Fuser in process over real parts: the stories260K model, an
// in-memory store, the real engine behind httptest, and the native adapter
// pushing KV to it.

var stories struct {
	once sync.Once
	m    *model.Model
	err  error
}

func storiesModel(t testing.TB) *model.Model {
	t.Helper()
	path := shareddata.Path(t, "models/stories260K/stories260K.bin")
	stories.once.Do(func() { stories.m, stories.err = model.Load(path, model.LoadOptions{}) })
	if stories.err != nil {
		t.Fatal(stories.err)
	}
	return stories.m
}

type fuserEnv struct {
	f      *Fuser
	engine string // engine base URL
	store  kvstore.Store
}

func newFuserEnv(t testing.TB, mod func(*proxy.Config)) *fuserEnv {
	t.Helper()
	m := storiesModel(t)
	e, err := engine.NewFromModel(engine.Config{}, m)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(e.Handler())
	t.Cleanup(func() { srv.Close(); e.Close() })
	ad, err := native.Open(adapters.Config{URL: srv.URL, Transport: adapters.TransportPush})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ad.Close() })
	st, err := kvstore.Open("mem://?max=256MiB")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	cfg := proxy.DefaultConfig()
	cfg.Upstream = srv.URL
	cfg.Fusion.MaxMissingFraction = 1
	if mod != nil {
		mod(&cfg)
	}
	f, err := New(Config{Proxy: cfg, Model: m, Store: st, Engine: ad})
	if err != nil {
		t.Fatal(err)
	}
	return &fuserEnv{f: f, engine: srv.URL, store: st}
}

func (fe *fuserEnv) request(t testing.TB, route proxy.Route, body, tenant string) *proxy.Request {
	t.Helper()
	r, err := proxy.ParseRequest(route, []byte(body))
	if err != nil {
		t.Fatalf("ParseRequest: %v", err)
	}
	r.Tenant, r.TenantSource = proxy.TenantOf(tenant, "")
	return r
}

// engineAnswer posts body to the engine and returns the text and usage.
func (fe *fuserEnv) engineAnswer(t testing.TB, path string, body []byte) (string, int, int) {
	t.Helper()
	resp, err := http.Post(fe.engine+path, "application/json", strings.NewReader(string(body)))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var out struct {
		Choices []struct {
			Text    string
			Message struct{ Content string }
		}
		Usage struct {
			PromptTokens  int `json:"prompt_tokens"`
			PromptDetails struct {
				Cached int `json:"cached_tokens"`
			} `json:"prompt_tokens_details"`
		}
	}
	if resp.StatusCode != 200 || json.Unmarshal(b, &out) != nil || len(out.Choices) == 0 {
		t.Fatalf("engine %s: %d %s", path, resp.StatusCode, b)
	}
	return out.Choices[0].Text + out.Choices[0].Message.Content, out.Usage.PromptTokens, out.Usage.PromptDetails.Cached
}

const (
	storyA = "Lily had a red ball. Every day Lily went to the park to play with it."
	storyB = "Tom had a big dog. The dog liked to run in the garden with Tom."
)

func skipReason(err error) string {
	var s *proxy.SkipError
	if errors.As(err, &s) {
		return s.Reason
	}
	return ""
}

// TestFuserSeparatorTenantIsolation: a separator typed into a chat message
// by tenant B yields exactly the ids and segments of tenant A's completions
// prompt, yet B never hits A's chunk KV, nor A's published prompt KV.
func TestFuserSeparatorTenantIsolation(t *testing.T) {
	fe := newFuserEnv(t, func(c *proxy.Config) { c.Fusion.Separator = " # # "; c.Fusion.KeepMarkers = true })
	text := "Once upon a time # # " + storyA + " # # " + storyB + " # # The end"
	ctx := context.Background()
	a := fe.request(t, proxy.RouteCompletions, `{"prompt":`+jsonString(text)+`,"max_tokens":4,"temperature":0}`, "tenant-a")
	b := fe.request(t, proxy.RouteChat, `{"messages":[{"role":"user","content":`+jsonString(text)+`}],"max_tokens":4,"temperature":0}`, "tenant-b")
	sa, err := fe.f.segment(a)
	if err != nil {
		t.Fatal(err)
	}
	sb, err := fe.f.segment(b)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(sa.ids, sb.ids) || len(sa.seg.Chunks) != 2 || len(sb.seg.Chunks) != 2 || sa.seg.Chunks[1] != sb.seg.Chunks[1] {
		t.Fatalf("the two requests should segment alike: %+v / %+v", sa.seg, sb.seg)
	}
	for i, want := range []struct{ hits, misses int }{{0, 2}, {2, 0}} {
		p, err := fe.f.Fuse(ctx, a)
		if err != nil {
			t.Fatal(err)
		}
		if p.Stats.Hits != want.hits || p.Stats.Misses != want.misses {
			t.Errorf("tenant A run %d: %d hits %d misses, want %+v", i, p.Stats.Hits, p.Stats.Misses, want)
		}
	}
	pb, err := fe.f.Fuse(ctx, b)
	if err != nil {
		t.Fatal(err)
	}
	if pb.Stats.Hits != 0 || pb.Stats.Misses != 2 {
		t.Errorf("tenant B: %d hits %d misses: it reached tenant A's KV", pb.Stats.Hits, pb.Stats.Misses)
	}
	pa, _ := fe.f.Fuse(ctx, a)
	if leaseNamespace(t, pa) == leaseNamespace(t, pb) {
		t.Error("tenants A and B publish under the same namespace")
	}
}

// leaseNamespace is the kv_transfer_params namespace p's lease sets.
func leaseNamespace(t testing.TB, p *proxy.Plan) string {
	t.Helper()
	b, err := p.Lease.Rewrite([]byte(`{}`))
	var v struct {
		KV struct{ Namespace string } `json:"kv_transfer_params"`
	}
	if err != nil || json.Unmarshal(b, &v) != nil || v.KV.Namespace == "" {
		t.Fatalf("lease rewrites {} to %s, %v: no namespace", b, err)
	}
	return v.KV.Namespace
}

func jsonString(s string) string { b, _ := json.Marshal(s); return string(b) }

// storiesBody is the chat request most fuser tests send: system "You tell
// stories.", documents A and B as content parts, then the question "Once
// upon a time"; params are the body's remaining fields
// (`"max_tokens":2`).
func storiesBody(params string) string {
	return `{"messages":[{"role":"system","content":"You tell stories."},{"role":"user","content":[{"type":"text","text":` +
		jsonString("Document: A\n"+storyA) + `},{"type":"text","text":` + jsonString("Document: B\n"+storyB) +
		`},{"type":"text","text":"Once upon a time"}]}],` + params + `}`
}

// TestFuserStripsMarkers: markers are removed from what the engine sees, and
// the engine's answer on the fused body at ratio 1.0 is its own answer on
// the stripped prompt, with every token but the last loaded from the
// published KV.
func TestFuserStripsMarkers(t *testing.T) {
	for _, tc := range []struct {
		name  string
		route proxy.Route
		path  string
		body  func(text string) string
	}{
		{"completions", proxy.RouteCompletions, "/v1/completions", func(s string) string {
			return `{"prompt":` + jsonString(s) + `,"max_tokens":8,"temperature":0}`
		}},
		{"chat", proxy.RouteChat, "/v1/chat/completions", func(s string) string {
			return `{"messages":[{"role":"system","content":"You tell stories."},{"role":"user","content":` + jsonString(s) + `}],"max_tokens":8,"temperature":0}`
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fe := newFuserEnv(t, func(c *proxy.Config) { c.Fusion.MarkerOpen, c.Fusion.MarkerClose = "<doc>", "</doc>" })
			marked := "Read these.<doc>\n" + storyA + "</doc>\n<doc>\n" + storyB + "</doc>\nOnce upon a time"
			plain := "Read these.\n" + storyA + "\n\n" + storyB + "\nOnce upon a time"
			r := fe.request(t, tc.route, tc.body(marked), "t")
			r.Override = proxy.Override{Strategy: "fusionrag", Ratio: 1, HasRatio: true}
			p, err := fe.f.Fuse(context.Background(), r)
			if err != nil {
				t.Fatal(err)
			}
			if p.Body == nil || strings.Contains(string(p.Body), "<doc>") {
				t.Fatalf("markers not stripped: %s", p.Body)
			}
			if p.Stats.Chunks != 2 {
				t.Errorf("%d chunks, want 2", p.Stats.Chunks)
			}
			fused, err := applyPlan(p.Body, p)
			if err != nil {
				t.Fatal(err)
			}
			got, n, cached := fe.engineAnswer(t, tc.path, fused)
			want, wn, _ := fe.engineAnswer(t, tc.path, []byte(tc.body(plain)))
			if got != want || n != wn || cached != n-1 {
				t.Errorf("fused %q (%d tokens, %d cached), direct on the stripped prompt %q (%d tokens)", got, n, cached, want, wn)
			}
		})
	}
}

// TestFuserSkips: the reasons the fusion path declines a request.
func TestFuserSkips(t *testing.T) {
	chat := func(parts ...string) string {
		var ps []string
		for _, p := range parts {
			ps = append(ps, `{"type":"text","text":`+jsonString(p)+`}`)
		}
		return `{"messages":[{"role":"system","content":"You tell stories."},{"role":"user","content":[` + strings.Join(ps, ",") + `]}],"max_tokens":2}`
	}
	for _, tc := range []struct {
		name  string
		mod   func(*proxy.Config)
		route proxy.Route
		body  string
		want  string
	}{
		{"no chunks", nil, proxy.RouteChat, `{"messages":[{"role":"user","content":"Once upon a time"}]}`, proxy.SkipNoChunks},
		{"too many chunks", func(c *proxy.Config) { c.Limits.MaxChunks = 1 }, proxy.RouteChat, chat("Document: A\n"+storyA, "Document: B\n"+storyB, "Q"), proxy.SkipTooManyChunks},
		{"too many missing", func(c *proxy.Config) { c.Fusion.MaxMissingFraction = 0.5 }, proxy.RouteChat, chat("Document: A\n"+storyA, "Document: B\n"+storyB, "Q"), proxy.SkipTooManyMissing},
		{"unbalanced markers", func(c *proxy.Config) { c.Fusion.MarkerOpen, c.Fusion.MarkerClose = "<doc>", "</doc>" }, proxy.RouteCompletions,
			`{"prompt":"S<doc>A</doc><doc>B"}`, proxy.SkipBadMarkers},
		{"the engine would refuse it", nil, proxy.RouteChat, `{"messages":[{"role":"wizard","content":"x"}]}`, proxy.SkipEngineRejects},
		// Eligible for the proxy (other engines read image parts), refused by
		// the engine's parser: Parsed is nil and the fuser skips.
		{"an image part", nil, proxy.RouteChat, `{"messages":[{"role":"user","content":[{"type":"text","text":"x"},{"type":"image_url","image_url":{"url":"u"}}]}]}`, proxy.SkipEngineRejects},
		{"a token prompt over the context", nil, proxy.RouteCompletions, `{"prompt":[` + strings.Repeat("1,", 5000) + `1]}`, proxy.SkipPromptTooLong},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fe := newFuserEnv(t, tc.mod)
			_, err := fe.f.Fuse(context.Background(), fe.request(t, tc.route, tc.body, "t"))
			if got := skipReason(err); got != tc.want {
				t.Errorf("skip reason %q (err %v), want %q", got, err, tc.want)
			}
		})
	}
}

// TestFuserWarmsSkippedChunks: a request that skips fusion because its
// chunks are missing gets them computed and stored in the background, so
// the same chunks hit next time.
func TestFuserWarmsSkippedChunks(t *testing.T) {
	fe := newFuserEnv(t, func(c *proxy.Config) { c.Fusion.MaxMissingFraction = 0 })
	body := `{"messages":[{"role":"system","content":"You tell stories."},{"role":"user","content":[{"type":"text","text":` +
		jsonString("Document: A\n"+storyA) + `},{"type":"text","text":"Once upon a time"}]}],"max_tokens":2}`
	r := fe.request(t, proxy.RouteChat, body, "t")
	deadline := time.Now().Add(20 * time.Second)
	for {
		p, err := fe.f.Fuse(context.Background(), r)
		if err == nil {
			if p.Stats.Hits != 1 {
				t.Errorf("after the warm-up: %+v", p.Stats)
			}
			return
		}
		if skipReason(err) != proxy.SkipTooManyMissing || time.Now().After(deadline) {
			t.Fatalf("Fuse: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestFuserFindsKnownChunks: convention (c): chunks fused once (from
// content parts) are recognised later in an unmarked completions prompt
// that renders to the same ids.
func TestFuserFindsKnownChunks(t *testing.T) {
	fe := newFuserEnv(t, nil)
	partsBody := storiesBody(`"max_tokens":2`)
	req := fe.request(t, proxy.RouteChat, partsBody, "t")
	if _, err := fe.f.Fuse(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	if x := fe.f.seenBy(req.Tenant); x == nil || x.Len() != 2 {
		t.Fatalf("tenant's index holds %v, want 2 chunks", x)
	}
	prompt := "You tell stories.\n\nDocument: A\n" + storyA + "\n\nDocument: B\n" + storyB + "\n\nThe end"
	r := fe.request(t, proxy.RouteCompletions, `{"prompt":`+jsonString(prompt)+`,"max_tokens":2}`, "t")
	sg, err := fe.f.segment(r)
	if err != nil {
		t.Fatal(err)
	}
	if sg.how != "index" || len(sg.seg.Chunks) != 2 {
		t.Fatalf("segmented by %q into %+v", sg.how, sg.seg)
	}
	p, err := fe.f.Fuse(context.Background(), r)
	if err != nil {
		t.Fatal(err)
	}
	if p.Stats.Hits != 2 {
		t.Errorf("%+v, want 2 hits", p.Stats)
	}
}

// FuzzFuserSegment: whatever the prompt (markers, separators, stray
// special text), segmentation never panics, and what it returns tiles the
// exact ids the engine runs for the body it will receive.
func FuzzFuserSegment(f *testing.F) {
	f.Add("S<doc>A</doc><doc>B</doc>Q", true, false)
	f.Add("S # # A # # B # # Q", false, true)
	f.Add("<doc></doc> # #  # # ", true, true)
	f.Add("S<doc>é</doc>\n<doc>日本</doc>", false, false)
	f.Add("a\x00<doc>\n\n</doc>z", true, false)
	fe := newFuserEnv(f, func(c *proxy.Config) {
		c.Fusion.Separator, c.Fusion.MarkerOpen, c.Fusion.MarkerClose = " # # ", "<doc>", "</doc>"
	})
	f.Fuzz(func(t *testing.T, text string, chat, keep bool) {
		if len(text) > 2000 {
			return
		}
		fe.f.cfg.Fusion.KeepMarkers = keep
		route, body := proxy.RouteCompletions, `{"prompt":`+jsonString(text)+`}`
		if chat {
			route, body = proxy.RouteChat, `{"messages":[{"role":"user","content":`+jsonString(text)+`}]}`
		}
		r, err := proxy.ParseRequest(route, []byte(body))
		if err != nil {
			return
		}
		sg, err := fe.f.segment(r)
		if err != nil {
			if skipReason(err) == "" {
				t.Fatalf("segment: %v", err)
			}
			return
		}
		final := r.Body
		if sg.body != nil {
			final = sg.body
		}
		er, err := prompt.ParseRequest(final, chat)
		if err != nil {
			t.Fatalf("the rewritten body is not a request: %v\n%s", err, final)
		}
		ids, err := prompt.Tokens(fe.f.tok, fe.f.chat, er.Prompt)
		if err != nil || !slices.Equal(ids, sg.ids) {
			t.Fatalf("segment ids differ from the engine's (%v)", err)
		}
		if err := sg.seg.Validate(len(ids)); err != nil {
			t.Fatal(err)
		}
	})
}

// BenchmarkFuse measures one fusion (segment, load, recompute, publish) of
// a 7-chunk chat prompt whose chunks are all stored, per strategy, and
// reports each strategy's time over "full" (a plain prefill of the whole
// prompt on the same path) measured in the same run.
func BenchmarkFuse(b *testing.B) {
	fe := newFuserEnv(b, nil)
	var parts []string
	for i := range 7 {
		parts = append(parts, `{"type":"text","text":`+jsonString(fmt.Sprintf("Document: %d\n%s %s", i, storyA, storyB))+`}`)
	}
	body := `{"messages":[{"role":"system","content":"You tell stories."},{"role":"user","content":[` +
		strings.Join(parts, ",") + `,{"type":"text","text":"Once upon a time"}]}],"max_tokens":2}`
	r := fe.request(b, proxy.RouteChat, body, "bench")
	if _, err := fe.f.Fuse(context.Background(), r); err != nil { // store the chunks
		b.Fatal(err)
	}
	per := map[string]time.Duration{}
	for _, s := range []string{"full", "fusionrag", "reuse"} {
		b.Run(s, func(b *testing.B) {
			r.Override = proxy.Override{Strategy: s, Ratio: 0.15, HasRatio: true}
			start := time.Now()
			for range b.N {
				if _, err := fe.f.Fuse(context.Background(), r); err != nil {
					b.Fatal(err)
				}
			}
			per[s] = time.Since(start) / time.Duration(b.N)
			if full := per["full"]; full > 0 {
				b.ReportMetric(float64(per[s])/float64(full), "x_full")
			}
		})
	}
}

// TestFuserSeparatorTokenizedInContext: LMCache's " # # " separator does
// not tokenize in context as it does alone (with the stories260K tokenizer
// the space after it merges into the next word), so looking for its
// standalone ids would silently miss every chunk. Found in the text and
// mapped through the offsets, both chunks are found; kept in the prompt,
// the chunks carry exactly the ids the engine runs.
func TestFuserSeparatorTokenizedInContext(t *testing.T) {
	fe := newFuserEnv(t, func(c *proxy.Config) { c.Fusion.Separator = " # # "; c.Fusion.KeepMarkers = true })
	text := "Once upon a time # # " + storyA + " # # " + storyB + " # # The end"
	sepIDs := fusion.EncodeSegment(fe.f.tok, " # # ") // no dummy-prefix space
	sg, err := fe.f.segment(fe.request(t, proxy.RouteCompletions, `{"prompt":`+jsonString(text)+`}`, "t"))
	if err != nil {
		t.Fatal(err)
	}
	if containsIDs(sg.ids, sepIDs) {
		t.Fatalf("the separator's standalone ids %v occur in the prompt ids: this test no longer shows the context effect", sepIDs)
	}
	if len(sg.seg.Chunks) != 2 {
		t.Fatalf("%d chunks, want 2: %+v", len(sg.seg.Chunks), sg.seg)
	}
	for i, c := range sg.seg.Chunks {
		got := fe.f.tok.Decode(sg.ids[c.Begin:c.End])
		if !strings.Contains(got, []string{storyA, storyB}[i][:20]) {
			t.Errorf("chunk %d decodes to %q", i, got)
		}
	}
}

func containsIDs(ids, sub []int32) bool {
	for i := 0; i+len(sub) <= len(ids); i++ {
		if slices.Equal(ids[i:i+len(sub)], sub) {
			return true
		}
	}
	return false
}
