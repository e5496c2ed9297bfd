package tokenizer

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"unicode/utf8"
)

// HF is a Hugging Face tokenizer (tokenizer.json with a BPE model) plus what
// tokenizer_config.json says about BOS/EOS and the chat template. It covers
// byte-level BPE (Llama-3, Qwen2/2.5/3, GPT-2 style) and SentencePiece-style
// BPE with byte fallback (Llama-2, Mistral). Components it does not
// implement make LoadHF fail with ErrUnsupported.
type HF struct {
	model      bpe
	tokens     []string // id -> token string (vocabulary form, e.g. "Ġthe")
	added      []addedToken
	rawAdded   *addedMatcher // normalized: false, matched on the input
	normAdded  *addedMatcher // normalized: true, matched on normalised text
	normalizer normalizer
	pretok     preTokenizer
	decoder    tokenDecoder
	fusedStop  int
	special    map[int32]bool

	// byteLevel is set when the pre-tokenizer is an isolating split (or
	// none) followed by a plain ByteLevel: encode then maps bytes straight
	// into a reused buffer instead of building aligned strings.
	byteLevel      bool
	byteLevelSplit pattern // nil: no split

	bos      int32
	eos      []int32
	addBOS   bool
	bosToken string
	eosToken string
	template string
	fp       string
}

var _ Tokenizer = (*HF)(nil)

// LoadHF reads a Hugging Face tokenizer from a model directory or the path of
// its tokenizer.json. Beside it, tokenizer_config.json (bos_token, eos_token,
// add_bos_token, chat_template), chat_template.jinja and
// generation_config.json (eos_token_id) are read when present.
func LoadHF(path string) (*HF, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("tokenizer: %w", err)
	}
	dir, file := path, filepath.Join(path, "tokenizer.json")
	if !st.IsDir() {
		dir, file = filepath.Dir(path), path
	}
	tj, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("tokenizer: %w", err)
	}
	cfg, err := os.ReadFile(filepath.Join(dir, "tokenizer_config.json"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("tokenizer: %w", err)
	}
	gen, err := os.ReadFile(filepath.Join(dir, "generation_config.json"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("tokenizer: %w", err)
	}
	t, err := ParseHF(tj, cfg, gen)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	if tmpl, err := os.ReadFile(filepath.Join(dir, "chat_template.jinja")); err == nil {
		t.template = string(tmpl)
	}
	return t, nil
}

// ParseHF builds an HF tokenizer from the bytes of tokenizer.json and,
// optionally (nil), tokenizer_config.json and generation_config.json.
func ParseHF(tokenizerJSON, configJSON, generationJSON []byte) (*HF, error) {
	var tj struct {
		AddedTokens   []addedToken    `json:"added_tokens"`
		Normalizer    json.RawMessage `json:"normalizer"`
		PreTokenizer  json.RawMessage `json:"pre_tokenizer"`
		PostProcessor json.RawMessage `json:"post_processor"`
		Decoder       json.RawMessage `json:"decoder"`
		Model         struct {
			Type         string           `json:"type"`
			VocabRaw     json.RawMessage  `json:"vocab"`
			Vocab        map[string]int32 `json:"-"`
			Merges       json.RawMessage  `json:"merges"`
			UnkToken     *string          `json:"unk_token"`
			FuseUnk      bool             `json:"fuse_unk"`
			ByteFallback bool             `json:"byte_fallback"`
			IgnoreMerges bool             `json:"ignore_merges"`
			Prefix       *string          `json:"continuing_subword_prefix"`
			Suffix       *string          `json:"end_of_word_suffix"`
			Dropout      *float64         `json:"dropout"`
		} `json:"model"`
	}
	if err := json.Unmarshal(tokenizerJSON, &tj); err != nil {
		return nil, fmt.Errorf("%w: tokenizer.json: %v", ErrFormat, err)
	}
	m := &tj.Model
	if m.Type != "BPE" && !(m.Type == "" && m.Merges != nil) {
		return nil, fmt.Errorf("%w: model type %q (only BPE)", ErrUnsupported, m.Type)
	}
	if err := json.Unmarshal(m.VocabRaw, &m.Vocab); err != nil && !isNull(m.VocabRaw) {
		return nil, fmt.Errorf("%w: BPE vocab: %v", ErrFormat, err)
	}
	if m.Dropout != nil && *m.Dropout > 0 && *m.Dropout < 1 {
		return nil, fmt.Errorf("%w: BPE dropout %v (tokenization would not be deterministic)", ErrUnsupported, *m.Dropout)
	}
	if len(m.Vocab) == 0 {
		return nil, fmt.Errorf("%w: empty vocabulary", ErrFormat)
	}
	t := &HF{bos: -1, special: map[int32]bool{}}
	t.model = bpe{vocab: m.Vocab, unk: -1, fuseUnk: m.FuseUnk, byteFallback: m.ByteFallback, ignoreMerges: m.IgnoreMerges}
	if m.Prefix != nil {
		t.model.prefix = *m.Prefix
	}
	if m.Suffix != nil {
		t.model.suffix = *m.Suffix
	}
	if m.UnkToken != nil {
		id, ok := m.Vocab[*m.UnkToken]
		if !ok {
			return nil, fmt.Errorf("%w: unk_token %q not in the vocabulary", ErrFormat, *m.UnkToken)
		}
		t.model.unk = id
	}
	merges, err := parseMerges(m.Merges)
	if err != nil {
		return nil, err
	}
	if err := t.model.setMerges(merges); err != nil {
		return nil, err
	}

	size := 0
	for _, id := range m.Vocab {
		if id < 0 {
			return nil, fmt.Errorf("%w: negative id %d", ErrFormat, id)
		}
		size = max(size, int(id)+1)
	}
	for _, a := range tj.AddedTokens {
		if a.ID < 0 || a.Content == "" {
			return nil, fmt.Errorf("%w: added token %d %q", ErrFormat, a.ID, a.Content)
		}
		size = max(size, int(a.ID)+1)
	}
	if size > 1<<24 {
		return nil, fmt.Errorf("%w: vocabulary of %d ids", ErrFormat, size)
	}
	t.tokens = make([]string, size)
	for s, id := range m.Vocab {
		t.tokens[id] = s
	}
	for _, a := range tj.AddedTokens {
		t.tokens[a.ID] = a.Content
		if a.Special {
			t.special[a.ID] = true
		}
	}

	if t.normalizer, err = parseNormalizer(tj.Normalizer); err != nil {
		return nil, err
	}
	if t.pretok, err = parsePreTokenizer(tj.PreTokenizer); err != nil {
		return nil, err
	}
	if t.decoder, t.fusedStop, err = parseDecoder(tj.Decoder); err != nil {
		return nil, err
	}
	// SentencePiece-style vocabularies: long pieces (the whole text when
	// there is no pre-tokenizer) are cut into words before "▁".
	t.model.setWordStart("▁")
	switch p := t.pretok.(type) {
	case seqPreTokenizer:
		if len(p) == 2 {
			sp, ok1 := p[0].(splitPreTokenizer)
			bl, ok2 := p[1].(byteLevelPreTokenizer)
			if ok1 && ok2 && sp.behavior == splitIsolated && !sp.invert && !bl.addPrefixSpace && bl.re == nil {
				t.byteLevel, t.byteLevelSplit = true, sp.pat
			}
		}
	case byteLevelPreTokenizer:
		if !p.addPrefixSpace {
			t.byteLevel, t.byteLevelSplit = true, p.re
		}
	}

	var raw, norm []addedToken
	var normPat []string
	for _, a := range tj.AddedTokens {
		if !a.Normalized {
			raw = append(raw, a)
			continue
		}
		// Normalised added tokens are matched against normalised text, so
		// their content is normalised too, as the reference does.
		c := a.Content
		if t.normalizer != nil {
			c = t.normalizer.normalize(newNormStr(c, 0)).s
		}
		norm = append(norm, a)
		normPat = append(normPat, c)
	}
	rawPat := make([]string, len(raw))
	for i, a := range raw {
		rawPat[i] = a.Content
	}
	t.added = tj.AddedTokens
	t.rawAdded = newAddedMatcher(raw, rawPat)
	t.normAdded = newAddedMatcher(norm, normPat)

	bosID, templBOS, err := parsePostProcessor(tj.PostProcessor)
	if err != nil {
		return nil, err
	}
	if err := t.applyConfig(configJSON, generationJSON, bosID, templBOS); err != nil {
		return nil, err
	}

	h := sha256.New()
	h.Write([]byte("hf\x00"))
	h.Write(tokenizerJSON)
	fmt.Fprintf(h, "\x00bos=%d add_bos=%v eos=%v", t.bos, t.addBOS, t.eos)
	t.fp = hex.EncodeToString(h.Sum(nil))
	return t, nil
}

// parseMerges accepts both formats: ["a b", ...] and [["a", "b"], ...].
func parseMerges(raw json.RawMessage) ([][2]string, error) {
	if isNull(raw) {
		return nil, nil
	}
	var strs []string
	if err := json.Unmarshal(raw, &strs); err == nil {
		out := make([][2]string, len(strs))
		for i, s := range strs {
			parts := strings.Split(s, " ")
			if len(parts) != 2 {
				return nil, fmt.Errorf("%w: merge %d %q is not two tokens", ErrFormat, i, s)
			}
			out[i] = [2]string{parts[0], parts[1]}
		}
		return out, nil
	}
	var pairs [][]string
	if err := json.Unmarshal(raw, &pairs); err != nil {
		return nil, fmt.Errorf("%w: merges: %v", ErrFormat, err)
	}
	out := make([][2]string, len(pairs))
	for i, p := range pairs {
		if len(p) != 2 {
			return nil, fmt.Errorf("%w: merge %d has %d tokens", ErrFormat, i, len(p))
		}
		out[i] = [2]string{p[0], p[1]}
	}
	return out, nil
}

// parsePostProcessor finds the BOS that a TemplateProcessing puts before a
// single sequence (-1, false when none does).
func parsePostProcessor(raw json.RawMessage) (int32, bool, error) {
	if isNull(raw) {
		return -1, false, nil
	}
	var h struct {
		Type       string            `json:"type"`
		Processors []json.RawMessage `json:"processors"`
		Single     []struct {
			SpecialToken *struct {
				ID string `json:"id"`
			} `json:"SpecialToken"`
		} `json:"single"`
		SpecialTokens map[string]struct {
			IDs []int32 `json:"ids"`
		} `json:"special_tokens"`
	}
	if err := json.Unmarshal(raw, &h); err != nil {
		return -1, false, fmt.Errorf("%w: post_processor: %v", ErrFormat, err)
	}
	switch h.Type {
	case "Sequence":
		for _, p := range h.Processors {
			if id, ok, err := parsePostProcessor(p); err != nil || ok {
				return id, ok, err
			}
		}
	case "TemplateProcessing":
		if len(h.Single) > 0 && h.Single[0].SpecialToken != nil {
			st := h.SpecialTokens[h.Single[0].SpecialToken.ID]
			if len(st.IDs) == 1 {
				return st.IDs[0], true, nil
			}
		}
	}
	return -1, false, nil
}

// applyConfig sets BOS/EOS/AddBOS and the chat template. add_bos_token in
// tokenizer_config.json wins (the Llama tokenizer classes rebuild their
// post-processor from it); otherwise a TemplateProcessing that starts with
// a special token decides.
func (t *HF) applyConfig(configJSON, generationJSON []byte, templBOSID int32, templBOS bool) error {
	var cfg struct {
		BOS          json.RawMessage `json:"bos_token"`
		EOS          json.RawMessage `json:"eos_token"`
		AddBOS       *bool           `json:"add_bos_token"`
		ChatTemplate json.RawMessage `json:"chat_template"`
	}
	if len(bytes.TrimSpace(configJSON)) > 0 {
		if err := json.Unmarshal(configJSON, &cfg); err != nil {
			return fmt.Errorf("%w: tokenizer_config.json: %v", ErrFormat, err)
		}
	}
	t.bosToken = tokenContent(cfg.BOS)
	t.eosToken = tokenContent(cfg.EOS)
	if t.bosToken != "" {
		id, ok := t.lookup(t.bosToken)
		if !ok {
			return fmt.Errorf("%w: bos_token %q not in the vocabulary", ErrFormat, t.bosToken)
		}
		t.bos = id
	} else if templBOS {
		t.bos = templBOSID
		t.bosToken = t.Token(templBOSID)
	}
	switch {
	case cfg.AddBOS != nil:
		t.addBOS = *cfg.AddBOS && t.bos >= 0
	default:
		t.addBOS = templBOS
	}
	if t.eosToken != "" {
		id, ok := t.lookup(t.eosToken)
		if !ok {
			return fmt.Errorf("%w: eos_token %q not in the vocabulary", ErrFormat, t.eosToken)
		}
		t.eos = append(t.eos, id)
	}
	if len(bytes.TrimSpace(generationJSON)) > 0 {
		var gen struct {
			EOS json.RawMessage `json:"eos_token_id"`
		}
		if err := json.Unmarshal(generationJSON, &gen); err != nil {
			return fmt.Errorf("%w: generation_config.json: %v", ErrFormat, err)
		}
		var one int32
		var many []int32
		if json.Unmarshal(gen.EOS, &one) == nil && !isNull(gen.EOS) {
			many = []int32{one}
		} else {
			_ = json.Unmarshal(gen.EOS, &many)
		}
		for _, id := range many {
			if id >= 0 && int(id) < len(t.tokens) && !containsID(t.eos, id) {
				t.eos = append(t.eos, id)
			}
		}
	}
	if !isNull(cfg.ChatTemplate) {
		var s string
		if err := json.Unmarshal(cfg.ChatTemplate, &s); err == nil {
			t.template = s
		} else {
			var named []struct{ Name, Template string }
			if err := json.Unmarshal(cfg.ChatTemplate, &named); err != nil {
				return fmt.Errorf("%w: chat_template: %v", ErrFormat, err)
			}
			for _, n := range named {
				if n.Name == "default" || t.template == "" {
					t.template = n.Template
				}
			}
		}
	}
	return nil
}

// tokenContent reads a special token given as "text" or {"content": "text"}.
func tokenContent(raw json.RawMessage) string {
	if isNull(raw) {
		return ""
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s
	}
	var o struct {
		Content string `json:"content"`
	}
	_ = json.Unmarshal(raw, &o)
	return o.Content
}

func containsID(ids []int32, id int32) bool {
	for _, x := range ids {
		if x == id {
			return true
		}
	}
	return false
}

// lookup finds the id of a token string: added tokens first, then the vocabulary.
func (t *HF) lookup(s string) (int32, bool) {
	for _, a := range t.added {
		if a.Content == s {
			return a.ID, true
		}
	}
	id, ok := t.model.vocab[s]
	return id, ok
}

// Encode returns the ids of text (no BOS/EOS; added and special tokens
// written in the text are matched).
func (t *HF) Encode(text string) []int32 {
	ids, _ := t.encode(text, false)
	return ids
}

// EncodeOffsets is Encode plus, for every id, the byte span of text it came
// from. Bytes a normaliser inserted (the SentencePiece "▁" prefix) have no
// source: a token made only of them gets an empty span at its position. A
// byte-level token that holds part of a multi-byte character spans the
// bytes of that character it holds. Spans are monotone (Begin and End never
// decrease) and, where no normaliser rewrote the text, tile the input except
// for text that produced no token (stripped, or unknown without <unk>).
// Where a normaliser rewrote a character (NFC) every token holding part of
// the rewritten bytes spans the whole source character, so neighbours may
// overlap there.
func (t *HF) EncodeOffsets(text string) ([]int32, []Span) {
	return t.encode(text, true)
}

func (t *HF) encode(text string, withSpans bool) ([]int32, []Span) {
	ids := make([]int32, 0, len(text)/3+1)
	var spans []Span
	if withSpans {
		spans = make([]Span, 0, cap(ids))
	}
	addTok := func(id int32, sp Span) {
		ids = append(ids, id)
		if withSpans {
			spans = append(spans, sp)
		}
	}
	var buf []byte
	secs := []section{{-1, 0, len(text)}}
	if !t.rawAdded.empty() {
		secs = t.rawAdded.split(text)
	}
	for _, sec := range secs {
		if sec.id >= 0 {
			addTok(sec.id, Span{sec.begin, sec.end})
			continue
		}
		n := newNormStr(text[sec.begin:sec.end], sec.begin)
		if t.normalizer != nil {
			n = t.normalizer.normalize(n)
		}
		subs := []section{{-1, 0, len(n.s)}}
		if !t.normAdded.empty() {
			subs = t.normAdded.split(n.s)
		}
		for _, sub := range subs {
			if sub.id >= 0 {
				addTok(sub.id, n.span(sub.begin, sub.end))
				continue
			}
			if t.byteLevel {
				buf = t.encodeByteLevel(n.slice(sub.begin, sub.end), buf, addTok, withSpans)
				continue
			}
			pieces := []normStr{n.slice(sub.begin, sub.end)}
			if t.pretok != nil {
				pieces = t.pretok.split(pieces[0], sec.begin == 0 && sub.begin == 0)
			}
			for _, p := range pieces {
				t.model.tokenizeWords(p.s, func(tk piece, off int) {
					addTok(tk.id, p.span(off+int(tk.begin), off+int(tk.end)))
				})
			}
		}
	}
	return ids, spans
}

// encodeByteLevel is the byte-level fast path: split (isolating: matches
// and the text between them are pieces), map each piece's bytes to GPT-2
// characters in buf, run BPE through the cache, and map token ranges back:
// each character of the mapped piece is one byte of n.
func (t *HF) encodeByteLevel(n normStr, buf []byte, addTok func(int32, Span), withSpans bool) []byte {
	one := func(a, b int) {
		if a >= b {
			return
		}
		buf = buf[:0]
		for i := a; i < b; i++ {
			buf = append(buf, byteLevelStrings[n.s[i]]...)
		}
		raw := a
		for _, tk := range t.model.tokenizeBytes(buf) {
			if !withSpans {
				addTok(tk.id, Span{})
				continue
			}
			k := utf8.RuneCount(buf[tk.begin:tk.end])
			addTok(tk.id, n.span(raw, raw+k))
			raw += k
		}
	}
	if t.byteLevelSplit == nil {
		one(0, len(n.s))
		return buf
	}
	at := 0
	for _, m := range t.byteLevelSplit.find(n.s) {
		one(at, m[0])
		one(m[0], m[1])
		at = m[1]
	}
	one(at, len(n.s))
	return buf
}

// Decode returns the text of ids: BOS ids are dropped, every other id
// (special tokens included) goes through the tokenizer's decoder. Ids out of
// range are skipped.
func (t *HF) Decode(ids []int32) string {
	var sb strings.Builder
	first := true
	for _, id := range ids {
		if id == t.bos || id < 0 || int(id) >= len(t.tokens) {
			continue
		}
		sb.WriteString(t.decodeToken(id, first))
		first = false
	}
	out := sb.String()
	if t.fusedStop > 0 {
		for i := 0; i < t.fusedStop && strings.HasSuffix(out, " "); i++ {
			out = out[:len(out)-1]
		}
	}
	return out
}

func (t *HF) decodeToken(id int32, first bool) string {
	tok := t.tokens[id]
	if t.decoder == nil {
		if first {
			return tok
		}
		return " " + tok // the reference joins tokens with spaces without a decoder
	}
	return t.decoder.decodeToken(tok, first)
}

// NewDecoder returns a streaming decoder (see Decoder).
func (t *HF) NewDecoder() *Decoder {
	return newDecoder(t.bos, func(_, id int32, first bool) string {
		if id == t.bos || id < 0 || int(id) >= len(t.tokens) {
			return ""
		}
		return t.decodeToken(id, first)
	})
}

// Token returns the vocabulary string of id ("" when out of range).
func (t *HF) Token(id int32) string {
	if id < 0 || int(id) >= len(t.tokens) {
		return ""
	}
	return t.tokens[id]
}

// IsSpecial reports whether id is an added token marked special.
func (t *HF) IsSpecial(id int32) bool { return t.special[id] }

// VocabSize is the number of ids, added tokens included.
func (t *HF) VocabSize() int { return len(t.tokens) }

// BOS is the beginning-of-sequence id, or -1.
func (t *HF) BOS() int32 { return t.bos }

// EOS lists the ids that end generation: eos_token, then generation_config's.
func (t *HF) EOS() []int32 { return append([]int32(nil), t.eos...) }

// AddBOS reports whether prompts start with BOS.
func (t *HF) AddBOS() bool { return t.addBOS }

// Fingerprint is the hex SHA-256 of tokenizer.json and the BOS/EOS settings.
func (t *HF) Fingerprint() string { return t.fp }

// ChatTemplateSource is the Jinja chat template ("" when the model has none).
func (t *HF) ChatTemplateSource() string { return t.template }

// BOSToken and EOSToken are the special token strings the chat template sees.
func (t *HF) BOSToken() string { return t.bosToken }

// EOSToken is the eos_token string ("" when none).
func (t *HF) EOSToken() string { return t.eosToken }
