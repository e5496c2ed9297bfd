package engine

import (
	"fmt"

	"github.com/fusionrag/fusionrag/model/tokenizer"
)

// ChatTemplate renders chat messages into the prompt text the model sees;
// *tokenizer.ChatTemplate implements it.
type ChatTemplate interface {
	Render(msgs []tokenizer.Message, addGenerationPrompt bool) (string, error)
}

// PromptTokens returns the exact token ids the engine runs for p. It is the
// one place where "prompt -> token ids" happens, so that the sidecar, which
// must find the same spans in the same ids, can call it too.
//
//   - Token prompts are used as they are (no BOS added, as vLLM does).
//   - Text prompts are encoded, with BOS first when the tokenizer asks for it.
//   - Chat messages are rendered with chat (nil: tokenizer.DefaultChatTemplate,
//     the plain format of models without a template), encoded, and BOS is
//     added when the tokenizer asks for it and the rendered text did not
//     already start with it (templates that write the BOS token themselves
//     get it exactly once).
func PromptTokens(tok tokenizer.Tokenizer, chat ChatTemplate, p Prompt) ([]int32, error) {
	if p.IsTokens {
		return p.Tokens, nil
	}
	text := p.Text
	if p.Messages != nil {
		if chat == nil {
			chat = tokenizer.DefaultChatTemplate()
		}
		var err error
		if text, err = chat.Render(p.Messages, true); err != nil {
			return nil, fmt.Errorf("%w: chat template: %v", ErrBadRequest, err)
		}
	}
	ids := tok.Encode(text)
	if tok.AddBOS() && tok.BOS() >= 0 && (len(ids) == 0 || ids[0] != tok.BOS()) {
		ids = append([]int32{tok.BOS()}, ids...)
	}
	if len(ids) == 0 {
		return nil, badParam("prompt", "the prompt is empty after tokenization")
	}
	return ids, nil
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
