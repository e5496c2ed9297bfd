package proxy

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/fusionrag/fusionrag/adapters"
	"github.com/fusionrag/fusionrag/internal/jsonobj"
	"github.com/fusionrag/fusionrag/model/tokenizer"
	"github.com/fusionrag/fusionrag/prompt"
)

// TestParseRequest: which bodies are eligible, not eligible, refused or
// malformed, and, for an eligible one, Parsed: the engine's parse of the
// forwarded body (nil where the engine's parser refuses it).
func TestParseRequest(t *testing.T) {
	tests := []struct {
		name     string
		route    Route
		body     string
		parsed   *prompt.Prompt // Parsed.Prompt of an eligible body; nil: Parsed is nil
		override Override
		err      error
	}{
		{
			name: "chat parts", route: RouteChat,
			body: `{"model":"llama","stream":true,"messages":[{"role":"system","content":"You answer."},` +
				`{"role":"user","content":[{"type":"text","text":"doc one"},{"type":"text","text":"question?"}]}]}`,
			parsed: &prompt.Prompt{Messages: []tokenizer.Message{
				{Role: "system", Content: tokenizer.Text("You answer.")},
				{Role: "user", Content: tokenizer.TextParts("doc one", "question?")},
			}},
		},
		{
			// Eligible: other engines read image parts; this engine's
			// parser refuses them, so the fuser skips (engine_rejects).
			name: "chat image part: eligible, the engine refuses it", route: RouteChat,
			body: `{"model":"llama","messages":[{"role":"user","content":[{"type":"text","text":"doc one"},{"type":"image_url","image_url":{"url":"x"}}]}]}`,
		},
		{
			name: "chat extra members ignored", route: RouteChat,
			body: `{"model":"m","messages":[{"role":"assistant","content":null,"tool_calls":[{"id":"1"}]},{"role":"user","content":"q","name":"bob"}]}`,
			parsed: &prompt.Prompt{Messages: []tokenizer.Message{
				{Role: "assistant", Content: tokenizer.Content{IsString: true}},
				{Role: "user", Content: tokenizer.Text("q")},
			}},
		},
		{
			name: "escaped role and part type read as decoded", route: RouteChat,
			body: `{"messages":[{"role":"assist\u0061nt","content":null},{"role":"user","content":[{"type":"te\u0078t","text":"q"}]}]}`,
			parsed: &prompt.Prompt{Messages: []tokenizer.Message{
				{Role: "assistant", Content: tokenizer.Content{IsString: true}},
				{Role: "user", Content: tokenizer.TextParts("q")},
			}},
		},
		{
			name: "keys are case-sensitive like the engine's parser", route: RouteChat,
			body: `{"Messages":[{"role":"user","content":"q"}]}`,
			err:  ErrNotEligible,
		},
		{
			name: "duplicate keys: the last wins", route: RouteCompletions,
			body:   `{"model":"a","prompt":"first","model":"b","prompt":"second"}`,
			parsed: &prompt.Prompt{Text: "second"},
		},
		{
			name: "completion tokens", route: RouteCompletions,
			body:   `{"model":"m","prompt":[1, 15, 300]}`,
			parsed: &prompt.Prompt{Tokens: []int32{1, 15, 300}, IsTokens: true},
		},
		{
			name: "override in body", route: RouteCompletions,
			body:     `{"fusionrag":{"strategy":"reuse","ratio":0},"model":"m","prompt":"p"}`,
			parsed:   &prompt.Prompt{Text: "p"},
			override: Override{Strategy: "reuse", HasRatio: true},
		},
		{name: "n is 1 as a float reads it (the engine wants an integer)", route: RouteCompletions, body: `{"n":1.0,"prompt":"p"}`},
		{name: "n is 1", route: RouteCompletions, body: `{"n":1,"prompt":"p"}`, parsed: &prompt.Prompt{Text: "p"}},
		{name: "null stream is the default", route: RouteCompletions, body: `{"stream":null,"prompt":"p"}`, parsed: &prompt.Prompt{Text: "p"}},
		{name: "empty token prompt: eligible, the engine refuses it", route: RouteCompletions, body: `{"prompt":[]}`},
		{name: "temperature out of the engine's range", route: RouteCompletions, body: `{"prompt":"p","temperature":9}`},
		{name: "batched prompt", route: RouteCompletions, body: `{"prompt":["a","b"]}`, err: ErrNotEligible},
		{name: "one-prompt batch", route: RouteCompletions, body: `{"prompt":["a"]}`, err: ErrNotEligible},
		{name: "token batch", route: RouteCompletions, body: `{"prompt":[[1],[2]]}`, err: ErrNotEligible},
		{name: "negative token", route: RouteCompletions, body: `{"prompt":[1,-2]}`, err: ErrNotEligible},
		{name: "token over int32", route: RouteCompletions, body: `{"prompt":[2147483648]}`, err: ErrNotEligible},
		{name: "null token", route: RouteCompletions, body: `{"prompt":[1,null]}`, err: ErrNotEligible},
		{name: "null prompt", route: RouteCompletions, body: `{"prompt":null}`, err: ErrNotEligible},
		{name: "n > 1", route: RouteChat, body: `{"n":2,"messages":[{"role":"user","content":"q"}]}`, err: ErrNotEligible},
		{name: "null n", route: RouteChat, body: `{"n":null,"messages":[{"role":"user","content":"q"}]}`, err: ErrNotEligible},
		{name: "model not a string", route: RouteChat, body: `{"model":5,"messages":[{"role":"user","content":"q"}]}`, err: ErrNotEligible},
		{name: "stream not a boolean", route: RouteChat, body: `{"stream":"yes","messages":[{"role":"user","content":"q"}]}`, err: ErrNotEligible},
		{name: "no messages", route: RouteChat, body: `{"model":"m","messages":[]}`, err: ErrNotEligible},
		{name: "null messages", route: RouteChat, body: `{"model":"m","messages":null}`, err: ErrNotEligible},
		{name: "message not an object", route: RouteChat, body: `{"messages":["q"]}`, err: ErrNotEligible},
		{name: "role not a string", route: RouteChat, body: `{"messages":[{"role":1,"content":"q"}]}`, err: ErrNotEligible},
		{name: "content not text", route: RouteChat, body: `{"messages":[{"role":"user","content":5}]}`, err: ErrNotEligible},
		{name: "text part without text", route: RouteChat, body: `{"messages":[{"role":"user","content":[{"type":"text"}]}]}`, err: ErrNotEligible},
		{name: "part type not a string", route: RouteChat, body: `{"messages":[{"role":"user","content":[{"type":1}]}]}`, err: ErrNotEligible},
		{name: "null model", route: RouteChat, body: `{"model":null,"messages":[{"role":"user","content":"q"}]}`, err: &InvalidRequestError{}},
		{name: "null user content", route: RouteChat, body: `{"messages":[{"role":"user","content":null}]}`, err: &InvalidRequestError{}},
		{name: "bad override", route: RouteChat, body: `{"fusionrag":{"ratio":2},"messages":[{"role":"user","content":"q"}]}`, err: &OverrideError{}},
		{name: "not json", route: RouteChat, body: `{"messages":`, err: ErrMalformed},
		{name: "array", route: RouteChat, body: `[]`, err: ErrMalformed},
		{name: "empty", route: RouteChat, body: ``, err: ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseRequest(tt.route, []byte(tt.body))
			switch want := tt.err.(type) {
			case *InvalidRequestError:
				if !errors.As(err, &want) {
					t.Fatalf("err = %v, want an *InvalidRequestError", err)
				}
				return
			case *OverrideError:
				if !errors.As(err, &want) {
					t.Fatalf("err = %v, want an *OverrideError", err)
				}
				return
			}
			if !errors.Is(err, tt.err) {
				t.Fatalf("err = %v, want %v", err, tt.err)
			}
			if err != nil {
				if got != nil && got.Parsed != nil {
					t.Errorf("Parsed is set for a body that is not eligible")
				}
				return
			}
			if got.Override != tt.override {
				t.Errorf("Override = %+v, want %+v", got.Override, tt.override)
			}
			if tt.parsed == nil {
				if got.Parsed != nil {
					t.Errorf("Parsed = %+v, want nil (the engine's parser refuses the body)", got.Parsed.Prompt)
				}
				return
			}
			if got.Parsed == nil {
				t.Fatal("Parsed is nil, want the engine's parse")
			}
			if d := cmp.Diff(*tt.parsed, got.Parsed.Prompt); d != "" {
				t.Errorf("Parsed.Prompt (-want +got):\n%s", d)
			}
		})
	}
}

// TestParseRequestDecodesOnce: an eligible body is decoded once, by
// prompt.ParseRequest; the proxy's own checks decode none of it (issue 17:
// before, proxy decoded the messages or the prompt itself, then the fuser
// parsed the body again).
func TestParseRequestDecodesOnce(t *testing.T) {
	for _, tt := range []struct {
		route Route
		body  string
	}{
		{RouteChat, chatBody},
		{RouteChat, `{"model":"m","messages":[{"role":"assistant","content":null},{"role":"user","content":"` + strings.Repeat("text ", 1000) + `"}]}`},
		{RouteCompletions, `{"model":"m","prompt":[1,2,3],"n":1,"stream":false}`},
		{RouteCompletions, `{"model":"m","prompt":"p","kv_transfer_params":{"namespace":"ab"}}`},
	} {
		p0, d0 := prompt.Counts(), Decodes()
		r, err := ParseRequest(tt.route, []byte(tt.body))
		if err != nil || r.Parsed == nil {
			t.Fatalf("%s: err %v, Parsed %v", tt.body, err, r.Parsed)
		}
		if got := prompt.Counts().Sub(p0); got != (prompt.Count{Parses: 1}) {
			t.Errorf("%.40s...: prompt %+v, want one parse", tt.body, got)
		}
		if got := Decodes() - d0; got != 0 {
			t.Errorf("%.40s...: the proxy decoded %d values itself, want 0", tt.body, got)
		}
	}
	// Not eligible: not decoded at all.
	p0 := prompt.Counts()
	if _, err := ParseRequest(RouteCompletions, []byte(`{"prompt":["a","b"]}`)); !errors.Is(err, ErrNotEligible) {
		t.Fatal(err)
	}
	if got := prompt.Counts().Sub(p0); got != (prompt.Count{}) {
		t.Errorf("a batched prompt: prompt %+v, want no parse", got)
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
// every other top-level member byte for byte, in order. Parsed is set only
// for an eligible body, exactly when the engine's parser accepts the
// forwarded body.
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
		`{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"x"}}]},{"role":"assistant","content":null}]}`,
		`{"prompt":[1,"2",-3],"n":1.0,"stream":null}`,
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
		if err != nil && r.Parsed != nil {
			t.Fatalf("Parsed set alongside %v", err)
		}
		if err == nil {
			_, perr := prompt.ParseRequest(r.Body, chat)
			if (perr == nil) != (r.Parsed != nil) {
				t.Fatalf("Parsed %v, but the engine's parser says %v", r.Parsed != nil, perr)
			}
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
