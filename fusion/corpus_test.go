package fusion

import (
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/fusionrag/fusionrag/fingerprint"
	"github.com/fusionrag/fusionrag/internal/shareddata"
)

func TestReadCorpus(t *testing.T) {
	in := strings.Join([]string{
		`{"id": "a", "title": "T", "text": "hello"}`,
		`not json`,
		``,
		`{"id": 42, "text": "numeric id"}`,
		`{"text": "no id"}`,
		`{"id": "e", "text": "   "}`,
		`{"id": "p", "chunks": ["one", "", "two"]}`,
		`{"id": "q", "chunks": ["", " "]}`,
		`{"id": "x", "text": "unterminated`,
		`{"question": "?", "ctxs": [{"title": "A", "text": "ctx one"}, {"title": "B", "text": ""}]}`,
		`{"id": {"bad": 1}, "text": "t"}`,
		`{"id": "n"}`,
		`[1, 2]`,
		`{"id": "last", "text": "no newline at the end"}`,
	}, "\n")
	var got []Document
	st, err := ReadCorpus(strings.NewReader(in), 0, func(d Document) error {
		got = append(got, d)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []Document{
		{ID: "a", Title: "T", Text: "hello"},
		{ID: "42", Text: "numeric id"},
		{ID: "line5", Text: "no id"},
		{ID: "p", Chunks: []string{"one", "", "two"}},
		{ID: "line10.0", Title: "A", Text: "ctx one"},
		{ID: "last", Text: "no newline at the end"},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("documents (-want +got):\n%s", diff)
	}
	var lines []int
	for _, e := range st.Errors {
		lines = append(lines, e.Line)
		if !errors.Is(e, ErrMalformed) {
			t.Errorf("line %d: %v does not match ErrMalformed", e.Line, e)
		}
	}
	if diff := cmp.Diff([]int{2, 9, 11, 12, 13}, lines); diff != "" {
		t.Errorf("malformed line numbers (-want +got):\n%s", diff)
	}
	wantSt := ReadStats{Lines: 14, Documents: 6, Malformed: 5, Empty: 3}
	st.Errors = nil
	if diff := cmp.Diff(wantSt, st); diff != "" {
		t.Errorf("stats (-want +got):\n%s", diff)
	}
}

func TestReadCorpusLongLine(t *testing.T) {
	long := `{"id": "big", "text": "` + strings.Repeat("word ", 100) + `"}`
	in := long + "\n" + `{"id": "ok", "text": "fine"}` + "\n"
	var ids []string
	st, err := ReadCorpus(strings.NewReader(in), 200, func(d Document) error {
		ids = append(ids, d.ID)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(ids) != 1 || ids[0] != "ok" || st.Malformed != 1 || !errors.Is(st.Errors[0], ErrLineTooLong) || st.Errors[0].Line != 1 {
		t.Errorf("ids %v, stats %+v, errors %v", ids, st, st.Errors)
	}
}

func TestOpenCorpusGzip(t *testing.T) {
	dir := t.TempDir()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Write([]byte(`{"id": "z", "text": "zipped"}` + "\n"))
	zw.Close()
	p := filepath.Join(dir, "c.jsonl.gz")
	if err := os.WriteFile(p, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := OpenCorpus(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var got []Document
	if _, err := ReadCorpus(f, 0, func(d Document) error { got = append(got, d); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].Text != "zipped" {
		t.Errorf("got %+v", got)
	}
}

// A huge document is cut into bounded windows that cover it in order, with
// the requested overlap; it never becomes one prefill.
func TestSplitHugeDocument(t *testing.T) {
	m := synthModel(t, tinyConfig(256))
	var sb strings.Builder
	for i := 0; sb.Len() < 200_000; i++ {
		sb.WriteString("the quick brown fox " + strconv.Itoa(i) + " jumps over the lazy dog número ")
		sb.WriteString(strings.Repeat("x", i%7))
		sb.WriteString(" 😀 ")
	}
	text := sb.String()
	const size, overlap = 64, 16
	ch, err := NewChunker(Chunker{Tokenizer: m.Tokenizer, Size: size, Overlap: overlap, MaxTokens: 256 - 1})
	if err != nil {
		t.Fatal(err)
	}
	cs, err := ch.Split(Document{ID: "huge", Title: "Huge", Text: text})
	if err != nil {
		t.Fatal(err)
	}
	docTokens := len(m.Tokenizer.Encode(text))
	if min := docTokens / (size - overlap); len(cs) < min {
		t.Fatalf("%d chunks for %d tokens, want >= %d", len(cs), docTokens, min)
	}
	tplTokens := len(DefaultTemplate.Tokens(m.Tokenizer, "Huge", ""))
	pos := 0
	for i, c := range cs {
		if n := len(c.Tokens); n > size+tplTokens+8 { // +8: windows widen to whole UTF-8 characters (<= 3 byte tokens per end) and re-encoding may merge differently
			t.Fatalf("chunk %d has %d tokens, want about %d", i, n, size+tplTokens)
		}
		if text[c.Begin:c.End] != c.Text {
			t.Fatalf("chunk %d: text[%d:%d] is not its text", i, c.Begin, c.End)
		}
		at := c.Begin
		if i == 0 && at != 0 {
			t.Errorf("first chunk starts at byte %d", at)
		}
		if i > 0 && at >= pos {
			t.Errorf("chunk %d starts at %d, not before the previous chunk's end %d (overlap %d tokens)", i, at, pos, overlap)
		}
		pos = at + len(c.Text)
		if c.ID != "huge#"+strconv.Itoa(i) {
			t.Errorf("chunk %d id %q", i, c.ID)
		}
	}
	if pos != len(strings.TrimSpace(text)) {
		t.Errorf("last chunk ends at %d, document at %d", pos, len(strings.TrimSpace(text)))
	}
}

func TestChunkerConfig(t *testing.T) {
	m := synthModel(t, tinyConfig(256))
	for _, c := range []Chunker{
		{},
		{Tokenizer: m.Tokenizer, Size: -1},
		{Tokenizer: m.Tokenizer, Size: 10, Overlap: 10},
		{Tokenizer: m.Tokenizer, Overlap: -1},
		{Tokenizer: m.Tokenizer, Template: Template{Format: "x"}},
	} {
		if _, err := NewChunker(c); err == nil {
			t.Errorf("NewChunker(%+v): no error", c)
		}
	}
	ch, err := NewChunker(Chunker{Tokenizer: m.Tokenizer, MaxTokens: 5})
	if err != nil {
		t.Fatal(err)
	}
	if ch.Size != DefaultChunkTokens || ch.Template != DefaultTemplate {
		t.Errorf("defaults not filled: %+v", ch)
	}
	if _, err := ch.Split(Document{ID: "d", Text: "a sentence far longer than five tokens"}); !errors.Is(err, ErrChunkTooLong) {
		t.Errorf("Split over MaxTokens: %v, want ErrChunkTooLong", err)
	}
}

func TestLoadChunksLimit(t *testing.T) {
	m := synthModel(t, tinyConfig(256))
	ch, _ := NewChunker(Chunker{Tokenizer: m.Tokenizer, Size: 64})
	in := "bad\n" + `{"id":"a","text":"one two three"}` + "\n" + `{"id":"b","text":"four"}` + "\n" + `{"id":"c","text":"five"}` + "\n"
	cs, st, err := LoadChunks(strings.NewReader(in), ch, 2, 0)
	if err != nil {
		t.Fatal(err)
	}
	if st.Documents != 2 || st.Malformed != 1 || joinIDs(cs) != "a#0,b#0" {
		t.Errorf("limit 2: chunks %s, stats %+v", joinIDs(cs), st)
	}
}

// FuzzReadCorpus: any input is read without panic, every line is accounted
// for, and every document returned has text.
func FuzzReadCorpus(f *testing.F) {
	for _, s := range []string{
		`{"id": "a", "text": "hello"}`,
		"{\"id\": 1, \"chunks\": [\"x\", \"\"]}\nnot json\n\n",
		`{"ctxs": [{"title": "t", "text": "c"}]}`,
		`{"id": null, "title": 5}`,
		"\xff\xfe{}\n{\"text\":\"\\u0000\"}",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		n := 0
		st, err := ReadCorpus(bytes.NewReader(data), 64, func(d Document) error {
			n++
			if d.empty() || d.ID == "" {
				t.Fatalf("document without text or id: %+v", d)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if n != st.Documents || st.Lines > bytes.Count(data, []byte("\n"))+1 {
			t.Fatalf("stats %+v for %d documents", st, n)
		}
		if _, err := ParseDocuments(data); err != nil && !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrLineTooLong) {
			t.Fatalf("ParseDocuments: unexpected error kind %v", err)
		}
	})
}

// FuzzSplit: any text is chunked without panic into chunks that are
// substrings of it.
func FuzzSplit(f *testing.F) {
	for _, s := range []string{"hello world", "a  b\n\nc", "日本語のテキスト", "\xff\xfe bad utf8", strings.Repeat("ab ", 50)} {
		f.Add(s, 4, 1)
	}
	tok := loadFuzzTokenizer(f)
	f.Fuzz(func(t *testing.T, text string, size, overlap int) {
		size = 1 + abs(size)%40
		overlap = abs(overlap) % size
		ch, err := NewChunker(Chunker{Tokenizer: tok, Size: size, Overlap: overlap})
		if err != nil {
			t.Fatal(err)
		}
		cs, err := ch.Split(Document{ID: "f", Text: text})
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range cs {
			if text[c.Begin:c.End] != c.Text || c.Text == "" || len(c.Tokens) == 0 {
				t.Fatalf("chunk %q of %q", c.Text, text)
			}
		}
	})
}

func abs(x int) int {
	if x < 0 {
		if x == -x { // min int
			return 0
		}
		return -x
	}
	return x
}

// TestSplitWholeIsThePassages (issue 19): a document longer than a chunk,
// ingested with PassageTemplate, is cut into chunks whose ids are exactly
// the chunks the sidecar's passages (fingerprint.ParagraphChunks, with
// MaxTokens = Size) find when a prompt presents the document whole after a
// blank line, so the KV stored for them is the KV looked up.
func TestSplitWholeIsThePassages(t *testing.T) {
	m := synthModelTok(t, tinyConfig(256), shareddata.Path(t, "models/stories260K/tok512.bin"))
	tok := m.Tokenizer
	var sb strings.Builder
	for i := range 12 {
		fmt.Fprintf(&sb, "Lily had %d red balls. Every day Lily went to the park to play with them, and her dog ran after them. ", i+2)
	}
	doc := strings.TrimSpace(sb.String())
	const size = 64
	ch, err := NewChunker(Chunker{Tokenizer: tok, Template: PassageTemplate, Size: size})
	if err != nil {
		t.Fatal(err)
	}
	cs, err := ch.Split(Document{ID: "d", Text: "  " + doc + "\n"})
	if err != nil {
		t.Fatal(err)
	}
	if len(cs) < 4 {
		t.Fatalf("%d chunks, want the document cut in 4 or more", len(cs))
	}
	var got [][]int32
	var all []int32
	for i, c := range cs {
		if len(c.Tokens) > size {
			t.Errorf("chunk %d: %d tokens, over %d", i, len(c.Tokens), size)
		}
		if c.Text != ("  " + doc)[c.Begin:c.End] {
			t.Errorf("chunk %d: Text is not the document's bytes [%d, %d)", i, c.Begin, c.End)
		}
		got = append(got, c.Tokens)
		all = append(all, c.Tokens...)
	}
	if d := cmp.Diff(EncodeSegment(tok, "\n\n"+doc), all); d != "" {
		t.Errorf("the chunks' ids together are not the document's ids after a blank line (-want +got):\n%s", d)
	}

	prompt := "Answer from the story.\n\n" + doc + "\n\nQuestion: how many balls?\nAnswer:"
	ids, offs := tok.EncodeOffsets(prompt)
	spans := []fingerprint.Span{{}} // BOS
	ids = append([]int32{tok.BOS()}, ids...)
	for _, o := range offs {
		spans = append(spans, fingerprint.Span{Begin: o.Begin, End: o.End})
	}
	chunks, _ := fingerprint.ParagraphChunks(prompt, spans, 1, fingerprint.Paragraphs{MaxTokens: size})
	var want [][]int32
	for _, c := range chunks {
		want = append(want, ids[c.Begin:c.End])
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("ingested chunks differ from the passages found in the prompt (-prompt +ingest):\n%s", d)
	}
}
