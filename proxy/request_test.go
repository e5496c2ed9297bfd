package proxy

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/fusionrag/fusionrag/adapters"
	"github.com/fusionrag/fusionrag/internal/jsonobj"
)

func TestParseRequest(t *testing.T) {
	tests := []struct {
		name  string
		route Route
		body  string
		want  *Request
		err   error
	}{
		{
			name: "chat parts", route: RouteChat,
			body: `{"model":"llama","stream":true,"messages":[{"role":"system","content":"You answer."},` +
				`{"role":"user","content":[{"type":"text","text":"doc one"},{"type":"image_url","image_url":{"url":"x"}},{"type":"text","text":"question?"}]}]}`,
			want: &Request{Route: RouteChat, Messages: []Message{
				{Role: "system", Content: "You answer."},
				{Role: "user", Parts: []ContentPart{
					{Type: "text", Text: "doc one"}, {Type: "image_url"}, {Type: "text", Text: "question?"}}},
			}},
		},
		{
			name: "chat extra members kept raw", route: RouteChat,
			body: `{"model":"m","messages":[{"role":"assistant","content":null,"tool_calls":[{"id":"1"}]},{"role":"user","content":"q","name":"bob"}]}`,
			want: &Request{Route: RouteChat, Messages: []Message{
				{Role: "assistant", Other: map[string]json.RawMessage{"tool_calls": json.RawMessage(`[{"id":"1"}]`)}},
				{Role: "user", Content: "q", Other: map[string]json.RawMessage{"name": json.RawMessage(`"bob"`)}},
			}},
		},
		{
			name: "keys are case-sensitive like the engine's parser", route: RouteChat,
			body: `{"Messages":[{"role":"user","content":"q"}]}`,
			err:  ErrNotEligible,
		},
		{
			name: "duplicate keys: the last wins", route: RouteCompletions,
			body: `{"model":"a","prompt":"first","model":"b","prompt":"second"}`,
			want: &Request{Route: RouteCompletions, Prompt: Prompt{Text: "second"}},
		},
		{
			name: "completion tokens", route: RouteCompletions,
			body: `{"model":"m","prompt":[1, 15, 300]}`,
			want: &Request{Route: RouteCompletions, Prompt: Prompt{Tokens: []int{1, 15, 300}, IsTokens: true}},
		},
		{
			name: "override in body", route: RouteCompletions,
			body: `{"fusionrag":{"strategy":"reuse","ratio":0},"model":"m","prompt":"p"}`,
			want: &Request{Route: RouteCompletions, Prompt: Prompt{Text: "p"}, Override: Override{Strategy: "reuse", HasRatio: true}},
		},
		{name: "batched prompt", route: RouteCompletions, body: `{"prompt":["a","b"]}`, err: ErrNotEligible},
		{name: "token batch", route: RouteCompletions, body: `{"prompt":[[1],[2]]}`, err: ErrNotEligible},
		{name: "n > 1", route: RouteChat, body: `{"n":2,"messages":[{"role":"user","content":"q"}]}`, err: ErrNotEligible},
		{name: "no messages", route: RouteChat, body: `{"model":"m","messages":[]}`, err: ErrNotEligible},
		{name: "content not text", route: RouteChat, body: `{"messages":[{"role":"user","content":5}]}`, err: ErrNotEligible},
		{name: "text part without text", route: RouteChat, body: `{"messages":[{"role":"user","content":[{"type":"text"}]}]}`, err: ErrNotEligible},
		{name: "not json", route: RouteChat, body: `{"messages":`, err: ErrMalformed},
		{name: "array", route: RouteChat, body: `[]`, err: ErrMalformed},
		{name: "empty", route: RouteChat, body: ``, err: ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseRequest(tt.route, []byte(tt.body))
			if !errors.Is(err, tt.err) {
				t.Fatalf("err = %v, want %v", err, tt.err)
			}
			if tt.want == nil {
				return
			}
			if d := cmp.Diff(tt.want, got, cmpopts.IgnoreFields(Request{}, "Body"), cmpopts.IgnoreFields(ContentPart{}, "Raw")); d != "" {
				t.Errorf("ParseRequest (-want +got):\n%s", d)
			}
		})
	}
}

func TestRemoveMember(t *testing.T) {
	tests := []struct{ in, want string }{
		{`{"fusionrag":1}`, `{}`},
		{` { "fusionrag" : 1 } `, ` {  } `},
		{`{"fusionrag":1,"a":2}`, `{"a":2}`},
		{`{"a":1,"fusionrag":{"x":[1,"}"]},"b":2}`, `{"a":1,"b":2}`},
		{`{"a":1,"fusionrag":2}`, `{"a":1}`},
		{"{\n  \"a\": 1,\n  \"fusionrag\": 2,\n  \"b\": \"fusionrag\"\n}", "{\n  \"a\": 1,\n  \"b\": \"fusionrag\"\n}"},
		{`{"fusionrag":1,"fusionrag":2,"a":3,"fusionrag":4}`, `{"a":3}`},
		{`{"fusion\u0072ag":1,"a":"\"fusionrag\""}`, `{"a":"\"fusionrag\""}`},
		{`{"a":{"fusionrag":1}}`, `{"a":{"fusionrag":1}}`},
		{`{"Fusionrag":1}`, `{"Fusionrag":1}`},
	}
	for _, tt := range tests {
		got, _, err := jsonobj.Remove([]byte(tt.in), "fusionrag")
		if err != nil || string(got) != tt.want {
			t.Errorf("jsonobj.Remove(%s) = %s, %v; want %s", tt.in, got, err, tt.want)
		}
		if !json.Valid(got) {
			t.Errorf("jsonobj.Remove(%s) = %s is not valid JSON", tt.in, got)
		}
	}
}

func TestApplyPlan(t *testing.T) {
	plan := &Plan{Lease: adapters.KVParamsLease{Namespace: "ab12"}}
	tests := []struct{ in, want string }{
		{`{"model":"m"}`, `{"model":"m","kv_transfer_params":{"namespace":"ab12"}}`},
		{`{}`, `{"kv_transfer_params":{"namespace":"ab12"}}`},
		{` { } `, ` {"kv_transfer_params":{"namespace":"ab12"} } `},
		// A client's kv_transfer_params, in any spelling the engine reads, is
		// dropped, never merged: only the sidecar points the engine at KV.
		{`{"kv_transfer_params":{"do_remote_decode":true,"namespace":"ffff"},"model":"m"}`, `{"model":"m","kv_transfer_params":{"namespace":"ab12"}}`},
		{`{"model":"m","kv_transfer_params":null}`, `{"model":"m","kv_transfer_params":{"namespace":"ab12"}}`},
		{`{"model":"m","KV_Transfer_Params":{"namespace":"ffff"}}`, `{"model":"m","kv_transfer_params":{"namespace":"ab12"}}`},
		{`{"kv_transfer_params":"x","model":"m"}`, `{"model":"m","kv_transfer_params":{"namespace":"ab12"}}`},
		// A client's id_slot is dropped too: a slot-pinning lease sets its own.
		{`{"id_slot":2,"model":"m"}`, `{"model":"m","kv_transfer_params":{"namespace":"ab12"}}`},
		{`{"model":"m", "ID_Slot":-1}`, `{"model":"m","kv_transfer_params":{"namespace":"ab12"}}`},
		{`{"model":"m","x":{"id_slot":1}}`, `{"model":"m","x":{"id_slot":1},"kv_transfer_params":{"namespace":"ab12"}}`},
	}
	for _, tt := range tests {
		got, err := applyPlan([]byte(tt.in), plan)
		if err != nil || string(got) != tt.want {
			t.Errorf("applyPlan(%s) = %s, %v; want %s", tt.in, got, err, tt.want)
		}
	}
	if got, err := applyPlan([]byte(`{}`), &Plan{}); err == nil {
		t.Errorf("applyPlan without a lease = %s, want an error", got)
	}
	if got, err := applyPlan([]byte(`[1]`), plan); err == nil {
		t.Errorf("applyPlan of an array = %s, want an error", got)
	}
}

func TestTenantOf(t *testing.T) {
	tests := []struct {
		name, header, auth, source string
		same                       string // another (header, auth) pair, "h|a", that must give the same tenant
		differ                     string // one that must not
	}{
		{"bearer", "", "Bearer sk-abc", "api-key", "|bearer sk-abc", "|Bearer sk-abd"},
		{"raw key", "", "sk-abc", "api-key", "|Bearer sk-abc", "sk-abc|"},
		{"header wins", "acme", "Bearer sk-abc", "header", "acme|Bearer other", "|Bearer sk-abc"},
		{"anonymous", "", "", "anonymous", " | ", "x|"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, src := TenantOf(tt.header, tt.auth)
			if src != tt.source || len(got) != 32 {
				t.Fatalf("TenantOf = %s from %s; want 32 hex digits from %s", got, src, tt.source)
			}
			if strings.Contains(got, "sk-abc") {
				t.Fatal("tenant leaks the API key")
			}
			h, a, _ := strings.Cut(tt.same, "|")
			if s, _ := TenantOf(h, a); s != got {
				t.Errorf("TenantOf(%q, %q) = %s, want %s", h, a, s, got)
			}
			h, a, _ = strings.Cut(tt.differ, "|")
			if s, _ := TenantOf(h, a); s == got {
				t.Errorf("TenantOf(%q, %q) = %s collides", h, a, s)
			}
		})
	}
}

// FuzzParseRequest: parsing never panics; when it does not report
// ErrMalformed, the body it would forward is valid JSON, has no "fusionrag"
// member nor any the engine would read as kv_transfer_params, and keeps
// every other top-level member byte for byte, in order.
func FuzzParseRequest(f *testing.F) {
	for _, s := range []string{
		chatBody,
		`{"model":"m","fusionrag":{"strategy":"epic","ratio":0.3},"prompt":"p"}`,
		`{"fusionrag":1,"fusionrag":2}`,
		`{"prompt":[1,2,3],"n":1}`,
		`{"messages":[{"role":"user","content":[{"type":"text","text":"a # # b"}]}]}`,
		`{"a":"\u0000\"}","fusionrag":{"ratio":1}}`,
		`[1]`, `{`, ``,
		`{"kv_transfer_params":{"namespace":"ab"},"prompt":"p","KV_Transfer_Params":null}`,
		`{"\u212av_transfer_params":{"namespace":"ab"},"fusionrag":{"ratio":1},"prompt":"p"}`,
	} {
		f.Add(s, true)
	}
	f.Fuzz(func(t *testing.T, body string, chat bool) {
		route := RouteCompletions
		if chat {
			route = RouteChat
		}
		r, err := ParseRequest(route, []byte(body))
		if errors.Is(err, ErrMalformed) {
			if r != nil {
				t.Fatal("malformed body with a request")
			}
			return
		}
		if r == nil {
			t.Fatalf("err %v without a request", err)
		}
		if !json.Valid(r.Body) {
			t.Fatalf("forwarded body %q is not valid JSON", r.Body)
		}
		in, err1 := jsonobj.Members([]byte(body))
		out, err2 := jsonobj.Members(r.Body)
		if err1 != nil || err2 != nil {
			t.Fatalf("members: %v, %v", err1, err2)
		}
		var want []string
		for _, m := range in {
			if m.Key != bodyOverride && !isKVParams(m.Key) {
				want = append(want, m.Key+"="+body[m.ValStart:m.ValEnd])
			}
		}
		var got []string
		for _, m := range out {
			got = append(got, m.Key+"="+string(r.Body[m.ValStart:m.ValEnd]))
		}
		if d := cmp.Diff(want, got); d != "" {
			t.Fatalf("members changed (-want +got):\n%s", d)
		}
	})
}

// FuzzApplyPlan: the plan's member lands in a valid object as the only
// member an engine reads as kv_transfer_params, holding exactly the plan's
// parameters.
func FuzzApplyPlan(f *testing.F) {
	f.Add(`{"model":"m"}`, "ns")
	f.Add(`{"kv_transfer_params":{"a":1}}`, "x\"y")
	f.Add(` {} `, "")
	f.Add(`{"KV_TRANSFER_PARAMS":{"namespace":"victim"},"kv_transfer_params":7}`, "ns")
	f.Fuzz(func(t *testing.T, body, ns string) {
		if !json.Valid([]byte(body)) {
			return
		}
		out, err := applyPlan([]byte(body), &Plan{Lease: adapters.KVParamsLease{Namespace: ns}})
		if err != nil {
			return
		}
		var v struct {
			KV struct {
				Namespace string `json:"namespace"`
			} `json:"kv_transfer_params"`
		}
		// json.Marshal turns each invalid UTF-8 byte into U+FFFD.
		var want string
		b, _ := json.Marshal(ns)
		_ = json.Unmarshal(b, &want)
		if !json.Valid(out) || json.Unmarshal(out, &v) != nil || v.KV.Namespace != want {
			t.Fatalf("applyPlan(%q) = %q", body, out)
		}
		ms, _ := jsonobj.Members(out)
		n := 0
		for _, m := range ms {
			if isKVParams(m.Key) {
				n++
				var params map[string]any
				if json.Unmarshal(out[m.ValStart:m.ValEnd], &params) != nil || len(params) != 1 {
					t.Fatalf("applyPlan(%q) = %q: kv_transfer_params is not the plan's", body, out)
				}
			}
		}
		if n != 1 {
			t.Fatalf("applyPlan(%q) = %q: %d kv_transfer_params members", body, out, n)
		}
	})
}
