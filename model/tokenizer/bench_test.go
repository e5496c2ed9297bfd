package tokenizer

import (
	"encoding/json"
	"os"
	"strings"
	"testing"

	"github.com/fusionrag/fusionrag/internal/shareddata"
)

// benchText is ~200 KB of real RAG passages (MuSiQue, Wikipedia text).
func benchText(b *testing.B) string {
	b.Helper()
	raw, err := os.ReadFile(shareddata.Path(b, "rag/cacheblend_musique_s.json"))
	if err != nil {
		b.Fatal(err)
	}
	var qs []struct {
		Ctxs []struct{ Title, Text string } `json:"ctxs"`
	}
	if err := json.Unmarshal(raw, &qs); err != nil {
		b.Fatal(err)
	}
	var sb strings.Builder
	for _, q := range qs {
		for _, c := range q.Ctxs {
			sb.WriteString(c.Title + "\n" + c.Text + "\n\n")
		}
		if sb.Len() > 200_000 {
			break
		}
	}
	return sb.String()
}

// BenchmarkEncode reports MB/s of Encode on real passages, with the
// pre-token cache warm ("cached") and with every pre-token missing it
// ("uncached", the cache emptied before each call) to show what it buys.
func BenchmarkEncode(b *testing.B) {
	text := benchText(b)
	for _, name := range []string{"llama3", "qwen3", "llama2"} {
		tok := loadHFTest(b, name)
		b.Run(name+"/cached", func(b *testing.B) {
			tok.Encode(text)
			b.SetBytes(int64(len(text)))
			for b.Loop() {
				tok.Encode(text)
			}
		})
		b.Run(name+"/uncached", func(b *testing.B) {
			b.SetBytes(int64(len(text)))
			for b.Loop() {
				tok.model.cache.reset()
				tok.Encode(text)
			}
		})
	}
	b.Run("llama2c/cached", func(b *testing.B) {
		tok := loadStories(b)
		b.SetBytes(int64(len(text)))
		for b.Loop() {
			tok.Encode(text)
		}
	})
}
