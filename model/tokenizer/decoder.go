package tokenizer

// Decoder turns a stream of ids into text, one id at a time, never emitting
// half a UTF-8 character: bytes of an incomplete character are held back
// until it completes (or until it can no longer complete, when they are
// emitted as they are). A Decoder is not safe for concurrent use.
//
// To stream a continuation, feed the prompt's ids first and discard their
// text: some decoders treat the first token of a text specially (the
// SentencePiece prefix space).
type Decoder struct {
	piece   func(prev, id int32, first bool) string
	bos     int32
	prev    int32
	started bool   // a non-BOS id was seen
	buf     []byte // held-back bytes of an incomplete character
}

func newDecoder(bos int32, piece func(prev, id int32, first bool) string) *Decoder {
	return &Decoder{piece: piece, bos: bos, prev: -1}
}

// Add feeds one id and returns the text that became complete.
func (d *Decoder) Add(id int32) string {
	d.buf = append(d.buf, d.piece(d.prev, id, !d.started)...)
	d.prev = id
	if id != d.bos {
		d.started = true
	}
	k := utf8Pending(d.buf)
	out := string(d.buf[:len(d.buf)-k])
	d.buf = append(d.buf[:0], d.buf[len(d.buf)-k:]...)
	return out
}

// Flush returns the held-back bytes (an incomplete character at the end of
// the stream) and resets the hold.
func (d *Decoder) Flush() string {
	out := string(d.buf)
	d.buf = d.buf[:0]
	return out
}
