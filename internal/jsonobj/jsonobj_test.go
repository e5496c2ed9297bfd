package jsonobj

import (
	"bytes"
	"encoding/json"
	"testing"
)

// FuzzElements: on a valid JSON array, Elements finds the elements
// encoding/json finds, byte for byte; on any other valid value it reports
// ErrNotArray; it never panics.
func FuzzElements(f *testing.F) {
	for _, s := range []string{`[]`, ` [ ] `, `[1, "a,]", {"b":[2]}, null ,[[]]]`, `["\"]"]`, `{"a":1}`, `"x"`, `5`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		b := []byte(s)
		if !json.Valid(b) {
			return
		}
		es, err := Elements(b)
		var want []json.RawMessage
		if json.Unmarshal(b, &want) != nil || bytes.TrimSpace(b)[0] != '[' { // null decodes to a nil slice
			if err == nil {
				t.Fatalf("Elements(%q) = %v, want ErrNotArray", s, es)
			}
			return
		}
		if err != nil || len(es) != len(want) {
			t.Fatalf("Elements(%q) = %v, %v; want %d elements", s, es, err, len(want))
		}
		for i, e := range es {
			if got := b[e[0]:e[1]]; !bytes.Equal(got, want[i]) {
				t.Fatalf("Elements(%q)[%d] = %q, want %q", s, i, got, want[i])
			}
		}
	})
}
