package tokenizer

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"os"
	"strings"
	"unicode/utf8"
)

// ErrFormat reports a tokenizer file that cannot be parsed.
var ErrFormat = errors.New("tokenizer: bad file format")

// Llama2c is the tokenizer of llama2.c checkpoints (tok*.bin): a
// SentencePiece-derived vocabulary with a score per piece, encoded exactly as
// llama2.c run.c does. Special tokens are not matched inside text (run.c
// never does; the vocabulary spells BOS/EOS as "\n<s>\n" and "\n</s>\n").
type Llama2c struct {
	vocab    []string
	scores   []float32
	ids      map[string]int32 // piece -> lowest id spelling it
	maxLen   int              // max_token_length from the header
	byteBase int32            // id of <0x00>, or -1 when the byte tokens are missing
	space    int32            // id of " " (the dummy prefix), or -1
	bos, eos int32
	fingerpr string
}

// llama2c ids fixed by the format (run.c hard-codes them).
const (
	llama2cBOS = 1
	llama2cEOS = 2
)

// LoadLlama2c reads a llama2.c tokenizer file: int32 max_token_length, then
// records {float32 score, int32 len, len bytes} up to the end of the file.
func LoadLlama2c(path string) (*Llama2c, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("tokenizer: %w", err)
	}
	t, err := ParseLlama2c(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return t, nil
}

// ParseLlama2c parses the bytes of a llama2.c tokenizer file.
func ParseLlama2c(b []byte) (*Llama2c, error) {
	if len(b) < 4 {
		return nil, fmt.Errorf("%w: %d bytes, no header", ErrFormat, len(b))
	}
	maxLen := int32(binary.LittleEndian.Uint32(b))
	if maxLen < 0 {
		return nil, fmt.Errorf("%w: max_token_length %d", ErrFormat, maxLen)
	}
	t := &Llama2c{ids: make(map[string]int32), maxLen: int(maxLen), byteBase: -1, space: -1}
	for off := 4; off < len(b); {
		if len(b)-off < 8 {
			return nil, fmt.Errorf("%w: truncated record %d at byte %d", ErrFormat, len(t.vocab), off)
		}
		score := math.Float32frombits(binary.LittleEndian.Uint32(b[off:]))
		n := int32(binary.LittleEndian.Uint32(b[off+4:]))
		off += 8
		if n < 0 || int(n) > len(b)-off {
			return nil, fmt.Errorf("%w: record %d length %d exceeds the file", ErrFormat, len(t.vocab), n)
		}
		piece := string(b[off : off+int(n)])
		off += int(n)
		id := int32(len(t.vocab))
		t.vocab = append(t.vocab, piece)
		t.scores = append(t.scores, score)
		if _, dup := t.ids[piece]; !dup {
			t.ids[piece] = id
		}
	}
	if len(t.vocab) < 3 {
		return nil, fmt.Errorf("%w: %d tokens, need at least <unk>, BOS, EOS", ErrFormat, len(t.vocab))
	}
	if id, ok := t.ids["<0x00>"]; ok && int(id)+256 <= len(t.vocab) {
		t.byteBase = id
		for i := int32(0); i < 256; i++ {
			if t.vocab[id+i] != fmt.Sprintf("<0x%02X>", i) {
				t.byteBase = -1
				break
			}
		}
	}
	if id, ok := t.ids[" "]; ok {
		t.space = id
	}
	t.bos, t.eos = llama2cBOS, llama2cEOS
	h := sha256.New()
	h.Write([]byte("llama2c\x00"))
	h.Write(b)
	t.fingerpr = hex.EncodeToString(h.Sum(nil))
	return t, nil
}

var _ Tokenizer = (*Llama2c)(nil)

// Encode returns the ids of text as run.c's encode(text, bos=0, eos=0).
func (t *Llama2c) Encode(text string) []int32 {
	ids, _ := t.EncodeOffsets(text)
	return ids
}

// EncodeOffsets is Encode plus byte spans. The dummy-prefix space that run.c
// puts before non-empty text has no source bytes: on its own it gets the
// empty span [0, 0); merged with the following piece (the usual case, e.g.
// " Once") the token spans that piece's bytes only. Byte-fallback tokens of
// one multi-byte character each get their own byte.
func (t *Llama2c) EncodeOffsets(text string) ([]int32, []Span) {
	if text == "" {
		return []int32{}, []Span{}
	}
	syms := make([]symbol, 0, len(text)+1)
	if t.space >= 0 {
		syms = append(syms, symbol{id: t.space})
	} else {
		// run.c would push -1 here (str_lookup of " " failing); the byte
		// token for ' ' is the closest well-formed behaviour.
		syms = t.appendBytes(syms, " ", 0, true)
	}
	for i := 0; i < len(text); {
		// run.c groups a byte with up to 3 following continuation bytes
		// (10xxxxxx), whether or not that is valid UTF-8.
		j := i + 1
		for j < len(text) && j-i < 4 && text[j]&0xC0 == 0x80 {
			j++
		}
		if id, ok := t.ids[text[i:j]]; ok {
			syms = append(syms, symbol{id: id, begin: i, end: j})
		} else {
			syms = t.appendBytes(syms, text[i:j], i, false)
		}
		i = j
	}
	syms = mergeSymbols(syms, t.pair)
	ids := make([]int32, len(syms))
	spans := make([]Span, len(syms))
	for i, s := range syms {
		ids[i] = s.id
		spans[i] = Span{s.begin, s.end}
	}
	return ids, spans
}

// appendBytes adds the byte-fallback tokens of s (id = byte + 3 in run.c,
// i.e. the <0xXX> tokens; <unk> when the vocabulary has none).
func (t *Llama2c) appendBytes(syms []symbol, s string, at int, empty bool) []symbol {
	for k := 0; k < len(s); k++ {
		id := int32(0)
		if t.byteBase >= 0 {
			id = t.byteBase + int32(s[k])
		}
		b, e := at+k, at+k+1
		if empty {
			b, e = at, at
		}
		syms = append(syms, symbol{id: id, begin: b, end: e})
	}
	return syms
}

// pair merges two ids when their concatenated pieces are a vocabulary piece;
// higher scores merge first.
func (t *Llama2c) pair(a, b int32) (float64, int32, bool) {
	id, ok := t.ids[t.vocab[a]+t.vocab[b]]
	if !ok {
		return 0, 0, false
	}
	return -float64(t.scores[id]), id, true
}

// Decode returns the text of ids as run.c's decode prints it: BOS is dropped,
// the piece after BOS loses its leading space, <0xXX> pieces become the raw
// byte. Other pieces (EOS's "\n</s>\n" included) are copied verbatim; ids out
// of range are skipped.
func (t *Llama2c) Decode(ids []int32) string {
	var sb strings.Builder
	prev := int32(-1)
	for _, id := range ids {
		sb.WriteString(t.piece(prev, id))
		prev = id
	}
	return sb.String()
}

// piece is the decoded text of id following prev.
func (t *Llama2c) piece(prev, id int32) string {
	if id < 0 || int(id) >= len(t.vocab) || id == t.bos {
		return ""
	}
	p := t.vocab[id]
	if prev == t.bos && strings.HasPrefix(p, " ") {
		p = p[1:]
	}
	if b, ok := byteToken(p); ok {
		return string([]byte{b})
	}
	return p
}

// byteToken parses a "<0xXX>" piece.
func byteToken(p string) (byte, bool) {
	if len(p) != 6 || p[:3] != "<0x" || p[5] != '>' {
		return 0, false
	}
	v, err := hex.DecodeString(p[3:5])
	if err != nil {
		return 0, false
	}
	return v[0], true
}

// Token returns the vocabulary piece of id.
func (t *Llama2c) Token(id int32) string {
	if id < 0 || int(id) >= len(t.vocab) {
		return ""
	}
	return t.vocab[id]
}

// Score returns the merge score of id (0 when out of range).
func (t *Llama2c) Score(id int32) float32 {
	if id < 0 || int(id) >= len(t.vocab) {
		return 0
	}
	return t.scores[id]
}

// MaxTokenLength is the header's max_token_length.
func (t *Llama2c) MaxTokenLength() int { return t.maxLen }

// VocabSize is the number of records in the file.
func (t *Llama2c) VocabSize() int { return len(t.vocab) }

// BOS is id 1.
func (t *Llama2c) BOS() int32 { return t.bos }

// EOS is id 2. (run.c's generate stops on BOS; callers that mimic it should
// also stop on BOS.)
func (t *Llama2c) EOS() []int32 { return []int32{t.eos} }

// AddBOS is true: llama2.c prompts start with BOS.
func (t *Llama2c) AddBOS() bool { return true }

// Fingerprint is the hex SHA-256 of the file's bytes.
func (t *Llama2c) Fingerprint() string { return t.fingerpr }

// NewDecoder returns a streaming decoder for this tokenizer.
func (t *Llama2c) NewDecoder() *Decoder {
	return newDecoder(t.bos, func(prev, id int32, _ bool) string { return t.piece(prev, id) })
}

// utf8Pending reports how many bytes at the end of b form an incomplete but
// so-far valid UTF-8 sequence (0 when b ends on a boundary or with bytes that
// can never complete).
func utf8Pending(b []byte) int {
	for k := 1; k <= 3 && k <= len(b); k++ {
		c := b[len(b)-k]
		if c&0xC0 == 0x80 {
			continue // continuation byte: look further back
		}
		if c < 0x80 {
			return 0
		}
		need := 0
		switch {
		case c&0xE0 == 0xC0:
			need = 2
		case c&0xF0 == 0xE0:
			need = 3
		case c&0xF8 == 0xF0:
			need = 4
		default:
			return 0
		}
		if need > k && !utf8.FullRune(b[len(b)-k:]) {
			return k
		}
		return 0
	}
	return 0
}
