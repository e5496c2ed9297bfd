package proxy

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/fusionrag/fusionrag/adapters"
)

// The engine looks up published KV under kv_transfer_params.namespace, a
// value any client can compute for another tenant (the publish namespace is a
// hash of public inputs). These tests check that a client-supplied
// kv_transfer_params never reaches the engine, on any path, in any spelling
// the engine's JSON decoder would accept (encoding/json matches member names
// case-insensitively, Unicode simple folding included).

// TestClientKVTransferParamsNeverForwarded sends bodies carrying
// kv_transfer_params through every path and checks what the engine got.
func TestClientKVTransferParamsNeverForwarded(t *testing.T) {
	const victim = `{"namespace":"0123456789abcdef0123456789abcdef","do_remote_prefill":true}`
	spellings := []string{
		`"kv_transfer_params"`,
		`"KV_TRANSFER_PARAMS"`,
		`"Kv_Transfer_Params"`,
		`"\u006bv_transfer_params"`, // escaped k
		`"\u212av_transfer_params"`, // KELVIN SIGN folds to k in encoding/json
	}
	fusers := map[string]Fuser{
		"none":  nil,
		"ok":    FuserFunc(func(context.Context, *Request) (*Plan, error) { return okPlan("sidecar"), nil }),
		"skip":  FuserFunc(func(context.Context, *Request) (*Plan, error) { return nil, Skip("no_chunks") }),
		"error": FuserFunc(func(context.Context, *Request) (*Plan, error) { return nil, errors.New("store down") }),
	}
	for fname, fu := range fusers {
		for _, sp := range spellings {
			t.Run(fname+"/"+sp, func(t *testing.T) {
				rc := &recorder{}
				up := httptest.NewServer(rc)
				defer up.Close()
				var opts []Option
				if fu != nil {
					opts = append(opts, WithFuser(fu))
				}
				_, base := startProxy(t, upstreamConfig(up.URL), opts...)
				body := `{"model":"m",` + sp + `:` + victim + `,"prompt":"p",` + sp + `:` + victim + `}`
				if code, resp := post(t, base+"/v1/completions", body); code != 200 {
					t.Fatalf("status %d %s", code, resp)
				}
				got := rc.got()
				if len(got) != 1 {
					t.Fatalf("engine got %d requests", len(got))
				}
				want := `{"model":"m","prompt":"p"}`
				if fname == "ok" {
					want = `{"model":"m","prompt":"p","kv_transfer_params":{"namespace":"sidecar"}}`
				}
				if d := cmp.Diff(want, got[0]); d != "" {
					t.Errorf("engine body (-want +got):\n%s", d)
				}
			})
		}
	}
}

// TestClientKVTransferParamsLargeBody: a body too large to be buffered by
// default is still read (up to max_fusion_body) so the member can be removed;
// a larger one on an eligible route is refused rather than streamed
// unchecked to the engine.
func TestClientKVTransferParamsLargeBody(t *testing.T) {
	for _, withFuser := range []bool{false, true} {
		rc := &recorder{}
		up := httptest.NewServer(rc)
		cfg := upstreamConfig(up.URL)
		cfg.Limits.BufferBody = 1 << 10
		cfg.Limits.MaxFusionBody = 64 << 10
		var opts []Option
		if withFuser {
			opts = append(opts, WithFuser(FuserFunc(func(context.Context, *Request) (*Plan, error) { return nil, Skip("no_chunks") })))
		}
		_, base := startProxy(t, cfg, opts...)
		pad := strings.Repeat("x", 8<<10)
		body := `{"model":"m","kv_transfer_params":{"namespace":"abcd"},"prompt":"` + pad + `"}`
		if code, resp := post(t, base+"/v1/completions", body); code != 200 {
			t.Fatalf("fuser %v: status %d %s", withFuser, code, resp)
		}
		if got := rc.got(); len(got) != 1 || strings.Contains(got[0], "kv_transfer_params") {
			t.Errorf("fuser %v: engine got %d bodies, kv_transfer_params present: %v", withFuser, len(got), len(got) == 1 && strings.Contains(got[0], "kv_transfer_params"))
		}
		rc.reset()
		big := `{"model":"m","kv_transfer_params":{"namespace":"abcd"},"prompt":"` + strings.Repeat("x", 80<<10) + `"}`
		if code, _ := post(t, base+"/v1/completions", big); code != 413 {
			t.Errorf("fuser %v: body over max_fusion_body: status %d, want 413", withFuser, code)
		}
		if got := rc.got(); len(got) != 0 {
			t.Errorf("fuser %v: engine got %d requests for a refused body", withFuser, len(got))
		}
		up.Close()
	}
}

// TestMalformedBodyWithKVTransferParams: malformed bodies are forwarded
// untouched (the engine answers them), unless they may carry
// kv_transfer_params that a lenient engine parser would read (Python's
// json.loads on bytes accepts NaN, a UTF-8 BOM, UTF-16): those are refused.
func TestMalformedBodyWithKVTransferParams(t *testing.T) {
	rc := &recorder{}
	up := httptest.NewServer(rc)
	defer up.Close()
	_, base := startProxy(t, upstreamConfig(up.URL), WithFuser(FuserFunc(func(context.Context, *Request) (*Plan, error) {
		return okPlan("x"), nil
	})))
	for _, body := range []string{
		`{"model":"m","temperature":NaN,"kv_transfer_params":{"namespace":"abcd"},"prompt":"p"}`,
		`{"model":"m","temperature":NaN,"KV_Transfer_Params":{"namespace":"abcd"},"prompt":"p"}`,
		`{"model":"m","temperature":NaN,"\u006bv_transfer_params":{"namespace":"abcd"},"prompt":"p"}`,
		"\xef\xbb\xbf" + `{"model":"m","kv_transfer_params":{"namespace":"abcd"},"prompt":"p"}`, // UTF-8 BOM
		utf16LE(`{"model":"m","kv_transfer_params":{"namespace":"abcd"},"prompt":"p"}`),
	} {
		rc.reset()
		code, _ := post(t, base+"/v1/completions", body)
		if code != 400 || len(rc.got()) != 0 {
			t.Errorf("body %s: status %d, engine got %d requests; want 400 and none", body, code, len(rc.got()))
		}
	}
}

// TestEngineKVRoutesNotExposed: PUT /v1/kv/{key} stores a KV blob in the
// engine under any key, another tenant's included; the adapter reaches it
// directly (fusion.adapter_url or the upstream), so clients of the sidecar
// never may, in any spelling of the path the engine decodes to it.
func TestEngineKVRoutesNotExposed(t *testing.T) {
	var reached atomic.Int64
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		reached.Add(1)
		w.WriteHeader(204)
	}))
	defer up.Close()
	_, base := startProxy(t, upstreamConfig(up.URL))
	key := strings.Repeat("ab", 16)
	for _, tt := range []struct{ method, uri string }{
		{"PUT", "/v1/kv/" + key},
		{"PUT", "/v1/kv/" + key + "?x=1"},
		{"PUT", "/v1/%6bv/" + key},
		{"PUT", "/v1/kv%2F" + key},
		{"PUT", "/v1/x/../kv/" + key},
		{"GET", "/v1/kv"},
		{"GET", "/v1/kv/"},
	} {
		reached.Store(0)
		c, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(c, "%s %s HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc", tt.method, tt.uri)
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("%s %s: %v", tt.method, tt.uri, err)
		}
		resp.Body.Close()
		c.Close()
		if resp.StatusCode != http.StatusForbidden || reached.Load() != 0 {
			t.Errorf("%s %s: status %d, upstream reached %d times; want 403 and never", tt.method, tt.uri, resp.StatusCode, reached.Load())
		}
	}
	// Neighbouring paths still pass.
	if code, _ := post(t, base+"/v1/kvx", "{}"); code != 204 {
		t.Errorf("/v1/kvx: status %d, want the upstream's 204", code)
	}
}

// TestFuserRewriteKeepsMessageMembers: stripping markers from the last user
// message rewrites only that message's content; every other member of every
// message (name, tool_calls, ...) reaches the engine as the client sent it,
// so the fused request is the original one minus the markers.
func TestFuserRewriteKeepsMessageMembers(t *testing.T) {
	fe := newFuserEnv(t, func(c *Config) { c.Fusion.MarkerOpen, c.Fusion.MarkerClose = "<doc>", "</doc>" })
	marked := "Read these.<doc>\n" + storyA + "</doc>\n<doc>\n" + storyB + "</doc>\nOnce upon a time"
	body := `{"messages":[{"role":"system","content":"You tell stories.","name":"sys"},` +
		`{"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function","function":{"name":"f","arguments":"{}"}}]},` +
		`{"role":"tool","tool_call_id":"c1","content":"done"},` +
		`{"role":"user","name":"alice","content":` + jsonString(marked) + `}],"max_tokens":8,"temperature":0}`
	r := fe.request(t, RouteChat, body, "t")
	p, err := fe.f.Fuse(context.Background(), r)
	if err != nil {
		t.Fatal(err)
	}
	var got, want struct {
		Messages []map[string]any `json:"messages"`
	}
	if err := json.Unmarshal(p.Body, &got); err != nil {
		t.Fatalf("rewritten body %s: %v", p.Body, err)
	}
	_ = json.Unmarshal([]byte(body), &want)
	want.Messages[3]["content"] = "Read these.\n" + storyA + "\n\n" + storyB + "\nOnce upon a time"
	if d := cmp.Diff(want.Messages, got.Messages); d != "" {
		t.Errorf("messages the engine gets (-want +got):\n%s", d)
	}
}

// TestCrossTenantReadThroughEngine is the attack end to end, on the real
// model and engine: tenant A's prompt KV is published; tenant B sends the
// same prompt through the sidecar with kv_transfer_params naming A's
// namespace. Sent straight to the engine this loads A's KV (the attack
// payload is live); through the sidecar, on the pass-through and the fusion
// path alike, the engine must load nothing of A's.
func TestCrossTenantReadThroughEngine(t *testing.T) {
	fe := newFuserEnv(t, func(c *Config) { c.Fusion.Separator = " # # " })
	text := "Once upon a time # # " + storyA + " # # " + storyB + " # # The end"
	body := `{"prompt":` + jsonString(text) + `,"max_tokens":4,"temperature":0}`
	pa, err := fe.f.Fuse(context.Background(), fe.request(t, RouteCompletions, body, "tenant-a"))
	if err != nil {
		t.Fatal(err)
	}
	nsA := leaseNamespace(t, pa)
	pa.Lease.Release()
	attack, err := applyPlan([]byte(pa.Body), &Plan{Lease: adapters.KVParamsLease{Namespace: nsA}})
	if err != nil {
		t.Fatal(err)
	}
	if _, n, cached := fe.engineAnswer(t, "/v1/completions", attack); cached != n-1 {
		t.Fatalf("straight to the engine, A's namespace loads %d of %d tokens; the attack payload is not live", cached, n)
	}
	// The attacker's body: the stripped prompt (what A's KV is for) and A's
	// namespace, on every path that forwards the client's body.
	for name, fu := range map[string]Fuser{
		"passthrough": nil,
		"skip":        FuserFunc(func(context.Context, *Request) (*Plan, error) { return nil, Skip("no_chunks") }),
		"fallback":    FuserFunc(func(context.Context, *Request) (*Plan, error) { return nil, errors.New("store down") }),
	} {
		var opts []Option
		if fu != nil {
			opts = append(opts, WithFuser(fu))
		}
		cfg := upstreamConfig(fe.engine)
		cfg.Tenant.Header = HeaderTenant // B is a tenant of its own, as a gateway would name it
		_, base := startProxy(t, cfg, opts...)
		code, resp := post(t, base+"/v1/completions", string(attack), HeaderTenant, "tenant-b")
		var out struct {
			Usage struct {
				Details struct {
					Cached int `json:"cached_tokens"`
				} `json:"prompt_tokens_details"`
			}
		}
		if code != 200 || json.Unmarshal([]byte(resp), &out) != nil {
			t.Fatalf("%s: %d %s", name, code, resp)
		}
		if out.Usage.Details.Cached != 0 {
			t.Errorf("%s: through the sidecar, tenant B loaded %d cached tokens of tenant A's KV", name, out.Usage.Details.Cached)
		}
	}
}

func utf16LE(s string) string {
	var b []byte
	for _, c := range []byte(s) {
		b = append(b, c, 0)
	}
	return string(b)
}

// TestKnownChunksPerTenant: the chunks the fusion path meets in one
// tenant's requests are recognised in that tenant's later unmarked prompts
// only. Shared, another tenant's unmarked prompt would be segmented (and,
// once warmed under its own keys, fused: cached tokens in its usage) exactly
// when some other tenant had sent the chunk: a membership oracle.
func TestKnownChunksPerTenant(t *testing.T) {
	fe := newFuserEnv(t, nil)
	partsBody := `{"messages":[{"role":"system","content":"You tell stories."},{"role":"user","content":[{"type":"text","text":` +
		jsonString("Document: A\n"+storyA) + `},{"type":"text","text":` + jsonString("Document: B\n"+storyB) +
		`},{"type":"text","text":"Once upon a time"}]}],"max_tokens":2}`
	if _, err := fe.f.Fuse(context.Background(), fe.request(t, RouteChat, partsBody, "tenant-a")); err != nil {
		t.Fatal(err)
	}
	prompt := "You tell stories.\n\nDocument: A\n" + storyA + "\n\nDocument: B\n" + storyB + "\n\nThe end"
	body := `{"prompt":` + jsonString(prompt) + `,"max_tokens":2}`
	sgA, err := fe.f.segment(fe.request(t, RouteCompletions, body, "tenant-a"))
	if err != nil {
		t.Fatalf("tenant A's own chunks not found in its unmarked prompt: %v", err)
	}
	// B's prompt may be cut into passages (convention d, from its own text
	// alone), never by A's chunks.
	if sg, err := fe.f.segment(fe.request(t, RouteCompletions, body, "tenant-b")); err == nil && strings.Contains(sg.how, "index") {
		t.Errorf("tenant B's unmarked prompt segmented by %q with tenant A's chunks: %+v", sg.how, sg.seg)
	}
	// Chunks indexed explicitly (Index: ingest, documents) are known to all.
	c := sgA.seg.Chunks[0]
	if !fe.f.Index().Add(sgA.ids[c.Begin:c.End]) {
		t.Fatal("Index().Add refused the chunk")
	}
	if sg, err := fe.f.segment(fe.request(t, RouteCompletions, body, "tenant-b")); err != nil || !strings.Contains(sg.how, "index") {
		t.Errorf("an explicitly indexed chunk is not found for tenant B: %v", err)
	}
}
