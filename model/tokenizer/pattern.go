package tokenizer

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/dlclark/regexp2"
)

// ErrUnsupported reports a tokenizer.json component this package does not
// implement; loading fails rather than tokenizing differently from the engine.
var ErrUnsupported = errors.New("tokenizer: unsupported component")

// pattern is a tokenizer.json {"String": s} or {"Regex": r}.
type pattern interface {
	// find returns the byte ranges [begin, end) of the non-overlapping
	// matches in s, leftmost first.
	find(s string) [][2]int
}

type stringPattern string

func (p stringPattern) find(s string) [][2]int {
	if p == "" {
		return nil
	}
	var out [][2]int
	for at := 0; ; {
		i := strings.Index(s[at:], string(p))
		if i < 0 {
			return out
		}
		out = append(out, [2]int{at + i, at + i + len(p)})
		at += i + len(p)
	}
}

// regexPattern runs a regular expression with the lookaround that the
// Hugging Face pre-tokenizer patterns use (\s+(?!\S)), which Go's RE2-based
// regexp lacks: github.com/dlclark/regexp2 (a backtracking .NET-style engine).
// Its \s is [\f\n\r\t\v\x85\p{Z}], \p{L}/\p{N} are the Unicode categories.
type regexPattern struct {
	re *regexp2.Regexp
}

func newRegexPattern(expr string) (regexPattern, error) {
	re, err := regexp2.Compile(expr, regexp2.None)
	if err != nil {
		return regexPattern{}, fmt.Errorf("regex %q: %w", expr, err)
	}
	return regexPattern{re}, nil
}

func (p regexPattern) find(s string) [][2]int {
	if s == "" {
		return nil
	}
	// regexp2 works on runes; invalid UTF-8 bytes become U+FFFD, one rune
	// per byte, so rune i still maps to exactly one source range.
	runes := make([]rune, 0, len(s))
	offs := make([]int, 0, len(s)+1) // byte offset of rune i; offs[len(runes)] = len(s)
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		runes = append(runes, r)
		offs = append(offs, i)
		i += size
	}
	offs = append(offs, len(s))
	var out [][2]int
	m, err := p.re.FindRunesMatch(runes)
	for err == nil && m != nil {
		if m.Length > 0 {
			out = append(out, [2]int{offs[m.Index], offs[m.Index+m.Length]})
		}
		m, err = p.re.FindNextMatch(m)
	}
	// err is only a match timeout, which is never set here.
	return out
}

func parsePattern(raw json.RawMessage) (pattern, error) {
	var p struct {
		String *string `json:"String"`
		Regex  *string `json:"Regex"`
	}
	if err := json.Unmarshal(raw, &p); err != nil {
		return nil, fmt.Errorf("pattern: %w", err)
	}
	switch {
	case p.String != nil:
		return stringPattern(*p.String), nil
	case p.Regex != nil:
		if fast, ok := knownPatterns[*p.Regex]; ok {
			return fast, nil
		}
		return newRegexPattern(*p.Regex)
	}
	return nil, fmt.Errorf("%w: pattern %s", ErrUnsupported, raw)
}

// knownPatterns maps regexes with a hand-written equivalent to it (filled by
// scan.go).
var knownPatterns = map[string]pattern{}
