package tokenizer

import (
	"fmt"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestConcurrentUse encodes, decodes and renders from several goroutines at
// once (run with -race): the word caches and the template are shared.
func TestConcurrentUse(t *testing.T) {
	var toks []Tokenizer
	toks = append(toks, loadStories(t))
	// The regexp2 path (a pattern without a hand-written scanner).
	synth, err := ParseHF([]byte(`{"pre_tokenizer": {"type": "Split", "pattern": {"Regex": "\\s+(?!\\S)|\\S+"}, "behavior": "Isolated"},
	  "model": {"type": "BPE", "unk_token": "u", "vocab": {"u": 0, "a": 1, "b": 2, "ab": 3, " ": 4}, "merges": ["a b"]}}`), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	toks = append(toks, synth)
	ct := DefaultChatTemplate()
	jt, err := NewChatTemplate("{% for m in messages %}{{ m.role }}: {{ m.content | trim }}\n{% endfor %}", "", "")
	if err != nil {
		t.Fatal(err)
	}
	for _, tok := range toks {
		texts := make([]string, 50)
		want := make([][]int32, len(texts))
		for i := range texts {
			texts[i] = fmt.Sprintf("ab ab  ba word%d once upon a time %d", i%7, i)
			want[i] = tok.Encode(texts[i])
		}
		var wg sync.WaitGroup
		for g := 0; g < 4; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i, s := range texts {
					if diff := cmp.Diff(want[i], tok.Encode(s)); diff != "" {
						t.Errorf("concurrent Encode(%q) (-want +got):\n%s", s, diff)
					}
					_ = tok.Decode(want[i])
					msgs := []Message{{Role: "user", Content: Text(s)}}
					if _, err := ct.Render(msgs, true); err != nil {
						t.Error(err)
					}
					if _, err := jt.RenderSpans(msgs, true); err != nil {
						t.Error(err)
					}
				}
			}()
		}
		wg.Wait()
	}
}
