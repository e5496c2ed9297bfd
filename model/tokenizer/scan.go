package tokenizer

import (
	"unicode"
	"unicode/utf8"
)

// The pre-tokenizer regexes of Llama-3 and Qwen2 ("GPT-4 style") spend most
// of the encoding time in a backtracking engine. gpt4Scanner is a
// hand-written matcher for exactly these patterns; FuzzScannerMatchesRegex
// proves it finds the same matches as regexp2 running the pattern.
const (
	llama3Pattern = `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
	qwen2Pattern  = `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
)

func init() {
	knownPatterns[llama3Pattern] = gpt4Scanner{maxDigits: 3}
	knownPatterns[qwen2Pattern] = gpt4Scanner{maxDigits: 1}
}

// gpt4Scanner matches, at each position, the first alternative of
//
//	(?i:'s|'t|'re|'ve|'m|'ll|'d) | [^\r\n\p{L}\p{N}]?\p{L}+ | \p{N}{1,maxDigits} |
//	 ?[^\s\p{L}\p{N}]+[\r\n]* | \s*[\r\n]+ | \s+(?!\S) | \s+
//
// with \s = unicode.IsSpace (Unicode White_Space, as regexp2's
// [\f\n\r\t\v\x85\p{Z}] and Oniguruma's \s), \p{L} = unicode.IsLetter,
// \p{N} = unicode.IsNumber. Invalid UTF-8 bytes are U+FFFD, one per byte,
// as in regexPattern.
type gpt4Scanner struct{ maxDigits int }

// scanRune decodes the rune at s[i:], (0, 0) at the end.
func scanRune(s string, i int) (rune, int) {
	if i >= len(s) {
		return 0, 0
	}
	if c := s[i]; c < utf8.RuneSelf {
		return rune(c), 1
	}
	return utf8.DecodeRuneInString(s[i:])
}

func isL(r rune) bool {
	if r < utf8.RuneSelf {
		return (r|0x20) >= 'a' && (r|0x20) <= 'z'
	}
	return unicode.IsLetter(r)
}

func isN(r rune) bool {
	if r < utf8.RuneSelf {
		return r >= '0' && r <= '9'
	}
	return unicode.IsNumber(r)
}

func isS(r rune) bool {
	if r < utf8.RuneSelf {
		return r == ' ' || (r >= '\t' && r <= '\r')
	}
	return unicode.IsSpace(r)
}

func isCRLF(r rune) bool { return r == '\r' || r == '\n' }

// isPunct is [^\s\p{L}\p{N}].
func isPunct(r rune) bool { return !isS(r) && !isL(r) && !isN(r) }

func (g gpt4Scanner) find(s string) [][2]int {
	if s == "" {
		return nil
	}
	out := make([][2]int, 0, len(s)/4+1)
	for i := 0; i < len(s); {
		e := g.matchAt(s, i)
		out = append(out, [2]int{i, e})
		i = e
	}
	return out
}

// matchAt returns the end of the match at i (every character starts one).
func (g gpt4Scanner) matchAt(s string, i int) int {
	r0, n0 := scanRune(s, i)
	// 'contractions, ASCII case-insensitive.
	if r0 == '\'' {
		r1, n1 := scanRune(s, i+1)
		switch r1 | 0x20 {
		case 's', 't', 'm', 'd':
			if n1 > 0 && r1 < utf8.RuneSelf {
				return i + 2
			}
		case 'r', 'v', 'l':
			r2, n2 := scanRune(s, i+1+n1)
			want := rune('e')
			if r1|0x20 == 'l' {
				want = 'l'
			}
			if n2 > 0 && r1 < utf8.RuneSelf && r2 < utf8.RuneSelf && r2|0x20 == want {
				return i + 3
			}
		}
	}
	// [^\r\n\p{L}\p{N}]?\p{L}+
	if isL(r0) {
		return letters(s, i)
	}
	if !isCRLF(r0) && !isN(r0) {
		if r1, _ := scanRune(s, i+n0); isL(r1) {
			return letters(s, i+n0)
		}
	}
	// \p{N}{1,maxDigits}
	if isN(r0) {
		j := i
		for k := 0; k < g.maxDigits; k++ {
			r, n := scanRune(s, j)
			if n == 0 || !isN(r) {
				break
			}
			j += n
		}
		return j
	}
	//  ?[^\s\p{L}\p{N}]+[\r\n]*
	j := i
	if r0 == ' ' {
		j++
	}
	if r, _ := scanRune(s, j); j < len(s) && isPunct(r) {
		for {
			r, n := scanRune(s, j)
			if n == 0 || !isPunct(r) {
				break
			}
			j += n
		}
		for j < len(s) && (s[j] == '\r' || s[j] == '\n') {
			j++
		}
		return j
	}
	// r0 is white space here. \s*[\r\n]+ : up to the last CR/LF of the run.
	end, lastCRLF, lastStart := i, -1, i
	for {
		r, n := scanRune(s, end)
		if n == 0 || !isS(r) {
			break
		}
		if isCRLF(r) {
			lastCRLF = end + n
		}
		lastStart = end
		end += n
	}
	if lastCRLF >= 0 {
		return lastCRLF
	}
	// \s+(?!\S) | \s+ : the run, less its last character when a
	// non-space follows and the run has more than one character.
	if end < len(s) && lastStart > i {
		return lastStart
	}
	return end
}

// letters returns the end of the run of letters starting at i.
func letters(s string, i int) int {
	for {
		r, n := scanRune(s, i)
		if n == 0 || !isL(r) {
			return i
		}
		i += n
	}
}

func init() { knownPatterns[gpt2Pattern] = gpt2Scanner{} }

// gpt2Scanner matches, at each position, the first alternative of GPT-2's
// ByteLevel split regex (gpt2Pattern):
//
//	's|'t|'re|'ve|'m|'ll|'d | ?\p{L}+ | ?\p{N}+ | ?[^\s\p{L}\p{N}]+ | \s+(?!\S) | \s+
//
// with the same character classes as gpt4Scanner.
type gpt2Scanner struct{}

func (gpt2Scanner) find(s string) [][2]int {
	if s == "" {
		return nil
	}
	out := make([][2]int, 0, len(s)/4+1)
	for i := 0; i < len(s); {
		e := gpt2MatchAt(s, i)
		out = append(out, [2]int{i, e})
		i = e
	}
	return out
}

func gpt2MatchAt(s string, i int) int {
	if s[i] == '\'' && i+1 < len(s) {
		switch s[i+1] {
		case 's', 't', 'm', 'd':
			return i + 2
		case 'r', 'v':
			if i+2 < len(s) && s[i+2] == 'e' {
				return i + 3
			}
		case 'l':
			if i+2 < len(s) && s[i+2] == 'l' {
				return i + 3
			}
		}
	}
	r0, n0 := scanRune(s, i)
	j := i
	r := r0
	if r0 == ' ' {
		r, _ = scanRune(s, i+1)
		if i+1 < len(s) {
			j = i + 1
		}
	}
	if j < len(s) && (j > i || r0 != ' ') {
		var class func(rune) bool
		switch {
		case isL(r):
			class = isL
		case isN(r):
			class = isN
		case isPunct(r):
			class = isPunct
		}
		if class != nil {
			for {
				r, n := scanRune(s, j)
				if n == 0 || !class(r) {
					return j
				}
				j += n
			}
		}
	}
	// r0 is white space: \s+(?!\S) | \s+
	end, lastStart := i, i
	for {
		r, n := scanRune(s, end)
		if n == 0 || !isS(r) {
			break
		}
		lastStart = end
		end += n
	}
	if end == i {
		return i + n0 // unreachable: every character is L, N, punctuation or space
	}
	if end < len(s) && lastStart > i {
		return lastStart
	}
	return end
}
