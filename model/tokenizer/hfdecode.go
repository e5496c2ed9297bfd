package tokenizer

import (
	"encoding/json"
	"fmt"
	"strings"
)

// tokenDecoder is one step of a tokenizer.json "decoder": it rewrites the
// text of one token. first is true for the first token of the text (where
// Metaspace and Strip drop the prefix space).
type tokenDecoder interface {
	decodeToken(tok string, first bool) string
}

type seqDecoder []tokenDecoder

func (q seqDecoder) decodeToken(tok string, first bool) string {
	for _, d := range q {
		tok = d.decodeToken(tok, first)
	}
	return tok
}

// byteLevelDecoder maps GPT-2's printable characters back to bytes. A token
// with a character outside the table (an added token like "<|eot_id|>" is
// inside it; some CJK added tokens are not) is kept as it is, as the
// reference does. Unlike the reference, bytes that do not form valid UTF-8
// are returned raw rather than replaced by U+FFFD: Decode stays lossless and
// the streaming Decoder holds incomplete characters back.
type byteLevelDecoder struct{}

func (byteLevelDecoder) decodeToken(tok string, _ bool) string {
	b := make([]byte, 0, len(tok))
	for _, r := range tok {
		c, ok := runeToByte[r]
		if !ok {
			return tok
		}
		b = append(b, c)
	}
	return string(b)
}

// replaceDecoder replaces a string pattern in each token.
type replaceDecoder struct{ from, to string }

func (r replaceDecoder) decodeToken(tok string, _ bool) string {
	return strings.ReplaceAll(tok, r.from, r.to)
}

// byteFallbackDecoder turns <0xXX> tokens into the raw byte (the reference
// groups consecutive bytes and writes U+FFFD per byte for invalid UTF-8; raw
// bytes are kept here for the same reason as byteLevelDecoder).
type byteFallbackDecoder struct{}

func (byteFallbackDecoder) decodeToken(tok string, _ bool) string {
	if b, ok := byteToken(tok); ok {
		return string([]byte{b})
	}
	return tok
}

// fuseDecoder joins all tokens into one; per token it changes nothing, but
// it makes later Strip steps apply to the whole text rather than every token.
type fuseDecoder struct{}

func (fuseDecoder) decodeToken(tok string, _ bool) string { return tok }

// stripDecoder removes up to start copies of content at the beginning (and
// stop at the end) of each token, or of the whole text after a Fuse.
type stripDecoder struct {
	content     string
	start, stop int
	fused       bool
}

func (s stripDecoder) decodeToken(tok string, first bool) string {
	if !s.fused || first {
		for i := 0; i < s.start && strings.HasPrefix(tok, s.content); i++ {
			tok = tok[len(s.content):]
		}
	}
	if !s.fused {
		for i := 0; i < s.stop && strings.HasSuffix(tok, s.content); i++ {
			tok = tok[:len(tok)-len(s.content)]
		}
	}
	return tok
}

// metaspaceDecoder turns ▁ back into spaces and drops the space the
// pre-tokenizer prepended to the first token.
type metaspaceDecoder struct {
	replacement string
	stripFirst  bool
}

func (m metaspaceDecoder) decodeToken(tok string, first bool) string {
	tok = strings.ReplaceAll(tok, m.replacement, " ")
	if first && m.stripFirst {
		tok = strings.TrimPrefix(tok, " ")
	}
	return tok
}

// parseDecoder reads a tokenizer.json "decoder"; fusedStrip reports a Strip
// after a Fuse with stop > 0 (applied to the end of the whole text).
func parseDecoder(raw json.RawMessage) (d tokenDecoder, fusedStop int, err error) {
	if isNull(raw) {
		return nil, 0, nil
	}
	fused := false
	var parse func(raw json.RawMessage) (tokenDecoder, error)
	parse = func(raw json.RawMessage) (tokenDecoder, error) {
		var h struct {
			Type           string            `json:"type"`
			Decoders       []json.RawMessage `json:"decoders"`
			Pattern        json.RawMessage   `json:"pattern"`
			Content        string            `json:"content"`
			Start          int               `json:"start"`
			Stop           int               `json:"stop"`
			Replacement    string            `json:"replacement"`
			PrependScheme  string            `json:"prepend_scheme"`
			AddPrefixSpace *bool             `json:"add_prefix_space"`
		}
		if err := json.Unmarshal(raw, &h); err != nil {
			return nil, fmt.Errorf("decoder: %w", err)
		}
		switch h.Type {
		case "Sequence":
			var q seqDecoder
			for _, r := range h.Decoders {
				x, err := parse(r)
				if err != nil {
					return nil, err
				}
				q = append(q, x)
			}
			return q, nil
		case "ByteLevel":
			return byteLevelDecoder{}, nil
		case "Replace":
			var p struct {
				String *string `json:"String"`
			}
			if err := json.Unmarshal(h.Pattern, &p); err != nil || p.String == nil {
				return nil, fmt.Errorf("%w: Replace decoder pattern %s", ErrUnsupported, h.Pattern)
			}
			return replaceDecoder{*p.String, h.Content}, nil
		case "ByteFallback":
			return byteFallbackDecoder{}, nil
		case "Fuse":
			fused = true
			return fuseDecoder{}, nil
		case "Strip":
			if fused {
				fusedStop = max(fusedStop, h.Stop)
			}
			return stripDecoder{h.Content, h.Start, h.Stop, fused}, nil
		case "Metaspace":
			r := h.Replacement
			if r == "" {
				r = "▁"
			}
			strip := h.PrependScheme != "never"
			if h.PrependScheme == "" && h.AddPrefixSpace != nil {
				strip = *h.AddPrefixSpace
			}
			return metaspaceDecoder{r, strip}, nil
		}
		return nil, fmt.Errorf("%w: decoder type %q", ErrUnsupported, h.Type)
	}
	d, err = parse(raw)
	return d, fusedStop, err
}
