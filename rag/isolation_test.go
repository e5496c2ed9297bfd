package rag

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/fusionrag/fusionrag/adapters"
	"github.com/fusionrag/fusionrag/internal/proxytest"
	"github.com/fusionrag/fusionrag/proxy"
)

// The engine looks up published KV under kv_transfer_params.namespace, a
// value any client can compute for another tenant (the publish namespace is a
// hash of public inputs). These tests check that a client-supplied
// kv_transfer_params never reaches the engine, on any path, in any spelling
// the engine's JSON decoder would accept (encoding/json matches member names
// case-insensitively, Unicode simple folding included).

// TestFuserRewriteKeepsMessageMembers: stripping markers from the last user
// message rewrites only that message's content; every other member of every
// message (name, tool_calls, ...) reaches the engine as the client sent it,
// so the fused request is the original one minus the markers.
func TestFuserRewriteKeepsMessageMembers(t *testing.T) {
	fe := newFuserEnv(t, func(c *proxy.Config) { c.Fusion.MarkerOpen, c.Fusion.MarkerClose = "<doc>", "</doc>" })
	marked := "Read these.<doc>\n" + storyA + "</doc>\n<doc>\n" + storyB + "</doc>\nOnce upon a time"
	body := `{"messages":[{"role":"system","content":"You tell stories.","name":"sys"},` +
		`{"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function","function":{"name":"f","arguments":"{}"}}]},` +
		`{"role":"tool","tool_call_id":"c1","content":"done"},` +
		`{"role":"user","name":"alice","content":` + jsonString(marked) + `}],"max_tokens":8,"temperature":0}`
	r := fe.request(t, proxy.RouteChat, body, "t")
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
	fe := newFuserEnv(t, func(c *proxy.Config) { c.Fusion.Separator = " # # " })
	text := "Once upon a time # # " + storyA + " # # " + storyB + " # # The end"
	body := `{"prompt":` + jsonString(text) + `,"max_tokens":4,"temperature":0}`
	pa, err := fe.f.Fuse(context.Background(), fe.request(t, proxy.RouteCompletions, body, "tenant-a"))
	if err != nil {
		t.Fatal(err)
	}
	nsA := leaseNamespace(t, pa)
	pa.Lease.Release()
	attack, err := applyPlan([]byte(pa.Body), &proxy.Plan{Lease: adapters.KVParamsLease{Namespace: nsA}})
	if err != nil {
		t.Fatal(err)
	}
	if _, n, cached := fe.engineAnswer(t, "/v1/completions", attack); cached != n-1 {
		t.Fatalf("straight to the engine, A's namespace loads %d of %d tokens; the attack payload is not live", cached, n)
	}
	// The attacker's body: the stripped prompt (what A's KV is for) and A's
	// namespace, on every path that forwards the client's body.
	for name, fu := range map[string]proxy.Fuser{
		"passthrough": nil,
		"skip":        proxy.FuserFunc(func(context.Context, *proxy.Request) (*proxy.Plan, error) { return nil, proxy.Skip("no_chunks") }),
		"fallback":    proxy.FuserFunc(func(context.Context, *proxy.Request) (*proxy.Plan, error) { return nil, errors.New("store down") }),
	} {
		var opts []proxy.Option
		if fu != nil {
			opts = append(opts, proxy.WithFuser(fu))
		}
		cfg := upstreamConfig(fe.engine)
		cfg.Tenant.Header = proxy.HeaderTenant // B is a tenant of its own, as a gateway would name it
		_, base := proxytest.Start(t, cfg, opts...)
		code, resp := post(t, base+"/v1/completions", string(attack), proxy.HeaderTenant, "tenant-b")
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

// TestKnownChunksPerTenant: the chunks the fusion path meets in one
// tenant's requests are recognised in that tenant's later unmarked prompts
// only. Shared, another tenant's unmarked prompt would be segmented (and,
// once warmed under its own keys, fused: cached tokens in its usage) exactly
// when some other tenant had sent the chunk: a membership oracle.
func TestKnownChunksPerTenant(t *testing.T) {
	fe := newFuserEnv(t, nil)
	partsBody := storiesBody(`"max_tokens":2`)
	if _, err := fe.f.Fuse(context.Background(), fe.request(t, proxy.RouteChat, partsBody, "tenant-a")); err != nil {
		t.Fatal(err)
	}
	prompt := "You tell stories.\n\nDocument: A\n" + storyA + "\n\nDocument: B\n" + storyB + "\n\nThe end"
	body := `{"prompt":` + jsonString(prompt) + `,"max_tokens":2}`
	sgA, err := fe.f.segment(fe.request(t, proxy.RouteCompletions, body, "tenant-a"))
	if err != nil {
		t.Fatalf("tenant A's own chunks not found in its unmarked prompt: %v", err)
	}
	// B's prompt may be cut into passages (convention d, from its own text
	// alone), never by A's chunks.
	if sg, err := fe.f.segment(fe.request(t, proxy.RouteCompletions, body, "tenant-b")); err == nil && strings.Contains(sg.how, "index") {
		t.Errorf("tenant B's unmarked prompt segmented by %q with tenant A's chunks: %+v", sg.how, sg.seg)
	}
	// Chunks indexed explicitly (Index: ingest, documents) are known to all.
	c := sgA.seg.Chunks[0]
	if !fe.f.Index().Add(sgA.ids[c.Begin:c.End]) {
		t.Fatal("Index().Add refused the chunk")
	}
	if sg, err := fe.f.segment(fe.request(t, proxy.RouteCompletions, body, "tenant-b")); err != nil || !strings.Contains(sg.how, "index") {
		t.Errorf("an explicitly indexed chunk is not found for tenant B: %v", err)
	}
}
