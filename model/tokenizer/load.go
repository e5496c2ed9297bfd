package tokenizer

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// ErrNotFound reports that no tokenizer file was found where one was expected.
var ErrNotFound = errors.New("tokenizer: not found")

// Load opens the tokenizer at path: a Hugging Face model directory or
// tokenizer.json (LoadHF), otherwise a llama2.c tokenizer file (LoadLlama2c).
func Load(path string) (Tokenizer, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("tokenizer: %w", err)
	}
	if st.IsDir() || strings.HasSuffix(path, ".json") {
		return LoadHF(path)
	}
	return LoadLlama2c(path)
}

// Llama2cBeside finds the tokenizer of a llama2.c checkpoint: the single
// tok*.bin in the checkpoint's directory.
func Llama2cBeside(checkpoint string) (string, error) {
	matches, err := filepath.Glob(filepath.Join(filepath.Dir(checkpoint), "tok*.bin"))
	if err != nil {
		return "", fmt.Errorf("tokenizer: %w", err)
	}
	switch len(matches) {
	case 1:
		return matches[0], nil
	case 0:
		return "", fmt.Errorf("%w: no tok*.bin beside %s (pass the tokenizer explicitly)", ErrNotFound, checkpoint)
	}
	return "", fmt.Errorf("%w: several tokenizers beside %s: %v (pass one explicitly)", ErrNotFound, checkpoint, matches)
}

// TemplateFor returns the chat template of tok: its own (the Hugging Face
// chat_template, a GGUF's tokenizer.chat_template) when it has one, else
// DefaultChatTemplate.
func TemplateFor(tok Tokenizer) (*ChatTemplate, error) {
	if t, ok := tok.(interface{ ChatTemplate() (*ChatTemplate, error) }); ok {
		return t.ChatTemplate()
	}
	return DefaultChatTemplate(), nil
}

// TokenRange maps a byte span of the encoded text (a content part from
// Rendered.Parts) to the half-open range [begin, end) of token indices whose
// spans overlap it, given the spans from EncodeOffsets. exact is true when
// the tokens cover exactly that text: the first starts at part.Begin, the
// last ends at part.End, and none reaches outside. When a token straddles
// the boundary (BPE merged a separator with the part's first word, say),
// exact is false and the caller must not treat [begin, end) as the part's
// own tokens. An empty part gives begin == end at the first token at or
// after it, exact only when a token boundary falls at part.Begin.
func TokenRange(spans []Span, part Span) (begin, end int, exact bool) {
	if part.End <= part.Begin {
		begin, exact = len(spans), true
		for i := len(spans) - 1; i >= 0; i-- {
			sp := spans[i]
			if sp.Begin >= part.Begin {
				begin = i
			}
			if sp.Begin < part.Begin && sp.End > part.Begin {
				exact = false
			}
		}
		return begin, begin, exact
	}
	overlaps := func(sp Span) bool {
		return sp.Begin < part.End && (sp.End > part.Begin || (sp.End == sp.Begin && sp.Begin >= part.Begin))
	}
	begin = len(spans)
	for i, sp := range spans {
		if overlaps(sp) {
			begin = i
			break
		}
		if sp.Begin >= part.End {
			return i, i, false
		}
	}
	end = begin
	for end < len(spans) && overlaps(spans[end]) {
		end++
	}
	if begin == end {
		return begin, end, false
	}
	return begin, end, spans[begin].Begin == part.Begin && spans[end-1].End == part.End
}
