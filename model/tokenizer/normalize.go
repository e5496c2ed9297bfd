package tokenizer

import (
	"encoding/json"
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"

	"golang.org/x/text/unicode/norm"
)

// normStr is a string being normalised or pre-tokenised, with for every byte
// the span of the original input it came from. Spans are monotone: a later
// byte never maps before an earlier one, so the span of a range of bytes
// [i, j) is [at(i).Begin, at(j-1).End). While nothing rewrote the text the
// alignment is the identity and not materialised (align == nil: byte i maps
// to [base+i, base+i+1)).
type normStr struct {
	s     string
	base  int
	align []Span // len(s), or nil for the identity
}

// newNormStr wraps text[base:] unchanged: byte i maps to [base+i, base+i+1).
func newNormStr(text string, base int) normStr { return normStr{s: text, base: base} }

// at is the source span of byte i.
func (n normStr) at(i int) Span {
	if n.align == nil {
		return Span{n.base + i, n.base + i + 1}
	}
	return n.align[i]
}

func (n normStr) slice(i, j int) normStr {
	if n.align == nil {
		return normStr{s: n.s[i:j], base: n.base + i}
	}
	return normStr{s: n.s[i:j], base: n.span(i, i).Begin, align: n.align[i:j]}
}

// span is the source span of bytes [i, j); an empty range maps to the empty
// span at the source position of byte i.
func (n normStr) span(i, j int) Span {
	if i >= len(n.s) {
		if len(n.s) == 0 {
			return Span{n.base, n.base}
		}
		e := n.at(len(n.s) - 1).End
		return Span{e, e}
	}
	if j <= i {
		b := n.at(i).Begin
		return Span{b, b}
	}
	return Span{n.at(i).Begin, n.at(j - 1).End}
}

// normBuilder assembles a normStr piece by piece.
type normBuilder struct {
	b     []byte
	align []Span
}

func (nb *normBuilder) add(s string, sp Span) {
	nb.b = append(nb.b, s...)
	for range len(s) {
		nb.align = append(nb.align, sp)
	}
}

// copyFrom appends bytes [i, j) of n with their own alignment.
func (nb *normBuilder) copyFrom(n normStr, i, j int) {
	nb.b = append(nb.b, n.s[i:j]...)
	if n.align != nil {
		nb.align = append(nb.align, n.align[i:j]...)
		return
	}
	for k := i; k < j; k++ {
		nb.align = append(nb.align, n.at(k))
	}
}

func (nb *normBuilder) done() normStr {
	n := normStr{s: string(nb.b), align: nb.align}
	if len(nb.align) > 0 {
		n.base = nb.align[0].Begin
	}
	return n
}

// normalizer rewrites a string keeping the alignment to the source.
type normalizer interface {
	normalize(n normStr) normStr
}

type seqNormalizer []normalizer

func (q seqNormalizer) normalize(n normStr) normStr {
	for _, x := range q {
		n = x.normalize(n)
	}
	return n
}

// prependNormalizer puts a prefix before non-empty strings; the prefix has
// no source bytes (the empty span at the first byte's position).
type prependNormalizer struct{ prefix string }

func (p prependNormalizer) normalize(n normStr) normStr {
	if n.s == "" {
		return n
	}
	var nb normBuilder
	nb.add(p.prefix, n.span(0, 0))
	nb.copyFrom(n, 0, len(n.s))
	return nb.done()
}

// replaceNormalizer replaces every match of a pattern; the replacement maps
// to the span of the text it replaced.
type replaceNormalizer struct {
	pat     pattern
	content string
}

func (r replaceNormalizer) normalize(n normStr) normStr {
	ms := r.pat.find(n.s)
	if len(ms) == 0 {
		return n
	}
	var nb normBuilder
	at := 0
	for _, m := range ms {
		nb.copyFrom(n, at, m[0])
		if r.content != "" {
			nb.add(r.content, n.span(m[0], m[1]))
		}
		at = m[1]
	}
	nb.copyFrom(n, at, len(n.s))
	return nb.done()
}

// unicodeNormalizer applies NFC/NFD/NFKC/NFKD; every output segment maps to
// the span of the input segment it came from.
type unicodeNormalizer struct{ form norm.Form }

func (u unicodeNormalizer) normalize(n normStr) normStr {
	if u.form.IsNormalString(n.s) {
		return n
	}
	var nb normBuilder
	var it norm.Iter
	it.InitString(u.form, n.s)
	for !it.Done() {
		begin := it.Pos()
		seg := it.Next()
		nb.add(string(seg), n.span(begin, it.Pos()))
	}
	return nb.done()
}

type lowercaseNormalizer struct{}

func (lowercaseNormalizer) normalize(n normStr) normStr {
	var nb normBuilder
	for i := 0; i < len(n.s); {
		r, size := utf8.DecodeRuneInString(n.s[i:])
		if r == utf8.RuneError && size == 1 {
			nb.copyFrom(n, i, i+1) // invalid byte: keep it
		} else {
			nb.add(string(unicode.ToLower(r)), n.span(i, i+size))
		}
		i += size
	}
	return nb.done()
}

// stripNormalizer removes leading and/or trailing white space.
type stripNormalizer struct{ left, right bool }

func (s stripNormalizer) normalize(n normStr) normStr {
	i, j := 0, len(n.s)
	if s.left {
		i = len(n.s) - len(strings.TrimLeftFunc(n.s, unicode.IsSpace))
	}
	if s.right {
		j = len(strings.TrimRightFunc(n.s, unicode.IsSpace))
	}
	if j < i {
		j = i
	}
	return n.slice(i, j)
}

// parseNormalizer reads a tokenizer.json "normalizer" object (nil for null).
func parseNormalizer(raw json.RawMessage) (normalizer, error) {
	if isNull(raw) {
		return nil, nil
	}
	var h struct {
		Type        string            `json:"type"`
		Normalizers []json.RawMessage `json:"normalizers"`
		Prepend     string            `json:"prepend"`
		Pattern     json.RawMessage   `json:"pattern"`
		Content     string            `json:"content"`
		StripLeft   bool              `json:"strip_left"`
		StripRight  bool              `json:"strip_right"`
	}
	if err := json.Unmarshal(raw, &h); err != nil {
		return nil, fmt.Errorf("normalizer: %w", err)
	}
	switch h.Type {
	case "Sequence":
		var q seqNormalizer
		for _, r := range h.Normalizers {
			x, err := parseNormalizer(r)
			if err != nil {
				return nil, err
			}
			if x != nil {
				q = append(q, x)
			}
		}
		return q, nil
	case "Prepend":
		return prependNormalizer{h.Prepend}, nil
	case "Replace":
		p, err := parsePattern(h.Pattern)
		if err != nil {
			return nil, fmt.Errorf("Replace normalizer: %w", err)
		}
		return replaceNormalizer{p, h.Content}, nil
	case "NFC":
		return unicodeNormalizer{norm.NFC}, nil
	case "NFD":
		return unicodeNormalizer{norm.NFD}, nil
	case "NFKC":
		return unicodeNormalizer{norm.NFKC}, nil
	case "NFKD":
		return unicodeNormalizer{norm.NFKD}, nil
	case "Lowercase":
		return lowercaseNormalizer{}, nil
	case "Strip":
		return stripNormalizer{h.StripLeft, h.StripRight}, nil
	}
	return nil, fmt.Errorf("%w: normalizer type %q", ErrUnsupported, h.Type)
}

func isNull(raw json.RawMessage) bool {
	s := strings.TrimSpace(string(raw))
	return s == "" || s == "null"
}
