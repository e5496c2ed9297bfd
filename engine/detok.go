package engine

import (
	"strings"
	"unicode/utf8"

	"github.com/fusionrag/fusionrag/model/tokenizer"
)

// contextIDs is how many prompt ids seed the incremental detokenizer, so the
// first generated token decodes as it does in context (leading spaces of
// SentencePiece pieces, byte-fallback sequences).
const contextIDs = 6

// textStream turns generated ids into text deltas. It decodes incrementally
// the way vLLM does (the text of a window of ids minus the text of its
// prefix), holds back bytes of an incomplete UTF-8 character, and holds back
// any tail that could be the beginning of a stop string. Not safe for
// concurrent use.
type textStream struct {
	tok       tokenizer.Tokenizer
	ids       []int32
	prefixOff int // ids[prefixOff:readOff] is the decoded context of the next piece
	readOff   int
	text      []byte // generated text so far (after the prompt)
	emitted   int    // bytes of text already returned
	stops     []string
	maxStop   int
	stopped   bool
}

func newTextStream(tok tokenizer.Tokenizer, prompt []int32, stops []string) *textStream {
	ctx := prompt[max(0, len(prompt)-contextIDs):]
	d := &textStream{tok: tok, ids: append([]int32(nil), ctx...), readOff: len(ctx), stops: stops}
	for _, s := range stops {
		d.maxStop = max(d.maxStop, len(s))
	}
	return d
}

// Add feeds one generated id and returns the text that became final. stop
// reports that a stop string was matched: the text up to (not including) it
// has been returned and nothing more will be.
func (d *textStream) Add(id int32) (delta string, stop bool) {
	if d.stopped {
		return "", true
	}
	d.ids = append(d.ids, id)
	prefix := d.tok.Decode(d.ids[d.prefixOff:d.readOff])
	full := d.tok.Decode(d.ids[d.prefixOff:])
	pending := len(d.ids) - d.readOff
	grew := len(full) > len(prefix) && strings.HasPrefix(full, prefix)
	if !grew || incompleteUTF8(full) {
		// Nothing new yet, or a character is still incomplete: wait, but not
		// forever (bytes that never complete are really invalid).
		if pending < 8 {
			return "", false
		}
		if !grew {
			if pending < 64 {
				return "", false
			}
			d.prefixOff, d.readOff = d.readOff, len(d.ids) // give up on these ids
			return "", false
		}
	}
	before := len(d.text)
	d.text = append(d.text, full[len(prefix):]...)
	d.prefixOff, d.readOff = d.readOff, len(d.ids)
	return d.release(before)
}

// release searches new text for stop strings and returns what can be emitted.
func (d *textStream) release(before int) (string, bool) {
	if len(d.stops) > 0 {
		from := max(0, before-d.maxStop+1)
		cut := -1
		for _, s := range d.stops {
			if i := strings.Index(string(d.text[from:]), s); i >= 0 && (cut < 0 || from+i < cut) {
				cut = from + i
			}
		}
		if cut >= 0 {
			d.stopped = true
			d.text = d.text[:cut]
			return d.take(len(d.text)), true
		}
	}
	return d.take(len(d.text) - d.holdBack()), false
}

// holdBack is the length of the longest tail of text that is a proper prefix
// of a stop string.
func (d *textStream) holdBack() int {
	h := 0
	for _, s := range d.stops {
		for n := min(len(s)-1, len(d.text)); n > h; n-- {
			if string(d.text[len(d.text)-n:]) == s[:n] {
				h = n
				break
			}
		}
	}
	return h
}

func (d *textStream) take(end int) string {
	if end <= d.emitted {
		return ""
	}
	s := string(d.text[d.emitted:end])
	d.emitted = end
	return s
}

// Flush returns everything not yet emitted (held-back text) at the end of a
// completion that did not stop on a stop string.
func (d *textStream) Flush() string {
	if d.stopped {
		return ""
	}
	if d.readOff < len(d.ids) { // an incomplete character at the very end
		prefix := d.tok.Decode(d.ids[d.prefixOff:d.readOff])
		full := d.tok.Decode(d.ids[d.prefixOff:])
		if strings.HasPrefix(full, prefix) {
			d.text = append(d.text, full[len(prefix):]...)
		}
		d.readOff = len(d.ids)
	}
	return d.take(len(d.text))
}

// Text is the whole completion text so far (stop string excluded).
func (d *textStream) Text() string { return string(d.text) }

// incompleteUTF8 reports whether s ends inside a UTF-8 character (or with
// the replacement character a decoder emits for one).
func incompleteUTF8(s string) bool {
	if strings.HasSuffix(s, "\uFFFD") {
		return true
	}
	r, size := utf8.DecodeLastRuneInString(s)
	return r == utf8.RuneError && size <= 1 && len(s) > 0
}
