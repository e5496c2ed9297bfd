package engine

import (
	"strings"
	"testing"
)

// TestHugeMaxTokens: max_tokens near the int range must not overflow the
// context check (len(prompt)+max_tokens wrapping negative would admit it);
// it is refused with a 400 naming max_tokens.
func TestHugeMaxTokens(t *testing.T) {
	_, url := startFake(t, &fakeLM{maxPos: 64}, Config{})
	for _, mt := range []string{"9223372036854775807", "9223372036854775806", "4294967296"} {
		code, body := post(t, url+"/v1/completions", `{"prompt":"abc","max_tokens":`+mt+`}`)
		if code != 400 || !strings.Contains(string(body), `"param":"max_tokens"`) && !strings.Contains(string(body), "context_length_exceeded") {
			t.Errorf("max_tokens %s: status %d %s; want 400", mt, code, body)
		}
	}
}
