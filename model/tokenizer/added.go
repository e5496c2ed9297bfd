package tokenizer

import (
	"sort"
	"unicode"
	"unicode/utf8"
)

// addedToken is an entry of tokenizer.json "added_tokens": matched in the
// text before pre-tokenisation, on the raw text (normalized false) or on the
// normalised text (normalized true).
type addedToken struct {
	ID         int32  `json:"id"`
	Content    string `json:"content"`
	SingleWord bool   `json:"single_word"`
	LStrip     bool   `json:"lstrip"`
	RStrip     bool   `json:"rstrip"`
	Normalized bool   `json:"normalized"`
	Special    bool   `json:"special"`
}

// addedMatcher finds added tokens leftmost-longest, like the reference's
// Aho-Corasick automaton in LeftmostLongest mode.
type addedMatcher struct {
	byFirst [256][]int // indices into toks, longest content first
	toks    []addedToken
	pattern []string // content to match (normalised for normalized tokens)
}

func newAddedMatcher(toks []addedToken, pattern []string) *addedMatcher {
	m := &addedMatcher{toks: toks, pattern: pattern}
	for i, p := range pattern {
		if p == "" {
			continue
		}
		m.byFirst[p[0]] = append(m.byFirst[p[0]], i)
	}
	for b := range m.byFirst {
		l := m.byFirst[b]
		sort.SliceStable(l, func(i, j int) bool { return len(pattern[l[i]]) > len(pattern[l[j]]) })
	}
	return m
}

func (m *addedMatcher) empty() bool { return m == nil || len(m.toks) == 0 }

// section is a piece of the input: an added token (id >= 0) or text to
// tokenize (id < 0), covering [begin, end) of the string searched.
type section struct {
	id         int32
	begin, end int
}

// split cuts s into text and added-token sections, applying single_word,
// lstrip and rstrip as the reference does.
func (m *addedMatcher) split(s string) []section {
	var out []section
	startOffset := 0
	for i := 0; i < len(s); {
		k := m.longestAt(s, i)
		if k < 0 {
			i++
			continue
		}
		t := m.toks[k]
		start, stop := i, i+len(m.pattern[k])
		if t.SingleWord {
			startSpace := start == 0 || !endsWithWord(s[:start])
			stopSpace := stop == len(s) || !startsWithWord(s[stop:])
			if !startSpace || !stopSpace {
				i = stop // the reference's matcher resumes after the discarded match
				continue
			}
		}
		if t.LStrip {
			start = max(trailingSpaceStart(s[:start]), startOffset)
		}
		if t.RStrip {
			stop += leadingSpaceLen(s[stop:])
		}
		if startOffset < start {
			out = append(out, section{-1, startOffset, start})
		}
		out = append(out, section{t.ID, start, stop})
		startOffset = stop
		i = max(i+len(m.pattern[k]), stop)
	}
	if startOffset < len(s) {
		out = append(out, section{-1, startOffset, len(s)})
	}
	return out
}

// longestAt returns the longest token whose pattern starts at s[i:], or -1.
func (m *addedMatcher) longestAt(s string, i int) int {
	for _, k := range m.byFirst[s[i]] {
		p := m.pattern[k]
		if len(s)-i >= len(p) && s[i:i+len(p)] == p {
			return k
		}
	}
	return -1
}

func isWordChar(r rune) bool {
	return r == '_' || unicode.IsLetter(r) || unicode.IsDigit(r) || unicode.IsNumber(r)
}

func endsWithWord(s string) bool {
	r, size := utf8.DecodeLastRuneInString(s)
	return size > 0 && isWordChar(r)
}

func startsWithWord(s string) bool {
	r, size := utf8.DecodeRuneInString(s)
	return size > 0 && isWordChar(r)
}

// trailingSpaceStart is the index where the white space at the end of s begins.
func trailingSpaceStart(s string) int {
	i := len(s)
	for i > 0 {
		r, size := utf8.DecodeLastRuneInString(s[:i])
		if !unicode.IsSpace(r) {
			break
		}
		i -= size
	}
	return i
}

// leadingSpaceLen is the byte length of the white space at the start of s.
func leadingSpaceLen(s string) int {
	i := 0
	for i < len(s) {
		r, size := utf8.DecodeRuneInString(s[i:])
		if !unicode.IsSpace(r) {
			break
		}
		i += size
	}
	return i
}
