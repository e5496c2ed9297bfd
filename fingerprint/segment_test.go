package fingerprint

import (
	"errors"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/google/go-cmp/cmp"
)

// byteTokens tokenizes text one token per "word": a run of non-space bytes
// with the spaces in front of it (like SentencePiece's "▁word"), so that a
// cut just before a word's space is inside no token but a cut between the
// space and the word is inside one.
func byteTokens(text string) []Span {
	var out []Span
	i := 0
	for i < len(text) {
		j := i
		for j < len(text) && text[j] == ' ' {
			j++
		}
		for j < len(text) && text[j] != ' ' {
			j++
		}
		out = append(out, Span{i, j})
		i = j
	}
	return out
}

func TestCut(t *testing.T) {
	for _, tc := range []struct {
		name    string
		offsets []Span
		cuts    []int
		want    Segments
		err     error
	}{{
		name:    "exact cuts",
		offsets: []Span{{0, 0}, {0, 3}, {3, 6}, {6, 9}, {9, 12}},
		cuts:    []int{3, 6, 9},
		want:    Segments{Prefix: Span{0, 2}, Chunks: []Span{{2, 3}, {3, 4}}, Question: Span{4, 5}, Exact: []bool{true, true}},
	}, {
		name:    "a token straddles the second cut: it stays with the first chunk, both chunks inexact",
		offsets: []Span{{0, 3}, {3, 7}, {7, 12}, {12, 15}},
		cuts:    []int{3, 6, 12},
		want:    Segments{Prefix: Span{0, 1}, Chunks: []Span{{1, 2}, {2, 3}}, Question: Span{3, 4}, Exact: []bool{false, false}},
	}, {
		name:    "no chunk: a single cut",
		offsets: []Span{{0, 3}, {3, 6}},
		cuts:    []int{3},
		want:    Segments{Prefix: Span{0, 1}, Question: Span{1, 2}, Exact: []bool{}},
	}, {
		name:    "empty chunk dropped",
		offsets: []Span{{0, 3}, {3, 6}, {6, 9}},
		cuts:    []int{3, 3, 6},
		want:    Segments{Prefix: Span{0, 1}, Chunks: []Span{{1, 2}}, Question: Span{2, 3}, Exact: []bool{true}},
	}, {
		name:    "nothing after the last chunk",
		offsets: []Span{{0, 3}, {3, 6}},
		cuts:    []int{3, 6},
		err:     ErrNoQuestion,
	}, {
		name:    "descending cuts",
		offsets: []Span{{0, 3}, {3, 6}},
		cuts:    []int{3, 1},
		err:     ErrSegments,
	}, {
		name:    "no cuts",
		offsets: []Span{{0, 3}},
		err:     ErrSegments,
	}} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Cut(tc.offsets, tc.cuts)
			if !errors.Is(err, tc.err) {
				t.Fatalf("err %v, want %v", err, tc.err)
			}
			if tc.err != nil {
				return
			}
			if d := cmp.Diff(tc.want, got); d != "" {
				t.Errorf("Cut (-want +got):\n%s", d)
			}
		})
	}
}

func TestSplitSeparator(t *testing.T) {
	for _, tc := range []struct {
		name, text, sep string
		keep            bool
		want            TextLayout
		ok              bool
	}{
		{"strip", "S # # C1 # # C2 # # Q", " # # ", false, TextLayout{Text: "SC1C2Q", Cuts: []int{1, 3, 5}}, true},
		{"keep: separators go with the piece they precede", "S # # C1 # # Q", " # # ", true,
			TextLayout{Text: "S # # C1 # # Q", Cuts: []int{1, 8}}, true},
		{"one separator is no chunk", "S # # Q", " # # ", false, TextLayout{}, false},
		{"no separator configured", "S # # C # # Q", "", false, TextLayout{}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := SplitSeparator(tc.text, tc.sep, tc.keep)
			if ok != tc.ok {
				t.Fatalf("ok %v, want %v", ok, tc.ok)
			}
			if d := cmp.Diff(tc.want, got); d != "" {
				t.Errorf("(-want +got):\n%s", d)
			}
		})
	}
}

func TestSplitMarkers(t *testing.T) {
	for _, tc := range []struct {
		name, text string
		keep       bool
		want       TextLayout
		ok         bool
		err        error
	}{
		{"strip", "S<doc>A</doc>\n<doc>B</doc>Q", false, TextLayout{Text: "SA\nBQ", Cuts: []int{1, 2, 4}}, true, nil},
		{"keep", "S<doc>A</doc><doc>B</doc>Q", true,
			TextLayout{Text: "S<doc>A</doc><doc>B</doc>Q", Cuts: []int{1, 13, 25}}, true, nil},
		{"none", "plain text", false, TextLayout{}, false, nil},
		{"open without close", "S<doc>A", false, TextLayout{}, false, ErrMarkers},
		{"close without open", "S A</doc>Q", false, TextLayout{}, false, ErrMarkers},
		{"close before open", "S</doc><doc>A</doc>Q", false, TextLayout{}, false, ErrMarkers},
		{"nested", "S<doc>A<doc>B</doc></doc>Q", false, TextLayout{}, false, ErrMarkers},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok, err := SplitMarkers(tc.text, "<doc>", "</doc>", tc.keep)
			if !errors.Is(err, tc.err) || ok != tc.ok {
				t.Fatalf("ok %v err %v, want %v %v", ok, err, tc.ok, tc.err)
			}
			if d := cmp.Diff(tc.want, got); d != "" {
				t.Errorf("(-want +got):\n%s", d)
			}
		})
	}
}

func TestPartCuts(t *testing.T) {
	// The plain chat template: parts joined by blank lines, the system
	// message first; each chunk owns the "\n\n" in front of it.
	text := "Sys.\n\nDoc A\n\nDoc B\n\nQ?"
	parts := []Span{{6, 11}, {13, 18}, {20, 22}}
	cuts, ok := PartCuts(text, parts)
	if !ok {
		t.Fatal("not ok")
	}
	if d := cmp.Diff([]int{4, 11, 18}, cuts); d != "" {
		t.Errorf("cuts (-want +got):\n%s", d)
	}
	// Glue that differs between parts: the template is not uniform.
	if _, ok := PartCuts("S\n\nA\nB\n\nQ", []Span{{3, 4}, {5, 6}, {8, 9}}); ok {
		t.Error("non-uniform glue accepted")
	}
	if _, ok := PartCuts("Q", []Span{{0, 1}}); ok {
		t.Error("a single part (no chunk) accepted")
	}
	if _, ok := PartCuts("AB", []Span{{1, 2}, {0, 1}}); ok {
		t.Error("parts out of order accepted")
	}
}

func TestChunkIndex(t *testing.T) {
	var x ChunkIndex
	a := []int32{10, 11, 12, 13, 14, 15, 16, 17, 18}
	b := []int32{20, 21, 22, 23, 24, 25, 26, 27}
	if !x.Add(a) || !x.Add(b) || x.Add([]int32{1, 2, 3}) || !x.Add(a) {
		t.Fatal("Add")
	}
	if x.Len() != 2 {
		t.Fatalf("Len %d", x.Len())
	}
	// BOS, S, a, glue, b, Q
	ids := append(append(append(append([]int32{1, 5, 6}, a...), 99), b...), 7, 8)
	seg, ok := x.Segment(ids, 1)
	if !ok {
		t.Fatal("not found")
	}
	want := Segments{Prefix: Span{0, 3}, Chunks: []Span{{3, 12}, {12, 13}, {13, 21}}, Question: Span{21, 23},
		Exact: []bool{true, false, true}}
	if d := cmp.Diff(want, seg); d != "" {
		t.Errorf("Segment (-want +got):\n%s", d)
	}
	// A known chunk at the very end leaves no question: it is not a chunk.
	if _, ok := x.Segment(append([]int32{1}, a...), 1); ok {
		t.Error("chunk without question segmented")
	}
	// A prefix of a known chunk is not the chunk.
	if _, ok := x.Segment(append(append([]int32{1}, a[:8]...), 7), 1); ok {
		t.Error("partial chunk matched")
	}
	limited := ChunkIndex{MaxChunks: 1}
	if !limited.Add(a) || limited.Add(b) {
		t.Error("MaxChunks not enforced")
	}
}

// checkTiling verifies the Segments invariant and that every cut maps to a
// token boundary when the result says exact.
func checkTiling(t *testing.T, seg Segments, n int) {
	t.Helper()
	if err := seg.Validate(n); err != nil {
		t.Fatalf("%v: %+v", err, seg)
	}
}

// FuzzSegment drives the segmenter with arbitrary prompt text, separator and
// markers over a word tokenizer: it must never panic, and whatever it
// returns must tile the prompt with exact chunks that hold exactly the
// tokens whose bytes lie between their cuts.
func FuzzSegment(f *testing.F) {
	f.Add("S # # C1 # # C2 # # Q", " # # ", "<doc>", "</doc>", false)
	f.Add("S<doc> A</doc> <doc>B </doc>Q", " # # ", "<doc>", "</doc>", true)
	f.Add("S<doc><doc></doc>", "", "<doc>", "</doc>", false)
	f.Add("a # #b # # c", " # #", "[", "]", true)
	f.Add("", "", "", "", false)
	f.Fuzz(func(t *testing.T, text, sep, open, close string, keep bool) {
		if !utf8.ValidString(text) || len(text) > 4096 {
			return
		}
		var lays []TextLayout
		if l, ok := SplitSeparator(text, sep, keep); ok {
			lays = append(lays, l)
		}
		if l, ok, err := SplitMarkers(text, open, close, keep); ok && err == nil {
			lays = append(lays, l)
		}
		for _, l := range lays {
			for i, c := range l.Cuts {
				if c < 0 || c > len(l.Text) || i > 0 && c < l.Cuts[i-1] {
					t.Fatalf("cuts %v out of order or range for %d bytes", l.Cuts, len(l.Text))
				}
			}
			if !keep {
				if sep != "" && l.Text != strings.ReplaceAll(text, sep, "") && strings.Contains(text, sep) && !strings.Contains(text, open) {
					t.Fatalf("separators not stripped: %q -> %q", text, l.Text)
				}
			}
			offs := byteTokens(l.Text)
			seg, err := Cut(offs, l.Cuts)
			if err != nil {
				continue
			}
			checkTiling(t, seg, len(offs))
			for i, c := range seg.Chunks {
				if seg.Exact[i] {
					// An exact chunk's tokens lie wholly inside its bytes.
					b, e := offs[c.Begin].Begin, offs[c.End-1].End
					if b < l.Cuts[0] || e > len(l.Text) {
						t.Fatalf("exact chunk %d bytes [%d,%d) outside the text", i, b, e)
					}
				}
			}
		}
		var parts []Span
		for i := 0; i+1 < len(text) && len(parts) < 6; i += 1 + len(text)/7 {
			parts = append(parts, Span{i, i + 1})
		}
		if cuts, ok := PartCuts(text, parts); ok {
			offs := byteTokens(text)
			if seg, err := Cut(offs, cuts); err == nil {
				checkTiling(t, seg, len(offs))
			}
		}
	})
}

// TestSegmentAny: chunks split over two indexes segment as one index
// holding them all would.
func TestSegmentAny(t *testing.T) {
	mk := func(base int32) []int32 {
		c := make([]int32, 12)
		for i := range c {
			c[i] = base + int32(i)
		}
		return c
	}
	a, b := mk(100), mk(200)
	prompt := append(append(append([]int32{1, 2, 3}, a...), b...), 7, 8, 9)
	var one, x, y ChunkIndex
	one.Add(a)
	one.Add(b)
	x.Add(a)
	y.Add(b)
	want, ok := one.Segment(prompt, 1)
	if !ok {
		t.Fatal("one index: no segmentation")
	}
	got, ok := SegmentAny(prompt, 1, &x, nil, &y, &x)
	if !ok {
		t.Fatal("SegmentAny: no segmentation")
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("SegmentAny over two indexes differs from one index (-want +got):\n%s", diff)
	}
	if len(got.Chunks) != 2 || !got.Exact[0] || !got.Exact[1] {
		t.Errorf("chunks %v exact %v, want both chunks found", got.Chunks, got.Exact)
	}
}
