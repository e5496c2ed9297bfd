package tokenizer

import (
	"fmt"
	"strings"
	"sync"
	"unicode/utf8"
)

// bpe is the Hugging Face "BPE" model: a vocabulary, ranked merges, and the
// options that Llama-3/Qwen2 (byte-level, ignore_merges) and
// Llama-2/Mistral (SentencePiece-style: byte_fallback, fuse_unk) use.
type bpe struct {
	vocab        map[string]int32
	merges       map[[2]int32]mergeRule
	unk          int32 // -1 when there is none
	fuseUnk      bool
	byteFallback bool
	ignoreMerges bool
	prefix       string // continuing_subword_prefix
	suffix       string // end_of_word_suffix
	byteIDs      [256]int32
	// wordStart, when set ("▁" for SentencePiece vocabularies), is a
	// string that no token has after another character unless that is
	// wordStart too: no merge can cross a boundary before it, so long
	// pieces are cut there into words that are merged (and cached) alone
	// with the same result.
	wordStart string

	cache wordCache
}

type mergeRule struct{ rank, id int32 }

// piece is one token of a word: id and the byte range [begin, end) of the word.
type piece struct {
	id         int32
	begin, end int32
}

// tokenize splits one pre-token into tokens, through the cache.
func (m *bpe) tokenize(w string) []piece {
	if ps, ok := m.cache.get(w); ok {
		return ps
	}
	ps := m.tokenizeUncached(w)
	m.cache.put(w, ps)
	return ps
}

// tokenizeWords is tokenize for a piece that may be long text: it is cut
// before every wordStart that follows another character (see wordStart).
func (m *bpe) tokenizeWords(w string, emit func(p piece, off int)) {
	if m.wordStart == "" {
		for _, p := range m.tokenize(w) {
			emit(p, 0)
		}
		return
	}
	start := 0
	for i := 1; i < len(w); {
		k := strings.Index(w[i:], m.wordStart)
		if k < 0 {
			break
		}
		i += k
		if !strings.HasSuffix(w[:i], m.wordStart) {
			for _, p := range m.tokenize(w[start:i]) {
				emit(p, start)
			}
			start = i
		}
		i += len(m.wordStart)
	}
	for _, p := range m.tokenize(w[start:]) {
		emit(p, start)
	}
}

// setWordStart enables word cutting at ws when the vocabulary allows it:
// ws is a token (so it never becomes part of a fused <unk> run) and no token
// has ws after another character.
func (m *bpe) setWordStart(ws string) {
	if _, ok := m.vocab[ws]; !ok {
		return
	}
	for tok := range m.vocab {
		if strings.Contains(strings.TrimLeft(tok, ws), ws) {
			return
		}
	}
	if m.prefix != "" || m.suffix != "" {
		return
	}
	m.wordStart = ws
}

// tokenizeBytes is tokenize for a word in a reused buffer: a cache hit
// allocates nothing.
func (m *bpe) tokenizeBytes(w []byte) []piece {
	if len(w) <= maxCachedWord {
		m.cache.mu.RLock()
		ps, ok := m.cache.m[string(w)]
		m.cache.mu.RUnlock()
		if ok {
			return ps
		}
	}
	return m.tokenize(string(w))
}

func (m *bpe) tokenizeUncached(w string) []piece {
	if w == "" {
		return nil
	}
	if m.ignoreMerges {
		if id, ok := m.vocab[w]; ok {
			return []piece{{id, 0, int32(len(w))}}
		}
	}
	syms := make([]symbol, 0, len(w))
	unkRun := false
	for i := 0; i < len(w); {
		_, size := utf8.DecodeRuneInString(w[i:])
		ch := w[i : i+size]
		if m.prefix != "" && i > 0 {
			ch = m.prefix + ch
		}
		if m.suffix != "" && i+size == len(w) {
			ch += m.suffix
		}
		if id, ok := m.vocab[ch]; ok {
			syms = append(syms, symbol{id: id, begin: i, end: i + size})
			unkRun = false
		} else if m.byteFallback && m.hasBytes(w[i:i+size]) {
			for k := i; k < i+size; k++ {
				syms = append(syms, symbol{id: m.byteIDs[w[k]], begin: k, end: k + 1})
			}
			unkRun = false
		} else if m.unk >= 0 {
			if m.fuseUnk && unkRun {
				syms[len(syms)-1].end = i + size
			} else {
				syms = append(syms, symbol{id: m.unk, begin: i, end: i + size})
			}
			unkRun = true
		}
		// Without <unk> the character is dropped, as the reference does.
		i += size
	}
	syms = mergeSymbols(syms, m.pair)
	out := make([]piece, len(syms))
	for i, s := range syms {
		out[i] = piece{s.id, int32(s.begin), int32(s.end)}
	}
	return out
}

func (m *bpe) hasBytes(s string) bool {
	for i := 0; i < len(s); i++ {
		if m.byteIDs[s[i]] < 0 {
			return false
		}
	}
	return true
}

func (m *bpe) pair(a, b int32) (float64, int32, bool) {
	r, ok := m.merges[[2]int32{a, b}]
	return float64(r.rank), r.id, ok
}

// setMerges builds the merge table from "a b" pairs in rank order.
func (m *bpe) setMerges(pairs [][2]string) error {
	m.merges = make(map[[2]int32]mergeRule, len(pairs))
	for rank, p := range pairs {
		a, ok1 := m.vocab[p[0]]
		b, ok2 := m.vocab[p[1]]
		merged := p[0] + strings.TrimPrefix(p[1], m.prefix)
		id, ok3 := m.vocab[merged]
		if !ok1 || !ok2 || !ok3 {
			return fmt.Errorf("%w: merge %d %q + %q: token not in the vocabulary", ErrFormat, rank, p[0], p[1])
		}
		// A repeated pair keeps its last rank, as the reference's map
		// building does.
		m.merges[[2]int32{a, b}] = mergeRule{int32(rank), id}
	}
	for b := range m.byteIDs {
		m.byteIDs[b] = -1
		if id, ok := m.vocab[fmt.Sprintf("<0x%02X>", b)]; ok {
			m.byteIDs[b] = id
		}
	}
	return nil
}

// wordCache remembers the tokens of pre-tokens (words repeat a lot in text).
// It is bounded: when full it is emptied and refilled, which keeps the hot
// words without any bookkeeping per hit. Words longer than maxCachedWord are
// not cached.
type wordCache struct {
	mu sync.RWMutex
	m  map[string][]piece
}

const (
	wordCacheSize = 1 << 16
	maxCachedWord = 256
)

func (c *wordCache) get(w string) ([]piece, bool) {
	if len(w) > maxCachedWord {
		return nil, false
	}
	c.mu.RLock()
	ps, ok := c.m[w]
	c.mu.RUnlock()
	return ps, ok
}

func (c *wordCache) put(w string, ps []piece) {
	if len(w) > maxCachedWord {
		return
	}
	c.mu.Lock()
	if c.m == nil || len(c.m) >= wordCacheSize {
		c.m = make(map[string][]piece, 1024)
	}
	c.m[strings.Clone(w)] = ps
	c.mu.Unlock()
}

// reset empties the cache (benchmarks measure the uncached path with it).
func (c *wordCache) reset() {
	c.mu.Lock()
	c.m = nil
	c.mu.Unlock()
}
