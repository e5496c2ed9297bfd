package fusion

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/fusionrag/fusionrag/model/tokenizer"
	"github.com/fusionrag/fusionrag/prompt"
)

// Template is how a chunk is presented in a prompt: the exact text the
// serving side writes for one retrieved chunk. The offline stage computes
// each chunk's KV for the token ids of this text, so the sidecar must present
// chunks with the same Template (it imports this type) or every lookup misses.
//
// Format and Untitled hold the placeholders {title} and {text}; any other
// brace is literal. Placeholders are substituted in one pass: a title that
// contains "{text}" is not expanded again.
type Template struct {
	// Format renders a chunk that has a title. It must contain {text}.
	Format string
	// Untitled renders a chunk without a title; empty means Format with an
	// empty title.
	Untitled string
	// Whole presents a document longer than a chunk whole, as RAG
	// frameworks put a retrieved document into a prompt, rather than each
	// chunk with the template around it: the document is rendered once,
	// tokenized once, and cut into windows on those ids (fingerprint.Windows,
	// the rule of the sidecar's passages, convention d), so each chunk's ids
	// are exactly its ids in the whole document. The template's text before
	// {text} is in the first chunk, the text after it in the last.
	Whole bool
}

// PassageTemplate presents a document the way LangChain, LlamaIndex and
// Haystack join retrieved documents: its own text after a blank line, no
// header, whole (see Template.Whole). Chunks ingested with it have the ids
// the sidecar's passages (convention d) have when the document is presented
// after a blank line and Chunker.Size equals fusion.paragraph_max_tokens.
var PassageTemplate = Template{Format: "\n\n{text}", Whole: true}

// DefaultTemplate presents a chunk as a titled document after a blank line.
// It starts with a newline on purpose: a newline never merges with the
// tokenizer's dummy-prefix space, so the chunk's ids do not depend on what
// precedes it (see Template.Tokens).
var DefaultTemplate = Template{
	Format:   "\n\nDocument: {title}\n{text}",
	Untitled: "\n\nDocument: {text}",
}

// Templates are the templates an ingest may be told to use by name
// (`fusionrag ingest --template`, documents.template): "document" is
// DefaultTemplate (each chunk under a "Document: title" header, the
// project's own prompt convention) and "passage" is PassageTemplate (the
// document's text whole, as RAG frameworks lay retrieved text out).
var Templates = map[string]Template{"document": DefaultTemplate, "passage": PassageTemplate}

// ErrTemplateName is returned by TemplateNamed for a name not in Templates.
var ErrTemplateName = errors.New("fusion: unknown chunk template")

// TemplateNamed returns the template registered under name in Templates.
func TemplateNamed(name string) (Template, error) {
	if t, ok := Templates[name]; ok {
		return t, nil
	}
	names := make([]string, 0, len(Templates))
	for n := range Templates {
		names = append(names, n)
	}
	slices.Sort(names)
	return Template{}, fmt.Errorf("%w %q: want one of %s", ErrTemplateName, name, strings.Join(names, ", "))
}

// ErrTemplate is returned by Template.Validate for a template without {text}.
var ErrTemplate = errors.New("fusion: chunk template must contain {text}")

// Validate checks that both formats place the chunk text.
func (t Template) Validate() error {
	if !strings.Contains(t.Format, "{text}") {
		return fmt.Errorf("%w: format %q", ErrTemplate, t.Format)
	}
	if t.Untitled != "" && !strings.Contains(t.Untitled, "{text}") {
		return fmt.Errorf("%w: untitled format %q", ErrTemplate, t.Untitled)
	}
	return nil
}

// Render returns the chunk's text as it appears in a prompt.
func (t Template) Render(title, text string) string {
	f := t.Format
	if title == "" && t.Untitled != "" {
		f = t.Untitled
	}
	var b strings.Builder
	b.Grow(len(f) + len(title) + len(text))
	for {
		i := strings.IndexByte(f, '{')
		if i < 0 {
			b.WriteString(f)
			return b.String()
		}
		b.WriteString(f[:i])
		switch {
		case strings.HasPrefix(f[i:], "{title}"):
			b.WriteString(title)
			f = f[i+len("{title}"):]
		case strings.HasPrefix(f[i:], "{text}"):
			b.WriteString(text)
			f = f[i+len("{text}"):]
		default:
			b.WriteByte('{')
			f = f[i+1:]
		}
	}
}

// Tokens returns the chunk's token ids: EncodeSegment of Render(title, text).
// These ids are the contract between ingest and serving (see EncodeSegment).
func (t Template) Tokens(tok tokenizer.Tokenizer, title, text string) []int32 {
	return EncodeSegment(tok, t.Render(title, text))
}

// EncodeSegment encodes one prompt segment (a rendered chunk, or the
// question) on its own, the way it must appear inside a prompt built by
// concatenation:
//
//   - no BOS or EOS is added (BOS belongs to S, see EncodePrefix);
//   - a tokenizer that prepends a dummy-prefix space to every encode
//     (llama2.c run.c, SentencePiece "▁" normalizers) would make the segment
//     start with a space token that the text does not have; when the text
//     does not start with a space and the first id is exactly that space
//     piece (" " or "▁") on its own, it is dropped. When the dummy space has
//     merged into the first word (a template starting with a letter), it is
//     kept: the ids are still deterministic, only one space richer.
//
// The serving side builds a prompt's ids as EncodePrefix(S) followed by the
// EncodeSegment ids of each chunk and of the question, concatenated as they
// are, and sends the engine those ids. Encoding the whole prompt text at once
// instead gives different ids at the boundaries (BPE merges across them) and
// must not be used to look chunks up.
func EncodeSegment(tok tokenizer.Tokenizer, text string) []int32 {
	ids := tok.Encode(text)
	if len(ids) > 1 && text != "" && text[0] != ' ' {
		if p := tok.Token(ids[0]); p == " " || p == "▁" {
			ids = ids[1:]
		}
	}
	return ids
}

// EncodePrefix returns S, the ids every prompt starts with: BOS when the
// tokenizer expects it, then the system text encoded as run.c or the HF
// tokenizer does at the start of a prompt (dummy prefix included: S is always
// at position 0). Chunk KV depends on S, and S is part of every chunk key.
//
// BOS is added by prompt.WithBOS, the engine's rule: once, so a system text
// that writes the BOS token itself does not get a second one.
func EncodePrefix(tok tokenizer.Tokenizer, system string) []int32 {
	var s []int32
	if system != "" {
		s = tok.Encode(system)
	}
	s, _ = prompt.WithBOS(tok, s, nil)
	return s
}
