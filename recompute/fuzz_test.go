package recompute

import (
	"errors"
	"slices"
	"testing"
)

// FuzzFromSpans feeds arbitrary segmentations (as a segmenter could produce
// from a malformed prompt) to FromSpans and Validate: they must return a
// sentinel error or a request that tiles the prompt exactly, never panic.
// data: byte 0 = prompt length, byte 1 = prefix end, then pairs (begin, end)
// of chunks; the last pair is the question.
func FuzzFromSpans(f *testing.F) {
	f.Add([]byte{9, 1, 1, 4, 4, 7, 7, 9}, 0.15)
	f.Add([]byte{9, 1, 1, 4, 3, 7, 7, 9}, 0.5)
	f.Add([]byte{4, 0, 0, 4}, 1.0)
	f.Add([]byte{5, 2, 2, 2, 2, 5}, -1.0)
	f.Add([]byte{0}, 0.0)
	f.Add([]byte{200, 1, 1, 255, 255, 200}, 0.3)
	f.Fuzz(func(t *testing.T, data []byte, ratio float64) {
		if len(data) < 2 {
			return
		}
		n := int(data[0])
		toks := make([]int32, n)
		for i := range toks {
			toks[i] = int32(i % 300)
		}
		prefix := Span{0, int(data[1])}
		var spans []Span
		for i := 2; i+1 < len(data); i += 2 {
			spans = append(spans, Span{int(data[i]), int(data[i+1])})
		}
		if len(spans) == 0 {
			return
		}
		q := spans[len(spans)-1]
		req, err := FromSpans(toks, prefix, spans[:len(spans)-1], q, "fusionrag", ratio)
		if err != nil {
			if !errors.Is(err, ErrOverlap) && !errors.Is(err, ErrEmptySegment) {
				t.Fatalf("unexpected error kind: %v", err)
			}
			return
		}
		if !slices.Equal(req.Tokens(), toks) {
			t.Fatalf("request does not tile the prompt: %v vs %v", req.Tokens(), toks)
		}
		l := req.Layout()
		if l.Total() != n || l.Context().Len() != n-len(req.Prefix)-len(req.Question) {
			t.Fatalf("layout %+v inconsistent with %d tokens", l, n)
		}
		err = req.Validate(300, 128)
		switch {
		case err == nil:
		case errors.Is(err, ErrRatio), errors.Is(err, ErrTooLong), errors.Is(err, ErrEmptySegment):
		default:
			t.Fatalf("unexpected validation error: %v", err)
		}
	})
}
