package tokenizer

import (
	"encoding/json"
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// preTokenizer splits a normalised string into the pieces BPE runs on.
type preTokenizer interface {
	// split cuts n into pieces; first is true for the first section of the
	// input (Metaspace's prepend_scheme "first").
	split(n normStr, first bool) []normStr
}

type seqPreTokenizer []preTokenizer

func (q seqPreTokenizer) split(n normStr, first bool) []normStr {
	pieces := []normStr{n}
	for _, p := range q {
		var next []normStr
		for i, x := range pieces {
			next = append(next, p.split(x, first && i == 0)...)
		}
		pieces = next
	}
	return pieces
}

// splitBehavior is what Split does with the matches.
type splitBehavior int

const (
	splitRemoved splitBehavior = iota
	splitIsolated
	splitMergedWithPrevious
	splitMergedWithNext
	splitContiguous
)

// splitByMatches cuts n at the matches of a pattern according to behavior.
// invert swaps the roles of matches and the text between them.
func splitByMatches(n normStr, ms [][2]int, behavior splitBehavior, invert bool) []normStr {
	type part struct {
		b, e  int
		match bool
	}
	parts := make([]part, 0, 2*len(ms)+1)
	at := 0
	for _, m := range ms {
		if m[0] > at {
			parts = append(parts, part{at, m[0], invert})
		}
		parts = append(parts, part{m[0], m[1], !invert})
		at = m[1]
	}
	if at < len(n.s) {
		parts = append(parts, part{at, len(n.s), invert})
	}
	var out []normStr
	switch behavior {
	case splitRemoved:
		for _, p := range parts {
			if !p.match {
				out = append(out, n.slice(p.b, p.e))
			}
		}
	case splitIsolated:
		for _, p := range parts {
			out = append(out, n.slice(p.b, p.e))
		}
	case splitMergedWithPrevious:
		b, prevMatch := -1, false
		for _, p := range parts {
			if p.match && b >= 0 && !prevMatch {
				out[len(out)-1] = n.slice(b, p.e) // glue to the previous piece
			} else {
				out = append(out, n.slice(p.b, p.e))
				b = p.b
			}
			prevMatch = p.match
		}
	case splitMergedWithNext:
		b := -1
		for _, p := range parts {
			if p.match {
				if b < 0 {
					b = p.b
				} else {
					out = append(out, n.slice(b, p.b))
					b = p.b
				}
				continue
			}
			if b >= 0 {
				out = append(out, n.slice(b, p.e))
				b = -1
			} else {
				out = append(out, n.slice(p.b, p.e))
			}
		}
		if b >= 0 {
			out = append(out, n.slice(b, len(n.s)))
		}
	case splitContiguous:
		start := -1 // start of the current run of matches
		for _, p := range parts {
			if p.match {
				if start < 0 {
					start = p.b
				}
				continue
			}
			if start >= 0 {
				out = append(out, n.slice(start, p.b))
				start = -1
			}
			out = append(out, n.slice(p.b, p.e))
		}
		if start >= 0 {
			out = append(out, n.slice(start, len(n.s)))
		}
	}
	return out
}

type splitPreTokenizer struct {
	pat      pattern
	behavior splitBehavior
	invert   bool
}

func (s splitPreTokenizer) split(n normStr, _ bool) []normStr {
	return splitByMatches(n, s.pat.find(n.s), s.behavior, s.invert)
}

// byteLevelPreTokenizer is GPT-2's: optionally a prefix space, optionally the
// GPT-2 split regex, then every byte mapped to a printable character.
type byteLevelPreTokenizer struct {
	addPrefixSpace bool
	re             pattern // nil unless use_regex
}

// gpt2Pattern is the split regex of ByteLevel with use_regex.
const gpt2Pattern = `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`

func (b byteLevelPreTokenizer) split(n normStr, _ bool) []normStr {
	if b.addPrefixSpace && !strings.HasPrefix(n.s, " ") {
		var nb normBuilder
		nb.add(" ", n.span(0, 0))
		nb.copyFrom(n, 0, len(n.s))
		n = nb.done()
	}
	pieces := []normStr{n}
	if b.re != nil {
		pieces = splitByMatches(n, b.re.find(n.s), splitIsolated, false)
	}
	for i, p := range pieces {
		pieces[i] = byteLevelMap(p)
	}
	return pieces
}

// byteToRune is GPT-2's bytes_to_unicode: printable Latin-1 bytes map to
// themselves, the others to U+0100 onwards in byte order.
var byteToRune, runeToByte = func() ([256]rune, map[rune]byte) {
	var b2r [256]rune
	r2b := make(map[rune]byte, 256)
	next := rune(256)
	for b := 0; b < 256; b++ {
		if (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF) {
			b2r[b] = rune(b)
		} else {
			b2r[b] = next
			next++
		}
		r2b[b2r[b]] = byte(b)
	}
	return b2r, r2b
}()

// byteLevelStrings caches the UTF-8 of each mapped byte.
var byteLevelStrings = func() (s [256]string) {
	for b := range s {
		s[b] = string(byteToRune[b])
	}
	return s
}()

func byteLevelMap(n normStr) normStr {
	var nb normBuilder
	nb.b = make([]byte, 0, 2*len(n.s))
	nb.align = make([]Span, 0, 2*len(n.s))
	for i := 0; i < len(n.s); i++ {
		nb.add(byteLevelStrings[n.s[i]], n.at(i))
	}
	return nb.done()
}

// metaspacePreTokenizer is SentencePiece's: spaces become the replacement
// character (▁), which is prepended by the scheme and split before.
type metaspacePreTokenizer struct {
	replacement string
	prepend     string // "always", "first", "never"
	split_      bool
}

// The "first" scheme prepends only to the piece that starts the input
// (source offset 0), as the reference does.
func (m metaspacePreTokenizer) split(n normStr, _ bool) []normStr {
	n = replaceNormalizer{stringPattern(" "), m.replacement}.normalize(n)
	if n.s != "" && !strings.HasPrefix(n.s, m.replacement) &&
		(m.prepend == "always" || (m.prepend == "first" && n.span(0, 0).Begin == 0)) {
		n = prependNormalizer{m.replacement}.normalize(n)
	}
	if !m.split_ {
		return []normStr{n}
	}
	return splitByMatches(n, stringPattern(m.replacement).find(n.s), splitMergedWithNext, false)
}

// digitsPreTokenizer splits digit runs (or single digits) off.
type digitsPreTokenizer struct{ individual bool }

func (d digitsPreTokenizer) split(n normStr, _ bool) []normStr {
	var ms [][2]int
	for i := 0; i < len(n.s); {
		r, size := utf8.DecodeRuneInString(n.s[i:])
		if unicode.IsDigit(r) {
			ms = append(ms, [2]int{i, i + size})
		}
		i += size
	}
	if d.individual {
		return splitByMatches(n, ms, splitIsolated, false)
	}
	return splitByMatches(n, ms, splitContiguous, false)
}

// whitespaceSplitPreTokenizer splits on white space, dropping it.
type whitespaceSplitPreTokenizer struct{}

func (whitespaceSplitPreTokenizer) split(n normStr, _ bool) []normStr {
	var ms [][2]int
	for i := 0; i < len(n.s); {
		r, size := utf8.DecodeRuneInString(n.s[i:])
		if unicode.IsSpace(r) {
			ms = append(ms, [2]int{i, i + size})
		}
		i += size
	}
	return splitByMatches(n, ms, splitRemoved, false)
}

func parsePreTokenizer(raw json.RawMessage) (preTokenizer, error) {
	if isNull(raw) {
		return nil, nil
	}
	var h struct {
		Type           string            `json:"type"`
		PreTokenizers  []json.RawMessage `json:"pretokenizers"`
		Pattern        json.RawMessage   `json:"pattern"`
		Behavior       string            `json:"behavior"`
		Invert         bool              `json:"invert"`
		AddPrefixSpace *bool             `json:"add_prefix_space"`
		UseRegex       *bool             `json:"use_regex"`
		Replacement    string            `json:"replacement"`
		PrependScheme  string            `json:"prepend_scheme"`
		Split          *bool             `json:"split"`
		Individual     bool              `json:"individual_digits"`
	}
	if err := json.Unmarshal(raw, &h); err != nil {
		return nil, fmt.Errorf("pre_tokenizer: %w", err)
	}
	switch h.Type {
	case "Sequence":
		var q seqPreTokenizer
		for _, r := range h.PreTokenizers {
			p, err := parsePreTokenizer(r)
			if err != nil {
				return nil, err
			}
			if p != nil {
				q = append(q, p)
			}
		}
		return q, nil
	case "Split":
		p, err := parsePattern(h.Pattern)
		if err != nil {
			return nil, fmt.Errorf("Split pre-tokenizer: %w", err)
		}
		b, ok := map[string]splitBehavior{
			"Removed": splitRemoved, "Isolated": splitIsolated, "MergedWithPrevious": splitMergedWithPrevious,
			"MergedWithNext": splitMergedWithNext, "Contiguous": splitContiguous,
		}[h.Behavior]
		if !ok {
			return nil, fmt.Errorf("%w: Split behavior %q", ErrUnsupported, h.Behavior)
		}
		return splitPreTokenizer{p, b, h.Invert}, nil
	case "ByteLevel":
		b := byteLevelPreTokenizer{addPrefixSpace: h.AddPrefixSpace == nil || *h.AddPrefixSpace}
		if h.UseRegex == nil || *h.UseRegex {
			p, err := parsePattern(json.RawMessage(fmt.Sprintf(`{"Regex":%q}`, gpt2Pattern)))
			if err != nil {
				return nil, err
			}
			b.re = p
		}
		return b, nil
	case "Metaspace":
		m := metaspacePreTokenizer{replacement: h.Replacement, prepend: h.PrependScheme, split_: h.Split == nil || *h.Split}
		if m.replacement == "" {
			m.replacement = "▁"
		}
		if m.prepend == "" {
			m.prepend = "always"
			if h.AddPrefixSpace != nil && !*h.AddPrefixSpace {
				m.prepend = "never"
			}
		}
		return m, nil
	case "Digits":
		return digitsPreTokenizer{h.Individual}, nil
	case "WhitespaceSplit":
		return whitespaceSplitPreTokenizer{}, nil
	}
	return nil, fmt.Errorf("%w: pre_tokenizer type %q", ErrUnsupported, h.Type)
}
