package tokenizer

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"sort"
	"strings"
)

// GGUFMeta is the read side of a GGUF file's metadata that FromGGUF needs
// (implemented by package model): Get returns a scalar as its Go value
// (string, bool, integers, floats), an array as []string, []float32, []int32,
// []uint32 or []any, and nil when the key is absent.
type GGUFMeta interface {
	Get(key string) any
}

// GGUFKV is one metadata entry GGUFMetadata produces for a GGUF writer.
// Value is a string, bool, uint32, float32, []string, []float32 or []int32.
type GGUFKV struct {
	Key   string
	Value any
}

// llama.cpp token types (tokenizer.ggml.token_type; llama_token_type).
const (
	ggufTokNormal      = 1
	ggufTokUnknown     = 2
	ggufTokControl     = 3
	ggufTokUserDefined = 4
	ggufTokUnused      = 5
	ggufTokByte        = 6
)

// ggufSpace is SentencePiece's escaped space, U+2581 "▁".
const ggufSpace = "\u2581"

// GGUF pre-tokenizer regexes (tokenizer.ggml.pre), in the Hugging Face form
// this package's regex engine runs (llama.cpp carries the same expressions,
// adapted for std::regex, in src/llama-vocab.cpp).
const (
	ggufLlama3Pattern = `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
	ggufQwen2Pattern  = `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
)

// ggufPre maps the tokenizer.ggml.pre names supported to their split regex
// ("" = GPT-2's ByteLevel regex) and whether llama.cpp sets ignore_merges
// and add_bos for them.
var ggufPre = map[string]struct {
	pattern     string
	ignoreMerge bool
	addBOS      bool
}{
	"llama3":           {ggufLlama3Pattern, true, true},
	"llama-v3":         {ggufLlama3Pattern, true, true},
	"llama-bpe":        {ggufLlama3Pattern, true, true},
	"qwen2":            {ggufQwen2Pattern, false, false},
	"deepseek-r1-qwen": {ggufQwen2Pattern, false, false},
	"gpt-2":            {"", false, false},
}

// FromGGUF builds the tokenizer a GGUF file describes:
//
//   - tokenizer.ggml.model "llama": SentencePiece-style (tokens with "▁" for
//     space, scores, token_type, <0xNN> byte fallback, dummy-prefix space),
//     encoded exactly as llama.cpp's SPM tokenizer, which for text without
//     special tokens is llama2.c run.c's algorithm (see GGUFSPM);
//   - "gpt2": byte-level BPE (tokens + merges) with the pre-tokenizer named by
//     tokenizer.ggml.pre (llama3/llama-bpe, qwen2, gpt-2), built as an HF
//     tokenizer;
//
// anything else fails with ErrUnsupported. tokenizer.chat_template becomes
// the chat template.
func FromGGUF(meta GGUFMeta) (Tokenizer, error) {
	model, _ := meta.Get("tokenizer.ggml.model").(string)
	tokens, ok := meta.Get("tokenizer.ggml.tokens").([]string)
	if !ok || len(tokens) == 0 {
		return nil, fmt.Errorf("%w: gguf tokenizer.ggml.tokens missing or not a string array", ErrFormat)
	}
	types, err := ggufInt32s(meta, "tokenizer.ggml.token_type", len(tokens))
	if err != nil {
		return nil, err
	}
	tmpl, _ := meta.Get("tokenizer.chat_template").(string)
	switch model {
	case "llama":
		return newGGUFSPM(meta, tokens, types, tmpl)
	case "gpt2":
		return newGGUFBPE(meta, tokens, types, tmpl)
	}
	return nil, fmt.Errorf("%w: gguf tokenizer.ggml.model %q (supported: llama, gpt2)", ErrUnsupported, model)
}

// ggufInt32s reads an optional per-token int32 array of length n.
func ggufInt32s(meta GGUFMeta, key string, n int) ([]int32, error) {
	v := meta.Get(key)
	if v == nil {
		return nil, nil
	}
	a, ok := v.([]int32)
	if !ok {
		if u, ok2 := v.([]uint32); ok2 {
			a = make([]int32, len(u))
			for i, x := range u {
				a[i] = int32(x)
			}
			ok = true
		}
	}
	if !ok || len(a) != n {
		return nil, fmt.Errorf("%w: gguf %s: want %d int32, got %T", ErrFormat, key, n, v)
	}
	return a, nil
}

// ggufID reads an optional token id key; -1 when absent or out of [0, n).
func ggufID(meta GGUFMeta, key string, n int) int32 {
	var id int64 = -1
	switch x := meta.Get(key).(type) {
	case uint32:
		id = int64(x)
	case int32:
		id = int64(x)
	case uint64:
		if x < math.MaxInt32 {
			id = int64(x)
		}
	case int64:
		id = x
	}
	if id < 0 || id >= int64(n) {
		return -1
	}
	return int32(id)
}

func ggufBool(meta GGUFMeta, key string, def bool) bool {
	if b, ok := meta.Get(key).(bool); ok {
		return b
	}
	return def
}

// GGUFSPM is a SentencePiece-style GGUF tokenizer ("llama"). Text is split at
// special tokens (CONTROL, USER_DEFINED and UNKNOWN pieces, longest first, as
// llama.cpp's tokenizer_st_partition does with parse_special); every text
// fragment then gets the dummy-prefix space (llama.cpp prefixes the first
// fragment and every fragment after a special token, which is all of them)
// and is encoded as llama.cpp's llm_tokenizer_spm does (see word; on
// SentencePiece vocabularies that is llama2.c run.c's result, and the
// vocabulary, scores and Decode are Llama2c's). Known difference: a literal "▁" in the input
// is a space to llama.cpp (it escapes spaces to "▁" before merging) but
// byte-fallback here.
type GGUFSPM struct {
	*Llama2c
	tokens   []string       // as in the file ("▁" escaped)
	types    []int32        // token_type as in the file (all NORMAL when absent)
	special  []specialPiece // longest first
	unk      int32          // tokenizer.ggml.unknown_token_id, else 0
	cache    wordCache      // word -> pieces (llama.cpp's rules, not Llama2c's)
	addBOS   bool
	eos      []int32
	template string
}

type specialPiece struct {
	text string
	id   int32
}

func newGGUFSPM(meta GGUFMeta, tokens []string, types []int32, tmpl string) (*GGUFSPM, error) {
	scores, _ := meta.Get("tokenizer.ggml.scores").([]float32)
	if scores != nil && len(scores) != len(tokens) {
		return nil, fmt.Errorf("%w: gguf tokenizer.ggml.scores has %d entries, tokens %d", ErrFormat, len(scores), len(tokens))
	}
	if !ggufBool(meta, "tokenizer.ggml.add_space_prefix", true) {
		return nil, fmt.Errorf("%w: gguf llama tokenizer with add_space_prefix false", ErrUnsupported)
	}
	if ggufBool(meta, "tokenizer.ggml.remove_extra_whitespaces", false) {
		return nil, fmt.Errorf("%w: gguf llama tokenizer with remove_extra_whitespaces", ErrUnsupported)
	}
	// Rebuild the vocabulary as a llama2.c tokenizer file and parse it:
	// the pieces with "▁" unescaped to " ".
	maxLen := 0
	var b []byte
	b = binary.LittleEndian.AppendUint32(b, 0)
	for i, tok := range tokens {
		p := strings.ReplaceAll(tok, ggufSpace, " ")
		maxLen = max(maxLen, len(p))
		var s float32
		if scores != nil {
			s = scores[i]
		}
		b = binary.LittleEndian.AppendUint32(b, math.Float32bits(s))
		b = binary.LittleEndian.AppendUint32(b, uint32(len(p)))
		b = append(b, p...)
	}
	binary.LittleEndian.PutUint32(b, uint32(maxLen))
	lc, err := ParseLlama2c(b)
	if err != nil {
		return nil, err
	}
	n := len(tokens)
	if types == nil {
		types = make([]int32, len(tokens))
		for i := range types {
			types[i] = ggufTokNormal
		}
	}
	t := &GGUFSPM{Llama2c: lc, tokens: tokens, types: types, template: tmpl}
	t.unk = max(ggufID(meta, "tokenizer.ggml.unknown_token_id", n), 0)
	lc.bos = ggufID(meta, "tokenizer.ggml.bos_token_id", n)
	lc.eos = ggufID(meta, "tokenizer.ggml.eos_token_id", n)
	t.addBOS = ggufBool(meta, "tokenizer.ggml.add_bos_token", true) && lc.bos >= 0
	if lc.eos >= 0 {
		t.eos = append(t.eos, lc.eos)
	}
	if id := ggufID(meta, "tokenizer.ggml.eot_token_id", n); id >= 0 && id != lc.eos {
		t.eos = append(t.eos, id)
	}
	for i, ty := range types {
		if (ty == ggufTokControl || ty == ggufTokUserDefined || ty == ggufTokUnknown) && tokens[i] != "" {
			t.special = append(t.special, specialPiece{tokens[i], int32(i)})
		}
	}
	sort.SliceStable(t.special, func(i, j int) bool { return len(t.special[i].text) > len(t.special[j].text) })
	h := sha256.New()
	h.Write([]byte("gguf-spm\x00"))
	h.Write(b)
	for _, ty := range types {
		h.Write(binary.LittleEndian.AppendUint32(nil, uint32(ty)))
	}
	fmt.Fprintf(h, "\x00bos=%d add_bos=%v eos=%v", lc.bos, t.addBOS, t.eos)
	lc.fingerpr = hex.EncodeToString(h.Sum(nil))
	return t, nil
}

var _ Tokenizer = (*GGUFSPM)(nil)

// fragment is a run of text [begin, end) or a special token (id >= 0).
type fragment struct {
	begin, end int
	id         int32
}

// partition splits text at special tokens, longest token first.
func (t *GGUFSPM) partition(text string) []fragment {
	frags := []fragment{{0, len(text), -1}}
	for _, sp := range t.special {
		var out []fragment
		for _, f := range frags {
			if f.id >= 0 {
				out = append(out, f)
				continue
			}
			at := f.begin
			for {
				i := strings.Index(text[at:f.end], sp.text)
				if i < 0 {
					break
				}
				if at < at+i {
					out = append(out, fragment{at, at + i, -1})
				}
				out = append(out, fragment{at + i, at + i + len(sp.text), sp.id})
				at += i + len(sp.text)
			}
			if at < f.end {
				out = append(out, fragment{at, f.end, -1})
			}
		}
		frags = out
	}
	return frags
}

// Encode returns the ids of text as llama.cpp's SPM tokenizer with
// parse_special (BOS not added).
func (t *GGUFSPM) Encode(text string) []int32 {
	ids, _ := t.EncodeOffsets(text)
	return ids
}

// EncodeOffsets is Encode plus byte spans (the dummy prefix's span as in
// Llama2c.EncodeOffsets: empty alone, else the bytes of the piece it merged
// with).
func (t *GGUFSPM) EncodeOffsets(text string) ([]int32, []Span) {
	ids, spans := []int32{}, []Span{}
	for _, f := range t.partition(text) {
		if f.id >= 0 {
			ids = append(ids, f.id)
			spans = append(spans, Span{f.begin, f.end})
			continue
		}
		ids, spans = t.encodeFragment(text[f.begin:f.end], f.begin, ids, spans)
	}
	return ids, spans
}

// encodeFragment appends the tokens of one text fragment (which starts at
// byte base of the input) with its dummy-prefix space.
func (t *GGUFSPM) encodeFragment(text string, base int, ids []int32, spans []Span) ([]int32, []Span) {
	key := " " + text
	src := func(o int) int { return max(o-1, 0) + base }
	emit := func(a, b int) {
		for _, p := range t.word(key[a:b]) {
			ids = append(ids, p.id)
			spans = append(spans, Span{src(a + int(p.begin)), src(a + int(p.end))})
		}
	}
	spaceWords(key, t.cutSpace, emit)
	return ids, spans
}

// utf8Len is llama.cpp's unicode_len_utf8: the sequence length its first
// byte announces (a stray continuation byte is a character of its own).
func utf8Len(b byte) int {
	return [16]int{1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4}[b>>4]
}

// word is llama.cpp's llm_tokenizer_spm on one word: the symbols are UTF-8
// characters whether or not they are pieces, adjacent symbols merge when
// their concatenated text is a piece (highest score first, leftmost among
// equal scores), and a final symbol that is not a piece becomes its bytes'
// <0xNN> tokens. Unlike llama2.c run.c, which falls back to bytes before
// merging, a character that is not itself a piece still merges into a
// longer piece; vocabularies trained by SentencePiece contain every
// character of their pieces, where both agree.
func (t *GGUFSPM) word(w string) []piece {
	if ps, ok := t.cache.get(w); ok {
		return ps
	}
	n := int32(len(t.vocab))
	var extra []string // texts of the non-piece symbols, ids n, n+1, ...
	text := func(id int32) string {
		if id < n {
			return t.vocab[id]
		}
		return extra[id-n]
	}
	syms := make([]symbol, 0, len(w))
	for i := 0; i < len(w); {
		j := min(i+utf8Len(w[i]), len(w))
		id, ok := t.ids[w[i:j]]
		if !ok {
			id = n + int32(len(extra))
			extra = append(extra, w[i:j])
		}
		syms = append(syms, symbol{id: id, begin: i, end: j})
		i = j
	}
	syms = mergeSymbols(syms, func(a, b int32) (float64, int32, bool) {
		id, ok := t.ids[text(a)+text(b)]
		if !ok {
			return 0, 0, false
		}
		return -float64(t.scores[id]), id, true
	})
	ps := make([]piece, 0, len(syms))
	for _, s := range syms {
		if s.id < n {
			ps = append(ps, piece{s.id, int32(s.begin), int32(s.end)})
			continue
		}
		for k := s.begin; k < s.end; k++ {
			id, ok := t.ids[fmt.Sprintf("<0x%02X>", w[k])]
			if !ok {
				id = t.unk
			}
			ps = append(ps, piece{id, int32(k), int32(k + 1)})
		}
	}
	t.cache.put(w, ps)
	return ps
}

// EOS lists tokenizer.ggml.eos_token_id and eot_token_id.
func (t *GGUFSPM) EOS() []int32 { return append([]int32(nil), t.eos...) }

// AddBOS is tokenizer.ggml.add_bos_token (default true for "llama").
func (t *GGUFSPM) AddBOS() bool { return t.addBOS }

// ChatTemplate is tokenizer.chat_template, or DefaultChatTemplate when the
// file has none.
func (t *GGUFSPM) ChatTemplate() (*ChatTemplate, error) {
	if t.template == "" {
		return DefaultChatTemplate(), nil
	}
	bos, eos := "", ""
	if t.bos >= 0 {
		bos = t.Token(t.bos)
	}
	if len(t.eos) > 0 {
		eos = t.Token(t.eos[0])
	}
	return NewChatTemplate(t.template, bos, eos)
}

// ChatTemplateSource is the raw tokenizer.chat_template ("" when none).
func (t *GGUFSPM) ChatTemplateSource() string { return t.template }

// newGGUFBPE maps a "gpt2" GGUF vocabulary onto the HF BPE machinery by
// rendering the tokenizer.json and tokenizer_config.json it implies.
func newGGUFBPE(meta GGUFMeta, tokens []string, types []int32, tmpl string) (*HF, error) {
	preName, _ := meta.Get("tokenizer.ggml.pre").(string)
	pre, ok := ggufPre[preName]
	if !ok {
		names := make([]string, 0, len(ggufPre))
		for k := range ggufPre {
			names = append(names, k)
		}
		sort.Strings(names)
		return nil, fmt.Errorf("%w: gguf tokenizer.ggml.pre %q (supported: %v)", ErrUnsupported, preName, names)
	}
	merges, _ := meta.Get("tokenizer.ggml.merges").([]string)
	vocab := make(map[string]int32, len(tokens))
	type added struct {
		ID         int32  `json:"id"`
		Content    string `json:"content"`
		Special    bool   `json:"special"`
		Normalized bool   `json:"normalized"`
	}
	var addedToks []added
	for i, tok := range tokens {
		if _, dup := vocab[tok]; !dup && tok != "" {
			vocab[tok] = int32(i)
		}
		if types != nil && (types[i] == ggufTokControl || types[i] == ggufTokUserDefined) && tok != "" {
			addedToks = append(addedToks, added{ID: int32(i), Content: tok, Special: types[i] == ggufTokControl})
		}
	}
	var preTok any
	if pre.pattern == "" {
		preTok = map[string]any{"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}
	} else {
		preTok = map[string]any{"type": "Sequence", "pretokenizers": []any{
			map[string]any{"type": "Split", "pattern": map[string]string{"Regex": pre.pattern}, "behavior": "Isolated", "invert": false},
			map[string]any{"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false},
		}}
	}
	tj, err := json.Marshal(map[string]any{
		"added_tokens":  addedToks,
		"normalizer":    nil,
		"pre_tokenizer": preTok,
		"decoder":       map[string]any{"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
		"model": map[string]any{"type": "BPE", "vocab": vocab, "merges": merges, "ignore_merges": pre.ignoreMerge,
			"byte_fallback": false, "fuse_unk": false},
	})
	if err != nil {
		return nil, fmt.Errorf("%w: gguf vocabulary: %v", ErrFormat, err)
	}
	n := len(tokens)
	cfg := map[string]any{"add_bos_token": ggufBool(meta, "tokenizer.ggml.add_bos_token", pre.addBOS)}
	if id := ggufID(meta, "tokenizer.ggml.bos_token_id", n); id >= 0 {
		cfg["bos_token"] = tokens[id]
	}
	if id := ggufID(meta, "tokenizer.ggml.eos_token_id", n); id >= 0 {
		cfg["eos_token"] = tokens[id]
	}
	if tmpl != "" {
		cfg["chat_template"] = tmpl
	}
	cj, _ := json.Marshal(cfg)
	var gen []byte
	if id := ggufID(meta, "tokenizer.ggml.eot_token_id", n); id >= 0 {
		gen, _ = json.Marshal(map[string]any{"eos_token_id": []int32{id}})
	}
	return ParseHF(tj, cj, gen)
}

// GGUFMetadata returns the tokenizer.* metadata that describes tok in a GGUF
// file, so that llama.cpp and FromGGUF tokenize as tok does:
//
//   - a llama2.c tokenizer becomes "llama" as llama.cpp's llama2c converter
//     writes it (spaces escaped to "▁", id 0 "<unk>" UNKNOWN, BOS "<s>" and
//     EOS "</s>" CONTROL, empty pieces CONTROL, <0xNN> BYTE, scores kept);
//   - a GGUFSPM is written back as it was read;
//   - an HF byte-level BPE whose split regex is one of the GGUF
//     pre-tokenizers becomes "gpt2" with its merges in rank order.
//
// Other tokenizers fail with ErrUnsupported.
func GGUFMetadata(tok Tokenizer) ([]GGUFKV, error) {
	switch t := tok.(type) {
	case *GGUFSPM:
		kv := []GGUFKV{
			{"tokenizer.ggml.model", "llama"},
			{"tokenizer.ggml.tokens", append([]string(nil), t.tokens...)},
			{"tokenizer.ggml.scores", append([]float32(nil), t.scores...)},
			{"tokenizer.ggml.token_type", append([]int32(nil), t.types...)},
		}
		if t.bos >= 0 {
			kv = append(kv, GGUFKV{"tokenizer.ggml.bos_token_id", uint32(t.bos)})
		}
		if t.Llama2c.eos >= 0 {
			kv = append(kv, GGUFKV{"tokenizer.ggml.eos_token_id", uint32(t.Llama2c.eos)})
		}
		if len(t.eos) > 1 {
			kv = append(kv, GGUFKV{"tokenizer.ggml.eot_token_id", uint32(t.eos[1])})
		}
		kv = append(kv, GGUFKV{"tokenizer.ggml.add_bos_token", t.addBOS})
		if t.template != "" {
			kv = append(kv, GGUFKV{"tokenizer.chat_template", t.template})
		}
		return kv, nil
	case *Llama2c:
		return llama2cMetadata(t), nil
	case *HF:
		return hfMetadata(t)
	}
	return nil, fmt.Errorf("%w: tokenizer %T cannot be written as GGUF metadata", ErrUnsupported, tok)
}

// llama2cMetadata renders a llama2.c vocabulary as a "llama" GGUF tokenizer,
// renaming ids 0/BOS/EOS as llama.cpp's llama2c converter does.
func llama2cMetadata(t *Llama2c) []GGUFKV {
	n := len(t.vocab)
	tokens := make([]string, n)
	types := make([]int32, n)
	for i, p := range t.vocab {
		id := int32(i)
		ty := int32(ggufTokNormal)
		switch {
		case id == 0:
			p, ty = "<unk>", ggufTokUnknown
		case id == t.bos:
			p, ty = "<s>", ggufTokControl
		case id == t.eos:
			p, ty = "</s>", ggufTokControl
		case p == "":
			ty = ggufTokControl
		default:
			if _, ok := byteToken(p); ok {
				ty = ggufTokByte
			}
		}
		tokens[i] = strings.ReplaceAll(p, " ", ggufSpace)
		types[i] = ty
	}
	return []GGUFKV{
		{"tokenizer.ggml.model", "llama"},
		{"tokenizer.ggml.tokens", tokens},
		{"tokenizer.ggml.scores", append([]float32(nil), t.scores...)},
		{"tokenizer.ggml.token_type", types},
		{"tokenizer.ggml.unknown_token_id", uint32(0)},
		{"tokenizer.ggml.bos_token_id", uint32(t.bos)},
		{"tokenizer.ggml.eos_token_id", uint32(t.eos)},
		{"tokenizer.ggml.add_bos_token", true},
	}
}

// ggufPreProbes are texts on which the supported pre-tokenizer regexes split
// differently (digit runs, contractions, newlines, spaces before symbols).
var ggufPreProbes = []string{
	"Hello world's 1234567 apples!!\n\n  x  ", "I'M ok\t\r\nyou'LL 12 ±3 €45", "  héllo\u00a0wörld... 9999\n",
}

// hfMetadata renders a byte-level HF BPE as a "gpt2" GGUF tokenizer. The
// pre-tokenizer name is found by splitting probe texts with the tokenizer's
// own split pattern and each supported GGUF regex.
func hfMetadata(t *HF) ([]GGUFKV, error) {
	if !t.byteLevel || t.byteLevelSplit == nil || t.normalizer != nil || t.model.byteFallback {
		return nil, fmt.Errorf("%w: only byte-level BPE tokenizers (Llama 3, Qwen2 style) can be written as GGUF \"gpt2\"", ErrUnsupported)
	}
	pre := ""
	for _, name := range []string{"llama-bpe", "qwen2"} {
		p, err := newRegexPattern(ggufPre[name].pattern)
		if err != nil {
			return nil, err
		}
		same := true
		for _, s := range ggufPreProbes {
			if fmt.Sprint(p.find(s)) != fmt.Sprint(t.byteLevelSplit.find(s)) {
				same = false
				break
			}
		}
		if same {
			pre = name
			break
		}
	}
	if pre == "" {
		return nil, fmt.Errorf("%w: the tokenizer's split regex matches none of the GGUF pre-tokenizers llama-bpe, qwen2", ErrUnsupported)
	}
	if t.model.ignoreMerges != ggufPre[pre].ignoreMerge {
		return nil, fmt.Errorf("%w: ignore_merges %v with pre-tokenizer %s (llama.cpp implies %v)", ErrUnsupported, t.model.ignoreMerges, pre, ggufPre[pre].ignoreMerge)
	}
	n := len(t.tokens)
	types := make([]int32, n)
	tokens := append([]string(nil), t.tokens...)
	for i := range types {
		types[i] = ggufTokNormal
		if tokens[i] == "" { // a hole in the ids: llama.cpp's converters write a pad piece
			tokens[i], types[i] = fmt.Sprintf("[PAD%d]", i), ggufTokUnused
		}
	}
	for _, a := range t.added {
		types[a.ID] = ggufTokUserDefined
		if a.Special {
			types[a.ID] = ggufTokControl
		}
	}
	type rule struct {
		rank int32
		text string
	}
	rules := make([]rule, 0, len(t.model.merges))
	for pair, r := range t.model.merges {
		rules = append(rules, rule{r.rank, t.tokens[pair[0]] + " " + t.tokens[pair[1]]})
	}
	sort.Slice(rules, func(i, j int) bool { return rules[i].rank < rules[j].rank })
	merges := make([]string, len(rules))
	for i, r := range rules {
		merges[i] = r.text
	}
	kv := []GGUFKV{
		{"tokenizer.ggml.model", "gpt2"},
		{"tokenizer.ggml.pre", pre},
		{"tokenizer.ggml.tokens", tokens},
		{"tokenizer.ggml.token_type", types},
		{"tokenizer.ggml.merges", merges},
	}
	if t.bos >= 0 {
		kv = append(kv, GGUFKV{"tokenizer.ggml.bos_token_id", uint32(t.bos)})
	}
	if len(t.eos) > 0 {
		kv = append(kv, GGUFKV{"tokenizer.ggml.eos_token_id", uint32(t.eos[0])})
	}
	if len(t.eos) > 1 {
		kv = append(kv, GGUFKV{"tokenizer.ggml.eot_token_id", uint32(t.eos[1])})
	}
	kv = append(kv, GGUFKV{"tokenizer.ggml.add_bos_token", t.addBOS})
	if t.template != "" {
		kv = append(kv, GGUFKV{"tokenizer.chat_template", t.template})
	}
	return kv, nil
}
