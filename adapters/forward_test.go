package adapters

import (
	"encoding/json"
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
