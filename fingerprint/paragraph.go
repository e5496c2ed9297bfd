package fingerprint

import "slices"

// Convention (d): passages found by the layout RAG frameworks give them.
//
// LangChain ("Context: {context}", documents joined by "\n\n"), LlamaIndex
// ("---------------------\n{context_str}\n---------------------", nodes
// joined by "\n\n", each perhaps after "file_path: x" metadata and a blank
// line), Haystack and hand-written prompts put retrieved passages into the
// prompt as blocks of text separated by blank lines, with no marker. A
// prompt that carries none of the other conventions is cut there: every
// block of at least MinTokens tokens is a chunk; shorter blocks (a metadata
// line, a rule, "Context:") are glue owned by the chunk that follows them,
// or part of S before the first chunk and of Q after the last. Blocks are
// found in the text and mapped onto the engine's ids through the tokens'
// byte offsets, like separators and markers, so the same prompt always cuts
// the same way and a chunk's ids are exactly its ids in context.

// Paragraphs configures convention (d). The zero value selects the defaults.
type Paragraphs struct {
	// MinTokens is the fewest tokens a blank-line block needs to be a chunk
	// (0: DefaultParagraphMinTokens). Shorter blocks are glue.
	MinTokens int
	// MaxTokens is the most tokens of one chunk (0:
	// DefaultParagraphMaxTokens): a longer block is cut into windows of at
	// most MaxTokens tokens on the prompt's own ids, preferably before a
	// token that starts with white space.
	MaxTokens int
}

// Defaults of Paragraphs. 256 is fusion.DefaultChunkTokens, the ingest's
// chunk size.
const (
	DefaultParagraphMinTokens = 32
	DefaultParagraphMaxTokens = 256
)

func (p Paragraphs) withDefaults() Paragraphs {
	if p.MinTokens <= 0 {
		p.MinTokens = DefaultParagraphMinTokens
	}
	if p.MaxTokens <= 0 {
		p.MaxTokens = DefaultParagraphMaxTokens
	}
	p.MaxTokens = max(p.MaxTokens, 1)
	return p
}

// block is a run of non-blank lines: bytes [begin, end) of the text (no
// trailing newline), its lines, and sep, the first byte of the blank-line
// separator before it (begin when it starts the text or follows a single
// newline only).
type block struct {
	sep, begin, end int
	lines           []Span // byte spans, without their "\n"
}

// isBlankByte reports the bytes a blank line may hold besides "\n".
func isBlankByte(c byte) bool { return c == ' ' || c == '\t' || c == '\r' || c == '\f' || c == '\v' }

// blocks splits text into runs of non-blank lines. A line is blank when it
// holds only spaces, tabs, carriage returns or form feeds.
func blocks(text string) []block {
	var out []block
	var cur *block
	sep := 0 // start of the current run of blank lines
	for at := 0; at <= len(text); {
		end := at
		for end < len(text) && text[end] != '\n' {
			end++
		}
		blank := true
		for i := at; i < end; i++ {
			if !isBlankByte(text[i]) {
				blank = false
				break
			}
		}
		switch {
		case blank:
			if cur != nil {
				out = append(out, *cur)
				cur = nil
				sep = at - 1 // the newline that ended the block's last line
			}
		case cur == nil:
			s := sep
			if len(out) == 0 && s == 0 {
				s = at
			}
			cur = &block{sep: min(s, at), begin: at}
			fallthrough
		default:
			cur.end = end
			cur.lines = append(cur.lines, Span{at, end})
		}
		at = end + 1
	}
	if cur != nil {
		out = append(out, *cur)
	}
	return out
}

// tokenAt is the index of the first token beginning at or after byte b
// (Cut's rule, used by Cut and by the paragraph windows), and whether no
// token straddles b.
func tokenAt(offsets []Span, b int) (int, bool) {
	lo, hi := 0, len(offsets)
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if offsets[m].Begin < b {
			lo = m + 1
		} else {
			hi = m
		}
	}
	return lo, lo == 0 || offsets[lo-1].End <= b
}

// cutPoint is a chunk boundary in tokens and whether it is exact.
type cutPoint struct {
	tok   int
	exact bool
}

// ParagraphChunks returns the chunk spans of convention (d) in a prompt:
// text is what the engine tokenizes, offsets[i] the byte span of token i in
// it (EncodeOffsets; BOS first with an empty span), and no chunk begins
// before token minPrefix (S holds at least the BOS). The spans are in
// order, do not overlap, and leave a non-empty Q after the last; exact[i]
// reports that chunk i's ends fall between tokens. Nil when the prompt has
// no block long enough, or none that leaves a question after it.
//
// A block of at least MinTokens tokens is a chunk together with the glue in
// front of it: the blank lines before it, and the short blocks since the
// previous chunk. The first chunk begins at the blank lines before its
// block (short blocks before it are S). The block holding the end of the
// text is Q unless it ends with short lines: those are Q, the rest of the
// block a chunk when it is still long enough. A chunk over MaxTokens is cut
// into windows on the ids.
func ParagraphChunks(text string, offsets []Span, minPrefix int, p Paragraphs) (chunks []Span, exact []bool) {
	p = p.withDefaults()
	n := len(offsets)
	minPrefix = max(minPrefix, 0)
	if n == 0 || minPrefix >= n {
		return nil, nil
	}
	tokens := func(b, e int) int {
		i, _ := tokenAt(offsets, b)
		j, _ := tokenAt(offsets, e)
		return j - i
	}
	bs := blocks(text)
	// The block that ends the text: Q is its trailing short lines (or all
	// of it).
	qFrom := len(text)
	if len(bs) > 0 {
		last := &bs[len(bs)-1]
		k := len(last.lines)
		for k > 0 && tokens(last.lines[k-1].Begin, last.lines[k-1].End) < p.MinTokens {
			k--
		}
		switch {
		case k == len(last.lines) || k == 0:
			qFrom = last.sep // the whole block is Q
			bs = bs[:len(bs)-1]
		default:
			qFrom = last.lines[k-1].End // Q starts at the newline after the last long line
			last.end = qFrom
			last.lines = last.lines[:k]
		}
	}
	var cuts []cutPoint // alternating chunk begin / end, in tokens
	glueFrom := -1      // where the next chunk begins (the glue after the previous chunk)
	for _, b := range bs {
		if b.end <= b.begin || tokens(b.begin, b.end) < p.MinTokens {
			continue
		}
		from := b.sep
		if glueFrom >= 0 {
			from = glueFrom
		}
		bt, bex := tokenAt(offsets, from)
		et, eex := tokenAt(offsets, b.end)
		bt = max(bt, minPrefix)
		if et <= bt {
			continue
		}
		glueFrom = b.end
		cuts = append(cuts, cutPoint{bt, bex}, cutPoint{et, eex})
	}
	qt, _ := tokenAt(offsets, qFrom)
	for i := 0; i+1 < len(cuts); i += 2 {
		c := Span{cuts[i].tok, min(cuts[i+1].tok, qt)}
		if c.Len() <= 0 {
			break
		}
		ex := cuts[i].exact && cuts[i+1].exact
		for _, w := range windows(text, offsets, c, p.MaxTokens) {
			chunks = append(chunks, w)
			exact = append(exact, ex)
		}
	}
	// Q must be non-empty.
	for len(chunks) > 0 && chunks[len(chunks)-1].End >= n {
		chunks, exact = chunks[:len(chunks)-1], exact[:len(exact)-1]
	}
	return chunks, exact
}

// Windows cuts the token span c of a text into pieces of at most limit
// tokens the way convention (d) cuts a passage longer than
// Paragraphs.MaxTokens: offsets are the tokens' byte spans in text. An
// ingest that cuts a document with it over the document's own ids gets the
// chunks the sidecar finds when the document is presented whole.
func Windows(text string, offsets []Span, c Span, limit int) []Span {
	if limit < 1 || c.Begin < 0 || c.End > len(offsets) || c.End <= c.Begin {
		return nil
	}
	return windows(text, offsets, c, limit)
}

// windows cuts span c into pieces of at most limit tokens. A cut goes before
// the last token in the second half of the window that begins with white
// space (a word start), else after limit tokens: the same ids always cut the
// same way.
func windows(text string, offsets []Span, c Span, limit int) []Span {
	var out []Span
	for c.Len() > limit {
		cut := c.Begin + limit
		for j := cut; j > c.Begin+limit/2; j-- {
			if b := offsets[j].Begin; offsets[j].End > b && b < len(text) && isSpaceByte(text[b]) {
				cut = j
				break
			}
		}
		out = append(out, Span{c.Begin, cut})
		c.Begin = cut
	}
	return append(out, c)
}

func isSpaceByte(c byte) bool { return c == ' ' || c == '\n' || isBlankByte(c) }

// SegmentParagraphs segments a prompt by known chunks (convention c, the
// indexes xs) and passages (convention d) together: ids are the engine's
// ids, text and offsets what they were encoded from (len(offsets) ==
// len(ids)). Known chunks take precedence where they match; passages fill in
// the rest after the first known chunk (what precedes it is S, as in
// SegmentAny: chunk keys include S): a passage that overlaps a known chunk
// keeps only what lies outside it, and tokens between two known chunks that no passage covers
// form a chunk of their own (Exact false), as in SegmentAny. ok is false
// when neither finds a chunk. how is "index", "paragraphs", or
// "index+paragraphs".
func SegmentParagraphs(ids []int32, text string, offsets []Span, minPrefix int, p Paragraphs, xs ...*ChunkIndex) (seg Segments, how string, ok bool) {
	if len(offsets) != len(ids) || len(ids) == 0 {
		return Segments{}, "", false
	}
	minPrefix = max(minPrefix, 0)
	known := findAny(ids, minPrefix, xs)
	for len(known) > 0 && known[len(known)-1].End >= len(ids) {
		known = known[:len(known)-1]
	}
	pars, pex := ParagraphChunks(text, offsets, minPrefix, p)
	type piece struct {
		Span
		known, exact bool
		remnant      bool // what a known chunk left of a passage
	}
	var all []piece
	for _, k := range known {
		all = append(all, piece{k, true, true, false})
	}
	npar := 0
	for i, c := range pars {
		// Subtract the known spans from c.
		rest := []Span{c}
		for _, k := range known {
			var next []Span
			for _, r := range rest {
				if k.End <= r.Begin || k.Begin >= r.End {
					next = append(next, r)
					continue
				}
				if k.Begin > r.Begin {
					next = append(next, Span{r.Begin, k.Begin})
				}
				if k.End < r.End {
					next = append(next, Span{k.End, r.End})
				}
			}
			rest = next
		}
		for _, r := range rest {
			if len(known) > 0 && r.End <= known[0].Begin {
				// Before the first known chunk: S. Its KV was stored after
				// what precedes it (an ingest's fusion.system, a system
				// message long enough to be a passage); a passage cut there
				// would change S, hence every known chunk's key.
				continue
			}
			// A piece cut by a known chunk is exact at that end (a token boundary).
			all = append(all, piece{r, false, pex[i], r != c})
			npar++
		}
	}
	if len(all) == 0 {
		return Segments{}, "", false
	}
	slices.SortFunc(all, func(a, b piece) int { return a.Begin - b.Begin })
	if all[0].Begin < minPrefix || all[0].Begin == 0 {
		return Segments{}, "", false // broken invariant of the finders; decline rather than panic
	}
	seg = Segments{Prefix: Span{0, all[0].Begin}, Exact: []bool{}}
	at := all[0].Begin
	minTok := p.withDefaults().MinTokens
	for i, c := range all {
		if i > 0 && c.remnant && !all[i-1].known && c.Begin == at && c.Len() < minTok {
			// What a known chunk left of a passage, too short to stand
			// alone (the blank lines before the known chunk), stays
			// with the passage before it.
			seg.Chunks[len(seg.Chunks)-1].End = c.End
			seg.Exact[len(seg.Exact)-1] = seg.Exact[len(seg.Exact)-1] && c.exact
			at = c.End
			continue
		}
		if c.Begin > at {
			switch {
			case !c.known:
				c.Begin = at // glue goes with the passage that follows
			case i > 0 && !all[i-1].known:
				seg.Chunks[len(seg.Chunks)-1].End = c.Begin // or with the passage before a known chunk
			default:
				seg.Chunks = append(seg.Chunks, Span{at, c.Begin})
				seg.Exact = append(seg.Exact, false)
			}
		}
		seg.Chunks = append(seg.Chunks, c.Span)
		seg.Exact = append(seg.Exact, c.exact)
		at = c.End
	}
	seg.Question = Span{at, len(ids)}
	switch {
	case len(known) == 0:
		how = "paragraphs"
	case npar == 0:
		how = "index"
	default:
		how = "index+paragraphs"
	}
	return seg, how, seg.Validate(len(ids)) == nil
}
