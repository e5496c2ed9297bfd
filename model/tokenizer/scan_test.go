package tokenizer

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

var scanSeeds = []string{
	"Hello world", "I'll DON'T 'S 're 'Ve 'lL x'd", "  \n\n  x  y\t\tz  ", "1234567 12 3.14",
	"日本語 🎉🎉 👨‍👩‍👧‍👦", "a\r\n\r\nb", "!!! ?? ...\n\n", " ' 'x '", "\u00a0\u3000x\u2028y\x85z",
	"\xff\xfe bad \xc3", "e\u0301", "x  ", "   ", "\n", "'", "'s", "Ⅻ½²", "ǅungla",
}

func TestScannerMatchesRegex(t *testing.T) {
	for _, expr := range []string{llama3Pattern, qwen2Pattern, gpt2Pattern} {
		re, err := newRegexPattern(expr)
		if err != nil {
			t.Fatal(err)
		}
		fast := knownPatterns[expr]
		for _, s := range scanSeeds {
			if diff := cmp.Diff(re.find(s), fast.find(s)); diff != "" {
				t.Errorf("%q: scanner differs from regexp2 (-regexp2 +scanner):\n%s", s, diff)
			}
		}
	}
}

func FuzzScannerMatchesRegex(f *testing.F) {
	for _, s := range scanSeeds {
		f.Add(s)
	}
	re3, err := newRegexPattern(llama3Pattern)
	if err != nil {
		f.Fatal(err)
	}
	re1, err := newRegexPattern(qwen2Pattern)
	if err != nil {
		f.Fatal(err)
	}
	re2, err := newRegexPattern(gpt2Pattern)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if diff := cmp.Diff(re2.find(s), knownPatterns[gpt2Pattern].find(s)); diff != "" {
			t.Fatalf("gpt2 %q (-regexp2 +scanner):\n%s", s, diff)
		}
		if diff := cmp.Diff(re3.find(s), knownPatterns[llama3Pattern].find(s)); diff != "" {
			t.Fatalf("llama3 %q (-regexp2 +scanner):\n%s", s, diff)
		}
		if diff := cmp.Diff(re1.find(s), knownPatterns[qwen2Pattern].find(s)); diff != "" {
			t.Fatalf("qwen2 %q (-regexp2 +scanner):\n%s", s, diff)
		}
	})
}
