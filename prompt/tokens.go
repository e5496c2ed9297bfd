package prompt

import (
	"fmt"
	"sync/atomic"

	"github.com/fusionrag/fusionrag/model/tokenizer"
)

// ChatTemplate renders chat messages into the prompt text the model sees;
// *tokenizer.ChatTemplate implements it.
type ChatTemplate interface {
	Render(msgs []tokenizer.Message, addGenerationPrompt bool) (string, error)
}

// TemplateOf returns tok's chat template when it has one (Hugging Face
// tokenizers with a chat_template), else the plain default.
func TemplateOf(tok tokenizer.Tokenizer) (*tokenizer.ChatTemplate, error) {
	if t, ok := tok.(interface {
		ChatTemplate() (*tokenizer.ChatTemplate, error)
	}); ok {
		return t.ChatTemplate()
	}
	return tokenizer.DefaultChatTemplate(), nil
}

// AddsBOS reports whether prompts encoded with tok start with its BOS id:
// the tokenizer asks for it and has one. It is the one BOS decision of the
// project (WithBOS applies it); code that must know whether position 0 is
// BOS (a prefix S that must hold it) asks here.
func AddsBOS(tok tokenizer.Tokenizer) bool { return tok.AddBOS() && tok.BOS() >= 0 }

// WithBOS returns ids with BOS first when AddsBOS(tok) and ids do not
// already start with it: a text that writes the BOS token itself (a chat
// template with "{{ bos_token }}") gets it exactly once, never twice. offs,
// when not nil, are the byte spans of ids; the added BOS gets the empty span
// at 0 (it has no source text). The slices are not modified in place.
func WithBOS(tok tokenizer.Tokenizer, ids []int32, offs []tokenizer.Span) ([]int32, []tokenizer.Span) {
	if !AddsBOS(tok) || len(ids) > 0 && ids[0] == tok.BOS() {
		return ids, offs
	}
	ids = append([]int32{tok.BOS()}, ids...)
	if offs != nil {
		offs = append([]tokenizer.Span{{}}, offs...)
	}
	return ids, offs
}

// Render returns the text the model sees for a text or chat prompt: the
// completions text as it is, or the messages rendered with chat (nil:
// tokenizer.DefaultChatTemplate, the plain format of models without a
// template) with the generation prompt. A template error wraps
// ErrBadRequest. Token prompts have no text (ok false).
func Render(chat ChatTemplate, p Prompt) (text string, ok bool, err error) {
	switch {
	case p.IsTokens:
		return "", false, nil
	case p.Messages != nil:
		if chat == nil {
			chat = tokenizer.DefaultChatTemplate()
		}
		if text, err = chat.Render(p.Messages, true); err != nil {
			return "", false, fmt.Errorf("%w: chat template: %v", ErrBadRequest, err)
		}
		return text, true, nil
	}
	return p.Text, true, nil
}

// Tokens returns the exact token ids the engine runs for p:
//
//   - token prompts are used as they are (no BOS added, as vLLM does);
//   - text prompts are encoded, BOS by WithBOS;
//   - chat messages are rendered (Render) and encoded, BOS by WithBOS.
//
// An empty result is a *ParamError on "prompt".
func Tokens(tok tokenizer.Tokenizer, chat ChatTemplate, p Prompt) ([]int32, error) {
	if p.IsTokens {
		return p.Tokens, nil
	}
	text, _, err := Render(chat, p)
	if err != nil {
		return nil, err
	}
	enc, err := EncodeText(tok, text, false)
	return enc.IDs, err
}

// Encoded is a prompt's ids with, for text prompts, the text they encode
// and the byte span of every id in it.
type Encoded struct {
	// IDs are the exact ids the engine runs (Tokens' result).
	IDs []int32
	// Text is the rendered prompt text; empty for token prompts.
	Text string
	// Offsets[i] is the byte span [Begin, End) of Text that IDs[i] came
	// from (the added BOS: the empty span at 0). Nil for token prompts, or
	// when not asked for.
	Offsets []tokenizer.Span
}

// Encode is Tokens plus the rendered text and the byte offsets of every id
// in it, from one tokenization: tokenizer.Tokenizer.EncodeOffsets is Encode
// plus spans (the same ids, by the interface's contract), so the ids are
// exactly Tokens'. Token prompts come back as they are, without text.
func Encode(tok tokenizer.Tokenizer, chat ChatTemplate, p Prompt) (Encoded, error) {
	if p.IsTokens {
		return Encoded{IDs: p.Tokens}, nil
	}
	text, _, err := Render(chat, p)
	if err != nil {
		return Encoded{}, err
	}
	return EncodeText(tok, text, true)
}

// EncodeText encodes an already rendered prompt text (Render's, or a chat
// template's RenderSpans text, which is the same string) the way Tokens
// does, BOS by WithBOS, with the offsets when offsets is set. It is the
// one place where a whole prompt is tokenized.
func EncodeText(tok tokenizer.Tokenizer, text string, offsets bool) (Encoded, error) {
	counts.encodes.Add(1)
	e := Encoded{Text: text}
	if offsets {
		e.IDs, e.Offsets = tok.EncodeOffsets(text)
		if e.Offsets == nil {
			e.Offsets = []tokenizer.Span{}
		}
	} else {
		e.IDs = tok.Encode(text)
	}
	e.IDs, e.Offsets = WithBOS(tok, e.IDs, e.Offsets)
	if len(e.IDs) == 0 {
		return Encoded{}, BadParam("prompt", "the prompt is empty after tokenization")
	}
	return e, nil
}

// counts are the parses and tokenizations done since the process started
// (Counts).
var counts struct{ parses, encodes atomic.Int64 }

// Count is what Counts returns.
type Count struct {
	// Parses is the number of ParseRequest calls.
	Parses int64
	// Encodes is the number of whole prompts tokenized (Tokens, Encode,
	// EncodeText); token prompts are not tokenized and not counted.
	Encodes int64
}

// Counts returns the parses and tokenizations done so far in this process,
// so that a test can check how many a request costs (one of each per fused
// request in the sidecar) by taking the difference around it.
func Counts() Count {
	return Count{Parses: counts.parses.Load(), Encodes: counts.encodes.Load()}
}

// Sub returns c - o, field by field.
func (c Count) Sub(o Count) Count {
	return Count{Parses: c.Parses - o.Parses, Encodes: c.Encodes - o.Encodes}
}
