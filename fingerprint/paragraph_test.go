package fingerprint

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// wordTokens tokenizes like a SentencePiece model that never merges across
// a newline: each "\n" is a token, every other token is a word with the
// spaces in front of it. BOS comes first with an empty span. ids are small
// integers from a vocabulary built on the fly, so equal strings get equal
// ids.
func wordTokens(text string, vocab map[string]int32) ([]int32, []Span) {
	ids := []int32{0}
	offs := []Span{{}}
	for i := 0; i < len(text); {
		j := i
		if text[i] == '\n' {
			j++
		} else {
			for j < len(text) && text[j] == ' ' {
				j++
			}
			for j < len(text) && text[j] != ' ' && text[j] != '\n' {
				j++
			}
		}
		id, ok := vocab[text[i:j]]
		if !ok {
			id = int32(len(vocab) + 1)
			vocab[text[i:j]] = id
		}
		ids = append(ids, id)
		offs = append(offs, Span{i, j})
		i = j
	}
	return ids, offs
}

// passage is a text of n words.
func passage(name string, n int) string {
	w := make([]string, n)
	for i := range w {
		w[i] = name + string(rune('a'+i%26))
	}
	return strings.Join(w, " ")
}

// spanText is the text of token span s.
func spanText(text string, offs []Span, s Span) string {
	return text[offs[s.Begin].Begin:offs[s.End-1].End]
}

const langchainInstr = "You are an assistant for question-answering tasks. Use the following pieces of retrieved context to answer the question. If you don't know the answer, just say that you don't know. Use three sentences maximum and keep the answer concise."

func TestParagraphChunks(t *testing.T) {
	d1, d2, d3 := passage("one", 40), passage("two", 40), passage("three", 40)
	for _, tc := range []struct {
		name string
		text string
		p    Paragraphs
		want []string // the chunks' texts
	}{{
		name: "LangChain rlm/rag-prompt: the first document shares the instruction's block, the last one sheds Answer:",
		text: langchainInstr + "\nQuestion: what is it? \nContext: " + d1 + "\n\n" + d2 + "\n\n" + d3 + " \nAnswer:",
		want: []string{langchainInstr + "\nQuestion: what is it? \nContext: " + d1, "\n\n" + d2, "\n\n" + d3 + " "},
	}, {
		name: "LlamaIndex text QA: metadata lines are glue of the node after them, the rules go to S and Q",
		text: "Context information is below.\n---------------------\nfile_path: docs/a.txt\n\n" + d1 + "\n\nfile_path: docs/b.txt\n\n" + d2 +
			"\n---------------------\nGiven the context information and not prior knowledge, answer the query.\nQuery: what is it?\nAnswer: ",
		want: []string{"\n\n" + d1, "\n\nfile_path: docs/b.txt\n\n" + d2},
	}, {
		name: "no passage",
		text: "Once upon a time",
	}, {
		name: "a passage alone is the question",
		text: d1,
	}, {
		name: "a passage and a long question after a blank line",
		text: "Read this.\n\n" + d1 + "\n\n" + d2,
		want: []string{"\n\n" + d1},
	}, {
		name: "blank lines with spaces and carriage returns separate blocks",
		text: "S\n \t\r\n" + d1 + "\r\n\r\n" + d2 + "\n\nQ?",
		want: []string{"\n \t\r\n" + d1 + "\r", "\n\r\n" + d2},
	}, {
		name: "a long passage is cut into windows of at most MaxTokens tokens",
		text: "S\n\n" + passage("w", 100) + "\n\nQ?",
		p:    Paragraphs{MaxTokens: 30},
		want: []string{"\n\n" + passage("w", 28), " " + passage("w", 58)[len(passage("w", 28))+1:],
			" " + passage("w", 88)[len(passage("w", 58))+1:], " " + passage("w", 100)[len(passage("w", 88))+1:]},
	}, {
		name: "MinTokens decides what is a passage",
		text: "S\n\n" + passage("x", 10) + "\n\n" + passage("y", 5) + "\n\nQ?",
		p:    Paragraphs{MinTokens: 8},
		want: []string{"\n\n" + passage("x", 10)},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			ids, offs := wordTokens(tc.text, map[string]int32{})
			chunks, exact := ParagraphChunks(tc.text, offs, 1, tc.p)
			var got []string
			for i, c := range chunks {
				got = append(got, spanText(tc.text, offs, c))
				if !exact[i] {
					t.Errorf("chunk %d not exact", i)
				}
				if max := tc.p.withDefaults().MaxTokens; c.Len() > max {
					t.Errorf("chunk %d has %d tokens, over %d", i, c.Len(), max)
				}
			}
			if d := cmp.Diff(tc.want, got); d != "" {
				t.Errorf("chunks (-want +got):\n%s", d)
			}
			seg, how, ok := SegmentParagraphs(ids, tc.text, offs, 1, tc.p)
			if ok != (len(tc.want) > 0) {
				t.Fatalf("SegmentParagraphs ok %v", ok)
			}
			if ok {
				if how != "paragraphs" || len(seg.Chunks) != len(tc.want) || seg.Prefix.Len() < 1 || seg.Question.Len() < 1 {
					t.Errorf("%s: %+v", how, seg)
				}
			}
		})
	}
}

// TestParagraphsStable: the same passages cut the same way whatever
// surrounds them, so a chunk's ids are the same in another prompt (another
// question, another system text).
func TestParagraphsStable(t *testing.T) {
	d1, d2 := passage("one", 40), passage("two", 40)
	vocab := map[string]int32{}
	chunkIDs := func(text string) [][]int32 {
		ids, offs := wordTokens(text, vocab)
		seg, _, ok := SegmentParagraphs(ids, text, offs, 1, Paragraphs{})
		if !ok {
			t.Fatalf("no chunks in %q", text)
		}
		var out [][]int32
		for _, c := range seg.Chunks {
			out = append(out, ids[c.Begin:c.End])
		}
		return out
	}
	a := chunkIDs("System one.\n\n" + d1 + "\n\n" + d2 + "\n\nQuestion one?")
	b := chunkIDs("Another system text, longer.\nWith two lines.\n\n" + d1 + "\n\n" + d2 + "\n\nQuestion two, different?")
	if d := cmp.Diff(a, b); d != "" {
		t.Errorf("chunk ids differ (-first +second):\n%s", d)
	}
}

// TestSegmentParagraphsWithIndex: known chunks (convention c) win where
// they match, passages fill in the rest.
func TestSegmentParagraphsWithIndex(t *testing.T) {
	d1, d2, d3 := passage("one", 40), passage("two", 40), passage("three", 40)
	vocab := map[string]int32{}
	// The index knows d2 as it appears after a newline.
	text := "S\n\n" + d1 + "\n\n" + d2 + "\n\n" + d3 + "\n\nQ?"
	ids, offs := wordTokens(text, vocab)
	_, d2offs := wordTokens("\n"+d2, vocab)
	d2ids, _ := wordTokens("\n"+d2, vocab)
	_ = d2offs
	var x ChunkIndex
	if !x.Add(d2ids[2:]) { // without BOS and the newline
		t.Fatal("not indexed")
	}
	seg, how, ok := SegmentParagraphs(ids, text, offs, 1, Paragraphs{}, &x)
	if !ok || how != "index+paragraphs" {
		t.Fatalf("ok %v how %q", ok, how)
	}
	var got []string
	for _, c := range seg.Chunks {
		got = append(got, spanText(text, offs, c))
	}
	// d1, before the first known chunk, is S (the known chunk's KV was
	// stored after it); d3 is a passage.
	want := []string{d2, "\n\n" + d3}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("chunks (-want +got):\n%s", d)
	}
	if d := cmp.Diff([]bool{true, true}, seg.Exact); d != "" {
		t.Errorf("exact (-want +got):\n%s", d)
	}

	// A known chunk inside a passage splits it: what comes before is S,
	// what comes after a passage.
	var y ChunkIndex
	mid, _ := wordTokens("\n"+passage("one", 20), vocab)
	y.Add(mid[2+5:]) // words 5..19 of d1, after the newline: " onef ... ones"
	seg, how, ok = SegmentParagraphs(ids, text, offs, 1, Paragraphs{}, &y)
	if !ok || how != "index+paragraphs" || len(seg.Chunks) != 4 {
		t.Fatalf("ok %v how %q %+v", ok, how, seg)
	}
	if got := spanText(text, offs, seg.Chunks[0]); got != " "+passage("one", 20)[len(passage("one", 5))+1:] {
		t.Errorf("known chunk %q", got)
	}
}

// FuzzParagraphs: on any text, convention (d) returns chunks that tile a
// prompt (Validate), never begin before minPrefix, never exceed MaxTokens
// and leave a question; the same text always cuts the same way.
func FuzzParagraphs(f *testing.F) {
	f.Add("S\n\n"+passage("a", 40)+"\n\n"+passage("b", 40)+"\n\nQ?", 0, 0)
	f.Add(langchainInstr+"\nQuestion: q \nContext: "+passage("c", 50)+"\n\n"+passage("d", 33)+" \nAnswer:", 32, 256)
	f.Add("\n\n\n \n", 1, 1)
	f.Add("a\n\nb\n\nc", 1, 1)
	f.Add("x \r\n\r\n y\n\n\n", -3, 2)
	f.Fuzz(func(t *testing.T, text string, minTok, maxTok int) {
		if len(text) > 4000 {
			return
		}
		p := Paragraphs{MinTokens: minTok % 64, MaxTokens: maxTok % 512}
		vocab := map[string]int32{}
		ids, offs := wordTokens(text, vocab)
		chunks, exact := ParagraphChunks(text, offs, 1, p)
		if len(chunks) != len(exact) {
			t.Fatalf("%d chunks, %d flags", len(chunks), len(exact))
		}
		at := 1
		for i, c := range chunks {
			if c.Begin < at || c.End <= c.Begin || c.Len() > p.withDefaults().MaxTokens {
				t.Fatalf("chunk %d %v after %d", i, c, at)
			}
			at = c.End
		}
		if len(chunks) > 0 && at >= len(ids) {
			t.Fatalf("no question after %v in %d tokens", chunks[len(chunks)-1], len(ids))
		}
		var x ChunkIndex
		for _, c := range chunks {
			x.Add(ids[c.Begin:c.End])
		}
		seg, _, ok := SegmentParagraphs(ids, text, offs, 1, p, &x)
		if ok != (len(chunks) > 0) {
			t.Fatalf("SegmentParagraphs ok %v with %d passages", ok, len(chunks))
		}
		if ok {
			if err := seg.Validate(len(ids)); err != nil {
				t.Fatal(err)
			}
			if seg.Prefix.End < 1 {
				t.Fatalf("S %v holds no BOS", seg.Prefix)
			}
		}
		again, _ := ParagraphChunks(text, offs, 1, p)
		if d := cmp.Diff(chunks, again); d != "" {
			t.Fatalf("not deterministic:\n%s", d)
		}
	})
}
