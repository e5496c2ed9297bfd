package fusion

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/fusionrag/fusionrag/fingerprint"
	"github.com/fusionrag/fusionrag/model/tokenizer"
)

// Document is one corpus entry. A line of a JSONL corpus is one of:
//
//	{"id": "...", "text": "...", "title": "..."}     a document (title optional)
//	{"id": "...", "chunks": ["...", ...], "title": "..."}  pre-chunked
//	{"question": ..., "ctxs": [{"title": ..., "text": ...}, ...]}
//
// The third form is the shape of the RAG evaluation sets (NQ-open, MuSiQue):
// each ctx becomes a document of its own (id "<line>.<index>"), so that a QA
// file can be pooled into a retrieval corpus directly.
type Document struct {
	ID     string   `json:"id"`
	Title  string   `json:"title,omitempty"`
	Text   string   `json:"text,omitempty"`
	Chunks []string `json:"chunks,omitempty"`
}

// empty reports a document with no text to chunk.
func (d *Document) empty() bool {
	if strings.TrimSpace(d.Text) != "" {
		return false
	}
	for _, c := range d.Chunks {
		if strings.TrimSpace(c) != "" {
			return false
		}
	}
	return true
}

// LineError is a corpus line that could not be used. Reading goes on after it.
type LineError struct {
	Line int // 1-based
	Err  error
}

func (e *LineError) Error() string { return fmt.Sprintf("line %d: %v", e.Line, e.Err) }
func (e *LineError) Unwrap() error { return e.Err }

// Errors of corpus lines (wrapped in *LineError).
var (
	// ErrMalformed: a line that is not a JSON object of a known shape.
	ErrMalformed = errors.New("fusion: malformed corpus line")
	// ErrLineTooLong: a line over ReadOptions.MaxLineBytes.
	ErrLineTooLong = errors.New("fusion: corpus line too long")
)

// ReadStats counts what reading a corpus saw.
type ReadStats struct {
	Lines     int `json:"lines"`
	Documents int `json:"documents"`
	// Malformed lines were reported and skipped; Empty documents skipped.
	Malformed int `json:"malformed"`
	Empty     int `json:"empty"`
	// Errors holds the first MaxErrors line errors, in line order.
	Errors []*LineError `json:"-"`
}

// MaxErrors is how many line errors ReadStats keeps (all are counted).
const MaxErrors = 100

// DefaultMaxLineBytes bounds one corpus line (one document): 256 MiB.
const DefaultMaxLineBytes = 256 << 20

// ReadCorpus reads JSONL documents from r and calls fn with each usable
// one, in file order. Malformed lines and lines over maxLine bytes (0:
// DefaultMaxLineBytes) are counted, kept in ReadStats.Errors with their line
// number, and skipped; documents without text are counted and skipped;
// blank lines are ignored. A document without an id gets "line<N>". The
// error is r's read error or fn's, which stops reading.
func ReadCorpus(r io.Reader, maxLine int, fn func(Document) error) (ReadStats, error) {
	if maxLine <= 0 {
		maxLine = DefaultMaxLineBytes
	}
	var st ReadStats
	report := func(line int, err error) {
		st.Malformed++
		if len(st.Errors) < MaxErrors {
			st.Errors = append(st.Errors, &LineError{Line: line, Err: err})
		}
	}
	br := bufio.NewReaderSize(r, 1<<16)
	var buf []byte
	for {
		line, tooLong, err := readLine(br, &buf, maxLine)
		if err == io.EOF && line == nil {
			return st, nil
		}
		if err != nil && err != io.EOF {
			return st, err
		}
		st.Lines++
		n := st.Lines
		if tooLong {
			report(n, fmt.Errorf("%w: over %d bytes", ErrLineTooLong, maxLine))
			continue
		}
		line = bytes.TrimSpace(line)
		if len(line) == 0 {
			continue
		}
		docs, perr := parseLine(line, n)
		if perr != nil {
			report(n, perr)
			continue
		}
		for _, d := range docs {
			if d.empty() {
				st.Empty++
				continue
			}
			st.Documents++
			if err := fn(d); err != nil {
				return st, err
			}
		}
		if err == io.EOF {
			return st, nil
		}
	}
}

// readLine reads one '\n'-terminated line into *buf. A line longer than max
// is consumed and reported with tooLong, without being held in memory.
func readLine(br *bufio.Reader, buf *[]byte, max int) (line []byte, tooLong bool, err error) {
	*buf = (*buf)[:0]
	for {
		frag, err := br.ReadSlice('\n')
		if !tooLong {
			if len(*buf)+len(frag) > max+1 { // +1: the newline
				tooLong = true
				*buf = (*buf)[:0]
			} else {
				*buf = append(*buf, frag...)
			}
		}
		switch {
		case err == bufio.ErrBufferFull:
			continue
		case err == io.EOF:
			if len(*buf) == 0 && !tooLong {
				return nil, false, io.EOF
			}
			return *buf, tooLong, io.EOF
		case err != nil:
			return nil, false, err
		}
		return *buf, tooLong, nil
	}
}

// rawLine is every shape a corpus line may take.
type rawLine struct {
	ID     json.RawMessage `json:"id"`
	Title  *string         `json:"title"`
	Text   *string         `json:"text"`
	Chunks []string        `json:"chunks"`
	Ctxs   []struct {
		Title string `json:"title"`
		Text  string `json:"text"`
	} `json:"ctxs"`
}

func parseLine(line []byte, n int) ([]Document, error) {
	if line[0] != '{' {
		return nil, fmt.Errorf("%w: not a JSON object", ErrMalformed)
	}
	var rl rawLine
	if err := json.Unmarshal(line, &rl); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	id, err := docID(rl.ID, n)
	if err != nil {
		return nil, err
	}
	switch {
	case rl.Text != nil || rl.Chunks != nil:
		d := Document{ID: id, Text: deref(rl.Text), Chunks: rl.Chunks, Title: deref(rl.Title)}
		return []Document{d}, nil
	case rl.Ctxs != nil:
		docs := make([]Document, len(rl.Ctxs))
		for i, c := range rl.Ctxs {
			docs[i] = Document{ID: id + "." + strconv.Itoa(i), Title: c.Title, Text: c.Text}
		}
		return docs, nil
	}
	return nil, fmt.Errorf("%w: no \"text\", \"chunks\" or \"ctxs\" field", ErrMalformed)
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// docID accepts a string or a number id; none gives "line<n>".
func docID(raw json.RawMessage, n int) (string, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return "line" + strconv.Itoa(n), nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err == nil {
		if s == "" {
			return "line" + strconv.Itoa(n), nil
		}
		return s, nil
	}
	var f json.Number
	if err := json.Unmarshal(raw, &f); err == nil {
		return f.String(), nil
	}
	return "", fmt.Errorf("%w: id must be a string or a number, got %s", ErrMalformed, truncate(string(raw), 40))
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// OpenCorpus opens a corpus file; a .gz name (or gzip magic) is
// decompressed on the fly.
func OpenCorpus(path string) (io.ReadCloser, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	br := bufio.NewReader(f)
	magic, _ := br.Peek(2)
	if len(magic) == 2 && magic[0] == 0x1f && magic[1] == 0x8b {
		zr, err := gzip.NewReader(br)
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("fusion: %s: %w", path, err)
		}
		return &gzipFile{zr: zr, f: f}, nil
	}
	return &bufFile{r: br, f: f}, nil
}

type gzipFile struct {
	zr *gzip.Reader
	f  *os.File
}

func (g *gzipFile) Read(p []byte) (int, error) { return g.zr.Read(p) }
func (g *gzipFile) Close() error {
	g.zr.Close()
	return g.f.Close()
}

type bufFile struct {
	r *bufio.Reader
	f *os.File
}

func (b *bufFile) Read(p []byte) (int, error) { return b.r.Read(p) }
func (b *bufFile) Close() error               { return b.f.Close() }

// Chunk is one unit of KV: a window of a document presented with the
// Template.
type Chunk struct {
	// ID is "<document id>#<index>", index counting the document's chunks.
	ID string `json:"id"`
	// Title and Text are what the Template rendered.
	Title string `json:"title,omitempty"`
	Text  string `json:"text"`
	// Begin and End are the byte range [Begin, End) of Text in the
	// document's text (in its pre-chunk for a pre-chunked document).
	Begin int `json:"begin"`
	End   int `json:"end"`
	// Tokens are Template.Tokens(tok, Title, Text): the ids whose KV is stored.
	Tokens []int32 `json:"-"`
}

// Chunker splits documents into chunks of about Size tokens.
type Chunker struct {
	// Tokenizer encodes the text. Required.
	Tokenizer tokenizer.Tokenizer
	// Template presents chunks; zero value: DefaultTemplate.
	Template Template
	// Size is the number of document tokens per chunk (the template's come
	// on top). Default 256.
	Size int
	// Overlap is the number of tokens consecutive chunks share, in
	// [0, Size). Default 0.
	Overlap int
	// MaxTokens, when > 0, rejects chunks whose templated ids are longer
	// (the model's context minus S): Split returns ErrChunkTooLong for them.
	MaxTokens int
}

// Chunker defaults.
const (
	DefaultChunkTokens = 256
)

// ErrChunkTooLong: a chunk whose ids do not fit Chunker.MaxTokens.
var ErrChunkTooLong = errors.New("fusion: chunk longer than the model's context")

// NewChunker validates c and fills its defaults.
func NewChunker(c Chunker) (*Chunker, error) {
	if c.Tokenizer == nil {
		return nil, errors.New("fusion: Chunker.Tokenizer is nil (the model has no tokenizer: give one)")
	}
	if c.Template == (Template{}) {
		c.Template = DefaultTemplate
	}
	if err := c.Template.Validate(); err != nil {
		return nil, err
	}
	if c.Size == 0 {
		c.Size = DefaultChunkTokens
	}
	if c.Size < 1 {
		return nil, fmt.Errorf("fusion: chunk size %d must be >= 1", c.Size)
	}
	if c.Template.Whole && c.Overlap != 0 {
		return nil, fmt.Errorf("fusion: chunk overlap %d with a whole-document template: the windows of one presentation do not overlap", c.Overlap)
	}
	if c.Overlap < 0 || c.Overlap >= c.Size {
		return nil, fmt.Errorf("fusion: chunk overlap %d must be in [0, %d)", c.Overlap, c.Size)
	}
	return &c, nil
}

// Split cuts a document into chunks. Text is tokenized once and cut into
// windows of Size tokens, each starting Size-Overlap tokens after the
// previous one; a window's text is the document's bytes from its first to its
// last token (widened to whole UTF-8 characters, surrounding space trimmed),
// so a document of any length becomes many prefills of bounded size. A
// pre-chunked document's chunks are used as given, except that one longer
// than Size tokens is cut the same way. Chunks left empty are dropped.
func (c *Chunker) Split(d Document) ([]Chunk, error) {
	if c.Template.Whole {
		return c.splitWhole(d)
	}
	var wins []window
	if len(d.Chunks) > 0 {
		for _, t := range d.Chunks {
			wins = append(wins, c.windows(t)...)
		}
	} else {
		wins = c.windows(d.Text)
	}
	out := make([]Chunk, 0, len(wins))
	for _, w := range wins {
		ch := Chunk{ID: d.ID + "#" + strconv.Itoa(len(out)), Title: d.Title, Text: w.text, Begin: w.begin, End: w.end}
		ch.Tokens = c.Template.Tokens(c.Tokenizer, d.Title, w.text)
		if c.MaxTokens > 0 && len(ch.Tokens) > c.MaxTokens {
			return out, fmt.Errorf("%w: document %q chunk %d has %d tokens, limit %d", ErrChunkTooLong, d.ID, len(out), len(ch.Tokens), c.MaxTokens)
		}
		out = append(out, ch)
	}
	return out, nil
}

// window is one chunk's text and its byte range in the source text.
type window struct {
	text       string
	begin, end int
}

// trimmed returns the window of text[b:e] without surrounding space.
func trimmed(text string, b, e int) window {
	t := text[b:e]
	l := len(t) - len(strings.TrimLeftFunc(t, unicode.IsSpace))
	t = strings.TrimSpace(t)
	return window{text: t, begin: b + l, end: b + l + len(t)}
}

// windows cuts text into token windows.
func (c *Chunker) windows(text string) []window {
	whole := trimmed(text, 0, len(text))
	if whole.text == "" {
		return nil
	}
	_, spans := c.Tokenizer.EncodeOffsets(text)
	// Tokens without source bytes (a dummy prefix) carry no text.
	real := spans[:0:0]
	for _, s := range spans {
		if s.End > s.Begin {
			real = append(real, s)
		}
	}
	if len(real) <= c.Size {
		return []window{whole}
	}
	var out []window
	step := c.Size - c.Overlap
	for i := 0; ; i += step {
		j := min(i+c.Size, len(real))
		b, e := real[i].Begin, real[j-1].End
		for b > 0 && !utf8.RuneStart(text[b]) {
			b--
		}
		for e < len(text) && !utf8.RuneStart(text[e]) {
			e++
		}
		if w := trimmed(text, b, e); w.text != "" {
			out = append(out, w)
		}
		if j == len(real) {
			return out
		}
	}
}

// splitWhole is Split for a Template.Whole: each text (the document's, or
// each pre-chunk) is rendered once, encoded once with its byte offsets
// (without a dummy-prefix space the text does not have, as EncodeSegment),
// and cut into windows of at most Size ids of that encoding, template
// included, with fingerprint.Windows. A chunk's Tokens are its window's
// ids; Text, Begin and End are the document bytes the window covers.
func (c *Chunker) splitWhole(d Document) ([]Chunk, error) {
	texts := d.Chunks
	if len(texts) == 0 {
		texts = []string{d.Text}
	}
	var out []Chunk
	for _, text := range texts {
		lead := len(text) - len(strings.TrimLeftFunc(text, unicode.IsSpace))
		text = strings.TrimSpace(text)
		if text == "" {
			continue
		}
		whole := c.Template.Render(d.Title, text)
		at := strings.Index(whole, text) // the document's bytes in the rendering
		if at < 0 {
			return out, fmt.Errorf("fusion: document %q: the template does not hold its text", d.ID)
		}
		ids, offs := c.Tokenizer.EncodeOffsets(whole)
		if len(ids) > 1 && whole[0] != ' ' {
			if p := c.Tokenizer.Token(ids[0]); p == " " || p == "▁" {
				ids, offs = ids[1:], offs[1:]
			}
		}
		spans := make([]fingerprint.Span, len(offs))
		for i, o := range offs {
			spans[i] = fingerprint.Span{Begin: o.Begin, End: o.End}
		}
		for _, w := range fingerprint.Windows(whole, spans, fingerprint.Span{Begin: 0, End: len(ids)}, c.Size) {
			b := min(max(spans[w.Begin].Begin, at), at+len(text)) - at
			e := min(max(spans[w.End-1].End, at), at+len(text)) - at
			ch := Chunk{ID: d.ID + "#" + strconv.Itoa(len(out)), Title: d.Title, Text: text[b:e], Begin: lead + b, End: lead + e,
				Tokens: slices.Clone(ids[w.Begin:w.End])}
			if c.MaxTokens > 0 && len(ch.Tokens) > c.MaxTokens {
				return out, fmt.Errorf("%w: document %q chunk %d has %d tokens, limit %d", ErrChunkTooLong, d.ID, len(out), len(ch.Tokens), c.MaxTokens)
			}
			out = append(out, ch)
		}
	}
	return out, nil
}
