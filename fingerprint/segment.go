package fingerprint

import (
	"errors"
	"fmt"
	"strings"
)

// Segmentation: a prompt S + C_1..C_k + Q split on the token ids of the exact
// sequence the engine runs. Segment boundaries are found in the prompt text
// (content parts, separators, markers) as byte offsets and mapped onto the
// ids with the tokenizer's per-token byte offsets; chunks already known by
// their ids are found with a ChunkIndex. Nothing here decides whether a KV
// may be reused: every KV is keyed by the exact ids of its span, so a span
// that tokenized differently in context only changes the key (a miss),
// never the answer.

// Span is a half-open range [Begin, End): token indices in Segments, byte
// offsets where a function says so.
type Span struct{ Begin, End int }

// Len is End - Begin.
func (s Span) Len() int { return s.End - s.Begin }

// Segments is a prompt of N tokens split into S, chunks and Q. The spans
// tile [0, N) in order: Prefix.Begin == 0, each chunk begins where the
// previous segment ends, Question.End == N. No chunk and not Q is empty.
type Segments struct {
	Prefix   Span
	Chunks   []Span
	Question Span
	// Exact[i] reports that both ends of chunk i fell on token boundaries of
	// the text (no token straddles a cut). A chunk that is not exact still
	// has well-defined ids (they are only unlikely to match an ingested
	// chunk's standalone ids).
	Exact []bool
}

// Tokens returns the number of tokens covered, Question.End.
func (s Segments) Tokens() int { return s.Question.End }

// Validate checks the tiling invariant against a prompt of n tokens.
func (s Segments) Validate(n int) error {
	if s.Prefix.Begin != 0 || s.Prefix.End < 0 {
		return fmt.Errorf("%w: prefix %v", ErrSegments, s.Prefix)
	}
	at := s.Prefix.End
	for i, c := range s.Chunks {
		if c.Begin != at || c.End <= c.Begin {
			return fmt.Errorf("%w: chunk %d %v after %d", ErrSegments, i, c, at)
		}
		at = c.End
	}
	if s.Question.Begin != at || s.Question.End <= s.Question.Begin || s.Question.End != n {
		return fmt.Errorf("%w: question %v after %d in %d tokens", ErrSegments, s.Question, at, n)
	}
	if len(s.Exact) != len(s.Chunks) {
		return fmt.Errorf("%w: %d exactness flags for %d chunks", ErrSegments, len(s.Exact), len(s.Chunks))
	}
	return nil
}

// Errors of segmentation.
var (
	// ErrSegments: cut points or spans that do not tile the prompt.
	ErrSegments = errors.New("fingerprint: segments do not tile the prompt")
	// ErrNoQuestion: nothing left after the last chunk.
	ErrNoQuestion = errors.New("fingerprint: no question after the last chunk")
	// ErrMarkers: unbalanced or nested marker pairs.
	ErrMarkers = errors.New("fingerprint: unbalanced chunk markers")
)

// Cut maps byte cut points of a prompt text onto token indices. offsets[i]
// is the byte span of token i in the text (tokenizer EncodeOffsets; tokens
// without source bytes, such as BOS or a dummy-prefix space, have an empty
// span at their position). cuts are ascending byte offsets in [0, textLen]:
// cuts[0] is where S ends and chunk 1 begins, cuts[i] where chunk i ends and
// chunk i+1 (or, for the last cut, Q) begins; at least one cut (no chunk)
// is allowed.
//
// A cut maps to the first token that begins at or after it. When a token
// straddles the cut (it begins before and ends after it), the cut is not
// exact: that token stays with the earlier segment and the chunks on both
// sides are marked inexact. Chunks that come out empty in tokens (two cuts
// inside one token, an empty part) are dropped. Q must not be empty.
func Cut(offsets []Span, cuts []int) (Segments, error) {
	n := len(offsets)
	idx := make([]int, len(cuts))
	exact := make([]bool, len(cuts))
	prev := -1
	for i, b := range cuts {
		if b < prev {
			return Segments{}, fmt.Errorf("%w: cut %d at byte %d before %d", ErrSegments, i, b, prev)
		}
		prev = b
		// First token beginning at or after b; tokens with an empty span at
		// b (a dummy prefix) belong after the cut.
		idx[i], exact[i] = tokenAt(offsets, b)
	}
	if len(cuts) == 0 {
		return Segments{}, fmt.Errorf("%w: no cut points", ErrSegments)
	}
	seg := Segments{Prefix: Span{0, idx[0]}}
	for i := 1; i < len(idx); i++ {
		c := Span{idx[i-1], idx[i]}
		if c.Len() == 0 {
			continue
		}
		seg.Chunks = append(seg.Chunks, c)
		seg.Exact = append(seg.Exact, exact[i-1] && exact[i])
	}
	seg.Question = Span{idx[len(idx)-1], n}
	if seg.Question.Len() == 0 {
		return Segments{}, ErrNoQuestion
	}
	if seg.Exact == nil {
		seg.Exact = []bool{}
	}
	return seg, seg.Validate(n)
}

// TextLayout is a prompt text with its chunk boundaries: Text is what the
// engine tokenizes (markers stripped or kept), Cuts its byte cut points as
// Cut takes them.
type TextLayout struct {
	Text string
	Cuts []int
}

// SplitSeparator cuts text at every occurrence of sep, the LMCache
// convention S sep C_1 sep C_2 ... sep Q: the piece before the first
// separator is S, the one after the last is Q, those between are chunks.
// With keep, each separator stays in the text at the start of the piece it
// precedes; otherwise separators are removed from the text. ok is false
// when sep is empty or occurs fewer than twice (no chunk).
func SplitSeparator(text, sep string, keep bool) (TextLayout, bool) {
	if sep == "" || strings.Count(text, sep) < 2 {
		return TextLayout{}, false
	}
	pieces := strings.Split(text, sep)
	var b strings.Builder
	b.Grow(len(text))
	cuts := make([]int, 0, len(pieces)-1)
	b.WriteString(pieces[0])
	for _, p := range pieces[1:] {
		cuts = append(cuts, b.Len())
		if keep {
			b.WriteString(sep)
		}
		b.WriteString(p)
	}
	return TextLayout{Text: b.String(), Cuts: cuts}, true
}

// SplitMarkers cuts text at marker pairs: S is the text before the first
// open marker, each open ... close pair is a chunk, and Q is the text after
// the last close marker. Text between a close and the next open (a newline,
// say) goes with the chunk that follows. With keep the markers stay in the
// text, inside their chunk; otherwise they are removed. ok is false when
// there is no pair; ErrMarkers reports an open marker without its close, a
// close without an open, or nested pairs.
func SplitMarkers(text, open, close string, keep bool) (TextLayout, bool, error) {
	if open == "" || close == "" || !strings.Contains(text, open) {
		if close != "" && strings.Contains(text, close) {
			return TextLayout{}, false, fmt.Errorf("%w: %q without %q", ErrMarkers, close, open)
		}
		return TextLayout{}, false, nil
	}
	var b strings.Builder
	b.Grow(len(text))
	var cuts []int
	rest := text
	first := true
	for {
		i := strings.Index(rest, open)
		j := strings.Index(rest, close)
		if i < 0 {
			if j >= 0 {
				return TextLayout{}, false, fmt.Errorf("%w: %q without %q", ErrMarkers, close, open)
			}
			break
		}
		if j >= 0 && j < i {
			return TextLayout{}, false, fmt.Errorf("%w: %q before %q", ErrMarkers, close, open)
		}
		if first {
			b.WriteString(rest[:i])
			cuts = append(cuts, b.Len()) // S ends
			first = false
		} else {
			b.WriteString(rest[:i]) // glue goes with the next chunk
		}
		inner := rest[i+len(open):]
		j = strings.Index(inner, close)
		if j < 0 {
			return TextLayout{}, false, fmt.Errorf("%w: %q without %q", ErrMarkers, open, close)
		}
		if k := strings.Index(inner[:j], open); k >= 0 {
			return TextLayout{}, false, fmt.Errorf("%w: nested %q", ErrMarkers, open)
		}
		if keep {
			b.WriteString(open)
		}
		b.WriteString(inner[:j])
		if keep {
			b.WriteString(close)
		}
		cuts = append(cuts, b.Len()) // this chunk ends
		rest = inner[j+len(close):]
	}
	b.WriteString(rest)
	return TextLayout{Text: b.String(), Cuts: cuts}, true, nil
}

// PartCuts returns the cut points of convention (a), chat content parts:
// parts are the byte spans of the last user message's text parts in the
// rendered prompt, in order; every part but the last is a chunk and the
// last is Q. glue is the template's text between two consecutive parts
// (text[parts[0].End:parts[1].Begin]); each chunk owns the glue in front of
// it, so that chunk i's text is glue + part i whatever precedes it, the
// first chunk included when the same glue precedes it. ok is false for
// fewer than two parts or parts out of order.
func PartCuts(text string, parts []Span) (cuts []int, ok bool) {
	if len(parts) < 2 {
		return nil, false
	}
	for i, p := range parts {
		if p.Begin < 0 || p.End < p.Begin || p.End > len(text) || i > 0 && p.Begin < parts[i-1].End {
			return nil, false
		}
	}
	glue := text[parts[0].End:parts[1].Begin]
	for i := 1; i < len(parts); i++ {
		if text[parts[i-1].End:parts[i].Begin] != glue {
			return nil, false // the template does not join parts uniformly
		}
	}
	first := parts[0].Begin
	if first >= len(glue) && text[first-len(glue):first] == glue {
		first -= len(glue)
	}
	cuts = append(cuts, first)
	for _, p := range parts[:len(parts)-1] {
		cuts = append(cuts, p.End)
	}
	return cuts, true
}
