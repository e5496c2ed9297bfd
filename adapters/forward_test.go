package adapters

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
)

// TestWithKVParamsReplacesEverySpelling: the engine's JSON decoder
// (encoding/json) reads kv_transfer_params case-insensitively, Unicode
// simple folding included, and the last member wins; a client's member in
// any such spelling must be gone, or it could come after ours and point the
// engine at another namespace.
func TestWithKVParamsReplacesEverySpelling(t *testing.T) {
	for _, in := range []string{
		`{"prompt":"p","kv_transfer_params":{"namespace":"ff"}}`,
		`{"prompt":"p","KV_TRANSFER_PARAMS":{"namespace":"ff"}}`,
		`{"prompt":"p","\u212av_transfer_params":{"namespace":"ff"}}`,
	} {
		out, err := WithKVParams([]byte(in), "ab12")
		if err != nil {
			t.Fatal(err)
		}
		var got struct {
			KV struct {
				Namespace string `json:"namespace"`
			} `json:"kv_transfer_params"`
			Prompt string `json:"prompt"`
		}
		if err := json.Unmarshal(out, &got); err != nil || got.KV.Namespace != "ab12" || got.Prompt != "p" {
			t.Errorf("WithKVParams(%s) = %s: the engine reads namespace %q", in, out, got.KV.Namespace)
		}
		var members map[string]json.RawMessage
		_ = json.Unmarshal(out, &members)
		if len(members) != 2 {
			t.Errorf("WithKVParams(%s) = %s: want prompt and one kv_transfer_params", in, out)
		}
	}
}

// TestSetMember: the member is appended last, every other byte as sent
// (whitespace, key order, duplicates of other keys, nested members of the
// same name), and every top-level spelling of it is removed first.
func TestSetMember(t *testing.T) {
	for _, tt := range []struct{ in, want string }{
		{`{}`, `{"id_slot":3}`},
		{` { } `, ` {"id_slot":3 } `},
		{`{"prompt":"p"}`, `{"prompt":"p","id_slot":3}`},
		{`{ "prompt" : "p" , "n":1 }`, `{ "prompt" : "p" , "n":1,"id_slot":3 }`},
		{`{"id_slot":1}`, `{"id_slot":3}`},
		{`{"id_slot":1,"prompt":"p"}`, `{"prompt":"p","id_slot":3}`},
		{`{"prompt":"p", "ID_SLOT": 1, "x": {"id_slot": 2}}`, `{"prompt":"p", "x": {"id_slot": 2},"id_slot":3}`},
		{`{"a":1,"a":2,"id_slot":0,"id_slot":1}`, `{"a":1,"a":2,"id_slot":3}`},
		{"{\"m\":[1,{\"k\":\"}\"}]\n}", "{\"m\":[1,{\"k\":\"}\"}],\"id_slot\":3\n}"},
	} {
		got, err := SetMember([]byte(tt.in), "id_slot", 3)
		if err != nil || string(got) != tt.want {
			t.Errorf("SetMember(%s) = %s, %v; want %s", tt.in, got, err, tt.want)
		}
	}
	for _, in := range []string{``, `[]`, `"x"`, `{"a":}`, `{"a":1`} {
		if got, err := SetMember([]byte(in), "id_slot", 3); err == nil {
			t.Errorf("SetMember(%q) = %s, want an error", in, got)
		}
	}
}

// FuzzSetMember: for any JSON object, the result is a JSON object whose
// top-level members are the input's minus every spelling of the key, in the
// same order with the same values, plus the key last with the given value.
func FuzzSetMember(f *testing.F) {
	for _, s := range []string{`{}`, `{"prompt":"p","kv_transfer_params":{"namespace":"ff"}}`,
		`{"\u212av_transfer_params":1, "a" : [1,2,{"b":"}"}] }`, `{"a":1,"a":2}`, ` {"x":"\"}"} `} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		var obj map[string]json.RawMessage
		if json.Unmarshal(in, &obj) != nil || obj == nil {
			if _, err := SetMember(in, "kv_transfer_params", 1); err == nil && !json.Valid(in) {
				t.Fatalf("SetMember(%q) accepted invalid JSON", in)
			}
			return
		}
		out, err := SetMember(in, "kv_transfer_params", map[string]string{"namespace": "ab"})
		if err != nil {
			t.Fatalf("SetMember(%q): %v", in, err)
		}
		want, err := objectMembers(in)
		if err != nil {
			t.Fatalf("objectMembers(%q): %v", in, err)
		}
		got, err := objectMembers(out)
		if err != nil || !json.Valid(out) {
			t.Fatalf("SetMember(%q) = %q: not a JSON object (%v)", in, out, err)
		}
		var kept []string
		for _, m := range want.list {
			if !strings.EqualFold(m.key, "kv_transfer_params") {
				kept = append(kept, string(in[m.start:m.end]))
			}
		}
		if len(got.list) != len(kept)+1 {
			t.Fatalf("SetMember(%q) = %q: %d members, want %d", in, out, len(got.list), len(kept)+1)
		}
		for i, k := range kept {
			g := string(out[got.list[i].start:got.list[i].end])
			if g != k {
				t.Fatalf("SetMember(%q) = %q: member %d is %q, want %q", in, out, i, g, k)
			}
		}
		last := got.list[len(got.list)-1]
		if string(out[last.start:last.end]) != `"kv_transfer_params":{"namespace":"ab"}` {
			t.Fatalf("SetMember(%q) = %q: last member %q", in, out, out[last.start:last.end])
		}
	})
}

type reasonErr struct{ r string }

func (e reasonErr) Error() string  { return "failed: " + e.r }
func (e reasonErr) Reason() string { return e.r }

func TestReasonOf(t *testing.T) {
	for _, tt := range []struct {
		err  error
		want string
	}{
		{nil, ""},
		{errors.New("x"), ""},
		{reasonErr{"restore_refused"}, "restore_refused"},
		{fmt.Errorf("llamacpp: %w", reasonErr{"slot_write"}), "slot_write"},
		{fmt.Errorf("%w: %w", ErrMismatch, reasonErr{"handshake_stale"}), "handshake_stale"},
	} {
		if got := ReasonOf(tt.err); got != tt.want {
			t.Errorf("ReasonOf(%v) = %q, want %q", tt.err, got, tt.want)
		}
	}
}

// TestKVParamsLease: the lease of kv_transfer_params engines rewrites
// without touching its input, and Release holds nothing.
func TestKVParamsLease(t *testing.T) {
	in := []byte(`{"prompt":"p", "stream":true}`)
	l := KVParamsLease{Namespace: "ab12"}
	got, err := l.Rewrite(in)
	if want := `{"prompt":"p", "stream":true,"kv_transfer_params":{"namespace":"ab12"}}`; err != nil || string(got) != want {
		t.Errorf("Rewrite = %s, %v; want %s", got, err, want)
	}
	if string(in) != `{"prompt":"p", "stream":true}` {
		t.Errorf("Rewrite modified its input: %s", in)
	}
	l.Release()
	var _ Lease = l
}
