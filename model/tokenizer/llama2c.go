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
	// cutSpace: no piece has a space after another character, so no merge
	// crosses the boundary before a space that follows a non-space, and
	// text is encoded (and cached) word by word there with the same result.
	cutSpace bool
	cache    wordCache
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
	t.cutSpace = true
	for _, p := range t.vocab {
		if strings.Contains(strings.TrimLeft(p, " "), " ") {
			t.cutSpace = false
			break
		}
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
// one multi-byte character each get their own byte. When " " is not in the
// vocabulary (run.c would then emit id -1) the dummy prefix is the byte
// token of ' '.
func (t *Llama2c) EncodeOffsets(text string) ([]int32, []Span) {
	if text == "" {
		return []int32{}, []Span{}
	}
	// Encode key = dummy prefix + text; key offset o is text offset o-1,
	// and the dummy's byte maps to the empty span [0, 0).
	key := " " + text
	ids := make([]int32, 0, len(text)/3+1)
	spans := make([]Span, 0, cap(ids))
	src := func(o int) int { return max(o-1, 0) }
	emit := func(a, b int) {
		for _, p := range t.merge(key[a:b], a == 0) {
			ids = append(ids, p.id)
			spans = append(spans, Span{src(a + int(p.begin)), src(a + int(p.end))})
		}
	}
	spaceWords(key, t.cutSpace, emit)
	return ids, spans
}

// merge runs run.c's encoding on one word (code points, byte fallback,
// best-score merges), through the word cache. dummy says w starts with the
// dummy prefix, which is a token of its own: it never groups with the
// continuation bytes that may follow it (cached under "\x00" + w; no other
// word starts with a NUL, they start at a space).
func (t *Llama2c) merge(w string, dummy bool) []piece {
	ck := w
	if dummy {
		ck = "\x00" + w
	}
	if ps, ok := t.cache.get(ck); ok {
		return ps
	}
	syms := make([]symbol, 0, len(w))
	for i := 0; i < len(w); {
		// run.c groups a byte with up to 3 following continuation bytes
		// (10xxxxxx), whether or not that is valid UTF-8.
		j := i + 1
		for j < len(w) && j-i < 4 && w[j]&0xC0 == 0x80 && !(dummy && i == 0) {
			j++
		}
		if id, ok := t.ids[w[i:j]]; ok {
			syms = append(syms, symbol{id: id, begin: i, end: j})
		} else {
			for k := i; k < j; k++ {
				id := int32(0) // <unk> when the vocabulary has no byte tokens
				if t.byteBase >= 0 {
					id = t.byteBase + int32(w[k])
				}
				syms = append(syms, symbol{id: id, begin: k, end: k + 1})
			}
		}
		i = j
	}
	syms = mergeSymbols(syms, t.pair)
	ps := make([]piece, len(syms))
	for i, s := range syms {
		ps[i] = piece{s.id, int32(s.begin), int32(s.end)}
	}
	t.cache.put(ck, ps)
	return ps
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

// spaceWords calls emit with each word [a, b) of key, the dummy-prefixed
// text: with cut, key is cut before every space that follows a non-space (a
// word keeps the spaces in front of it, as sentencepiece's pre-split does);
// without, key is one word.
func spaceWords(key string, cut bool, emit func(a, b int)) {
	start := 0
	if cut {
		for i := 1; i < len(key); i++ {
			if key[i] == ' ' && key[i-1] != ' ' {
				emit(start, i)
				start = i
			}
		}
	}
	emit(start, len(key))
}
