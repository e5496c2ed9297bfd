package tokenizer

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/nikolalohinski/gonja/v2"
	"github.com/nikolalohinski/gonja/v2/config"
	"github.com/nikolalohinski/gonja/v2/exec"
	"github.com/nikolalohinski/gonja/v2/loaders"
)

// Chat template errors.
var (
	// ErrTemplate reports a template that does not parse or fails to render.
	ErrTemplate = errors.New("tokenizer: chat template")
	// ErrContent reports message content this package cannot render
	// (a content part that is not text).
	ErrContent = errors.New("tokenizer: unsupported message content")
)

// RaiseError is the error of a template's raise_exception("...") call
// (for example a Mistral template refusing non-alternating roles).
type RaiseError struct{ Message string }

func (e *RaiseError) Error() string { return "tokenizer: chat template raised: " + e.Message }

// Is makes errors.Is(err, ErrTemplate) true.
func (e *RaiseError) Is(target error) bool { return target == ErrTemplate }

// Message is one chat message in the OpenAI shape. Content is a string or
// an array of content parts; other fields (name, tool_calls, tool_call_id,
// reasoning_content, ...) are kept in Extra and handed to the template.
type Message struct {
	Role    string
	Content Content
	Extra   map[string]any
}

// Content is a message's content: Parts holds the text parts in order (a
// string content is one part). IsString records the original shape.
type Content struct {
	Parts    []Part
	IsString bool
}

// Part is one OpenAI content part ({"type": "text", "text": "..."}).
type Part struct {
	Type string `json:"type"`
	Text string `json:"text"`
}

// Text returns a plain string content.
func Text(s string) Content { return Content{Parts: []Part{{Type: "text", Text: s}}, IsString: true} }

// TextParts returns an array content of text parts.
func TextParts(texts ...string) Content {
	c := Content{Parts: make([]Part, len(texts))}
	for i, t := range texts {
		c.Parts[i] = Part{Type: "text", Text: t}
	}
	return c
}

// UnmarshalJSON accepts a string, null, or an array of content parts.
func (c *Content) UnmarshalJSON(b []byte) error {
	if isNull(b) {
		*c = Content{IsString: true}
		return nil
	}
	var s string
	if err := json.Unmarshal(b, &s); err == nil {
		*c = Text(s)
		return nil
	}
	var parts []Part
	if err := json.Unmarshal(b, &parts); err != nil {
		return fmt.Errorf("%w: content is neither a string nor an array of parts: %v", ErrContent, err)
	}
	*c = Content{Parts: parts}
	return nil
}

// MarshalJSON writes the original shape.
func (c Content) MarshalJSON() ([]byte, error) {
	if c.IsString {
		s, _ := c.joined()
		return json.Marshal(s)
	}
	return json.Marshal(c.Parts)
}

// joined flattens the text parts the way vLLM does for templates that take
// string content: joined with "\n". It also returns each part's byte range
// in the joined string.
func (c Content) joined() (string, [][2]int) {
	var sb strings.Builder
	ranges := make([][2]int, len(c.Parts))
	for i, p := range c.Parts {
		if i > 0 {
			sb.WriteByte('\n')
		}
		ranges[i][0] = sb.Len()
		sb.WriteString(p.Text)
		ranges[i][1] = sb.Len()
	}
	return sb.String(), ranges
}

func (c Content) check() error {
	for _, p := range c.Parts {
		if p.Type != "text" && p.Type != "" {
			return fmt.Errorf("%w: content part type %q (text models take only text parts)", ErrContent, p.Type)
		}
	}
	return nil
}

// UnmarshalJSON reads an OpenAI chat message.
func (m *Message) UnmarshalJSON(b []byte) error {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil {
		return err
	}
	*m = Message{}
	if r, ok := raw["role"]; ok {
		if err := json.Unmarshal(r, &m.Role); err != nil {
			return fmt.Errorf("message role: %w", err)
		}
	}
	if r, ok := raw["content"]; ok {
		if err := m.Content.UnmarshalJSON(r); err != nil {
			return err
		}
	} else {
		m.Content = Content{IsString: true}
	}
	for k, r := range raw {
		if k == "role" || k == "content" {
			continue
		}
		var v any
		if err := json.Unmarshal(r, &v); err != nil {
			return err
		}
		if m.Extra == nil {
			m.Extra = map[string]any{}
		}
		m.Extra[k] = v
	}
	return nil
}

// MarshalJSON writes the message back in the OpenAI shape.
func (m Message) MarshalJSON() ([]byte, error) {
	o := map[string]any{}
	for k, v := range m.Extra {
		o[k] = v
	}
	o["role"] = m.Role
	o["content"] = m.Content
	return json.Marshal(o)
}

// Rendered is a rendered prompt and where each message's content parts
// landed in it.
type Rendered struct {
	Text string
	// Parts[i][j] is the byte span of Text holding the text of part j of
	// message i (after the template's own transformations such as trim:
	// the span holds what the template emitted). A message whose content
	// the template did not emit has spans {-1, -1}. Parts is nil when the
	// spans could not be established (see ChatTemplate.RenderSpans).
	Parts [][]Span
}

// ChatTemplate renders chat messages into a prompt string. A Jinja template
// (Hugging Face chat_template) is rendered with github.com/nikolalohinski/gonja/v2
// configured as transformers does (trim_blocks, lstrip_blocks) and with the
// globals HF templates use (raise_exception, strftime_now, bos_token,
// eos_token, add_generation_prompt). Without a template (llama2.c models)
// the plain default applies; see DefaultChatTemplate. Safe for concurrent use.
type ChatTemplate struct {
	source   string
	bosToken string
	eosToken string

	mu  sync.Mutex // serialises gonja renders
	tpl *exec.Template
}

// NewChatTemplate parses a Jinja chat template; bosToken and eosToken are
// the strings the template sees as bos_token and eos_token. An empty source
// gives the plain default.
func NewChatTemplate(source, bosToken, eosToken string) (*ChatTemplate, error) {
	c := &ChatTemplate{source: source, bosToken: bosToken, eosToken: eosToken}
	if source == "" {
		return c, nil
	}
	cfg := config.New()
	cfg.TrimBlocks = true
	cfg.LeftStripBlocks = true
	env := &exec.Environment{
		Context:           gonja.DefaultContext.Inherit(),
		Filters:           gonja.DefaultEnvironment.Filters,
		Tests:             gonja.DefaultEnvironment.Tests,
		ControlStructures: gonja.DefaultEnvironment.ControlStructures,
		Methods:           gonja.DefaultEnvironment.Methods,
	}
	env.Context.Set("strftime_now", strftimeNow)
	loader, err := loaders.NewFileSystemLoader("")
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrTemplate, err)
	}
	const name = "chat_template"
	shifted, err := loaders.NewShiftedLoader(name, strings.NewReader(source), loader)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrTemplate, err)
	}
	c.tpl, err = exec.NewTemplate(name, cfg, shifted, env)
	if err != nil {
		return nil, fmt.Errorf("%w: parse: %v", ErrTemplate, err)
	}
	return c, nil
}

// DefaultChatTemplate is the plain format for models without a chat
// template (llama2.c): the text parts of every message in order (system
// first, as given), separated by blank lines ("\n\n"); the assistant turn is
// the model's continuation of that text, so addGenerationPrompt adds
// nothing. Roles are not written.
func DefaultChatTemplate() *ChatTemplate { return &ChatTemplate{} }

// ChatTemplate returns the model's chat template (the plain default when
// tokenizer_config.json has none).
func (t *HF) ChatTemplate() (*ChatTemplate, error) {
	return NewChatTemplate(t.template, t.bosToken, t.eosToken)
}

// Source is the Jinja source ("" for the plain default).
func (c *ChatTemplate) Source() string { return c.source }

// Render renders messages into the prompt string.
func (c *ChatTemplate) Render(messages []Message, addGenerationPrompt bool) (string, error) {
	if c.tpl == nil {
		r, err := c.renderDefault(messages)
		return r.Text, err
	}
	contents := make([]string, len(messages))
	for i, m := range messages {
		if err := m.Content.check(); err != nil {
			return "", err
		}
		contents[i], _ = m.Content.joined()
	}
	return c.execute(messages, contents, addGenerationPrompt)
}

// RenderSpans renders like Render and also locates every content part in
// the output. For a Jinja template it renders a second time with each
// message's content replaced by a unique marker, takes the template's own
// text between the markers from that, and checks that the real output is
// exactly that text with each content (or its trimmed form) in place of its
// marker. When the template treats the marker differently from the content
// (branches on the content's text, emits it twice), the check fails and
// Parts is nil: callers then have to find the parts by other means.
func (c *ChatTemplate) RenderSpans(messages []Message, addGenerationPrompt bool) (Rendered, error) {
	if c.tpl == nil {
		return c.renderDefault(messages)
	}
	contents := make([]string, len(messages))
	ranges := make([][][2]int, len(messages))
	markers := make([]string, len(messages))
	for i, m := range messages {
		if err := m.Content.check(); err != nil {
			return Rendered{}, err
		}
		contents[i], ranges[i] = m.Content.joined()
		markers[i] = fmt.Sprintf("\uE000%d\uE001", i)
	}
	text, err := c.execute(messages, contents, addGenerationPrompt)
	if err != nil {
		return Rendered{}, err
	}
	out := Rendered{Text: text}
	marked, err := c.execute(messages, markers, addGenerationPrompt)
	if err != nil {
		return out, nil
	}
	out.Parts = locateParts(text, marked, markers, contents, ranges)
	return out, nil
}

// locateParts walks the marker rendering and the real one side by side.
func locateParts(text, marked string, markers, contents []string, ranges [][][2]int) [][]Span {
	parts := make([][]Span, len(markers))
	for i := range parts {
		parts[i] = make([]Span, len(ranges[i]))
		for j := range parts[i] {
			parts[i][j] = Span{-1, -1}
		}
	}
	seen := make([]bool, len(markers))
	pos := 0 // in text
	for len(marked) > 0 {
		k := strings.IndexRune(marked, '\uE000')
		if k < 0 {
			break
		}
		lit := marked[:k]
		if !strings.HasPrefix(text[pos:], lit) {
			return nil
		}
		pos += len(lit)
		end := strings.IndexRune(marked[k:], '\uE001')
		if end < 0 {
			return nil
		}
		var i int
		if _, err := fmt.Sscanf(marked[k+len("\uE000"):k+end], "%d", &i); err != nil || i < 0 || i >= len(markers) {
			return nil
		}
		marked = marked[k+end+len("\uE001"):]
		if seen[i] {
			return nil // emitted twice
		}
		seen[i] = true
		// The content as emitted: whole, or trimmed by the template.
		c := contents[i]
		cut := 0
		switch {
		case strings.HasPrefix(text[pos:], c):
		case strings.HasPrefix(text[pos:], strings.TrimSpace(c)):
			t := strings.TrimSpace(c)
			cut = strings.Index(c, t)
			c = t
		default:
			return nil
		}
		for j, r := range ranges[i] {
			b := min(max(r[0]-cut, 0), len(c))
			e := min(max(r[1]-cut, 0), len(c))
			parts[i][j] = Span{pos + b, pos + e}
		}
		pos += len(c)
	}
	if text[pos:] != marked {
		return nil
	}
	return parts
}

func (c *ChatTemplate) execute(messages []Message, contents []string, addGenerationPrompt bool) (string, error) {
	msgs := make([]any, len(messages))
	for i, m := range messages {
		o := make(map[string]any, len(m.Extra)+2)
		for k, v := range m.Extra {
			o[k] = v
		}
		o["role"] = m.Role
		o["content"] = contents[i]
		msgs[i] = o
	}
	var raised *RaiseError
	data := exec.NewContext(map[string]any{
		"messages":              msgs,
		"add_generation_prompt": addGenerationPrompt,
		"bos_token":             c.bosToken,
		"eos_token":             c.eosToken,
		"raise_exception": func(msg string) (string, error) {
			raised = &RaiseError{Message: msg}
			return "", raised
		},
	})
	c.mu.Lock()
	out, err := c.tpl.ExecuteToString(data)
	c.mu.Unlock()
	if raised != nil {
		return "", raised
	}
	if err != nil {
		return "", fmt.Errorf("%w: render: %v", ErrTemplate, err)
	}
	return out, nil
}

func (c *ChatTemplate) renderDefault(messages []Message) (Rendered, error) {
	var sb strings.Builder
	parts := make([][]Span, len(messages))
	for i, m := range messages {
		if err := m.Content.check(); err != nil {
			return Rendered{}, err
		}
		parts[i] = make([]Span, len(m.Content.Parts))
		for j, p := range m.Content.Parts {
			if sb.Len() > 0 {
				sb.WriteString("\n\n")
			}
			parts[i][j] = Span{sb.Len(), sb.Len() + len(p.Text)}
			sb.WriteString(p.Text)
		}
	}
	return Rendered{Text: sb.String(), Parts: parts}, nil
}

// strftimeNow is the strftime_now(format) global of transformers, for the
// directives chat templates use (Llama-3.1: "%d %b %Y").
func strftimeNow(format string) string {
	now := time.Now()
	r := strings.NewReplacer(
		"%d", now.Format("02"), "%b", now.Format("Jan"), "%B", now.Format("January"),
		"%Y", now.Format("2006"), "%y", now.Format("06"), "%m", now.Format("01"),
		"%H", now.Format("15"), "%M", now.Format("04"), "%S", now.Format("05"),
		"%a", now.Format("Mon"), "%A", now.Format("Monday"), "%%", "%",
	)
	return r.Replace(format)
}
