package rag

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"

	"github.com/fusionrag/fusionrag/fingerprint"
	"github.com/fusionrag/fusionrag/internal/jsonobj"
	"github.com/fusionrag/fusionrag/model/tokenizer"
	"github.com/fusionrag/fusionrag/prompt"
	"github.com/fusionrag/fusionrag/proxy"
)

// segmented is a request split on the engine's ids.
type segmented struct {
	ids  []int32
	seg  fingerprint.Segments
	body []byte // rewritten body (markers stripped); nil: req.Body
	how  string // "parts", "separator", "markers", "index", "paragraphs", "index+paragraphs"
}

// segment finds S, the chunks and Q on the ids the engine will run for the
// (possibly rewritten) body. The body was parsed once, by the proxy with
// prompt.ParseRequest (req.Parsed), and the prompt is tokenized once
// (prompt.EncodeText on the text rendered once), with byte offsets when a
// convention needs them: prompt's rules are the engine's, so these are the
// engine's ids.
func (f *Fuser) segment(req *proxy.Request) (*segmented, error) {
	pr := req.Parsed
	if pr == nil { // the engine's parser refuses the body: the engine answers it
		return nil, proxy.Skip(proxy.SkipEngineRejects)
	}
	// Bounds before work (issue 18): a prompt that cannot fit in the
	// context is skipped on its parse, before it is rendered or tokenized
	// (a 7 MB body raised RSS by ~160 MB, 98 MB of it in EncodeOffsets).
	if pr.Prompt.IsTokens && len(pr.Prompt.Tokens) > f.m.Config.MaxPositions || promptTextBytes(pr.Prompt) > f.maxPromptBytes {
		return nil, proxy.Skip(proxy.SkipPromptTooLong)
	}
	p := pr.Prompt
	sg := &segmented{}
	var text string // the rendered prompt text; "" with no text yet
	rendered := false
	var cuts []int

	switch {
	case p.IsTokens:
		// Token prompts carry no text: only known chunks can be found.
	case p.Messages != nil:
		u := lastUser(p.Messages)
		if u < 0 {
			break
		}
		msg := p.Messages[u]
		if !msg.Content.IsString && len(msg.Content.Parts) >= 2 {
			r, err := f.chat.RenderSpans(p.Messages, true)
			if err != nil {
				return nil, proxy.Skip(proxy.SkipEngineRejects)
			}
			if r.Parts == nil || u >= len(r.Parts) {
				return nil, proxy.Skip(proxy.SkipTemplateSpans)
			}
			parts := make([]fingerprint.Span, len(r.Parts[u]))
			for i, s := range r.Parts[u] {
				parts[i] = fingerprint.Span{Begin: s.Begin, End: s.End}
			}
			var ok bool
			if cuts, ok = fingerprint.PartCuts(r.Text, parts); !ok {
				return nil, proxy.Skip(proxy.SkipTemplateSpans)
			}
			// RenderSpans' text is Render's (the template runs on the same
			// messages), so it is what the engine renders.
			text, rendered, sg.how = r.Text, true, "parts"
			break
		}
		content := joinedText(msg.Content)
		lay, how, err := f.markers(content)
		if err != nil {
			return nil, err
		}
		if how == "" {
			break
		}
		if lay.Text != content {
			// The same edit on the body the engine gets and on the parsed
			// messages: the engine parses the rewritten body into exactly
			// these messages, so it is not parsed again here.
			p.Messages = slices.Clone(p.Messages)
			p.Messages[u].Content = tokenizer.Text(lay.Text)
			if sg.body, err = replaceMessageContent(req.Body, u, lay.Text); err != nil {
				return nil, err
			}
		}
		r, err := f.chat.RenderSpans(p.Messages, true)
		if err != nil {
			return nil, proxy.Skip(proxy.SkipEngineRejects)
		}
		if r.Parts == nil || u >= len(r.Parts) || len(r.Parts[u]) != 1 || r.Parts[u][0].End-r.Parts[u][0].Begin != len(lay.Text) {
			return nil, proxy.Skip(proxy.SkipTemplateSpans) // the template trimmed or rewrote the content
		}
		base := r.Parts[u][0].Begin
		for _, c := range lay.Cuts {
			cuts = append(cuts, base+c)
		}
		text, rendered, sg.how = r.Text, true, how
	default: // completions text prompt
		lay, how, err := f.markers(p.Text)
		if err != nil {
			return nil, err
		}
		if how == "" {
			break
		}
		if lay.Text != p.Text {
			if sg.body, err = replaceMember(req.Body, "prompt", lay.Text); err != nil {
				return nil, err
			}
		}
		p.Text, text, rendered, cuts, sg.how = lay.Text, lay.Text, true, lay.Cuts, how
	}

	// The truth: the ids the engine computes for the body it will receive,
	// from one tokenization. Offsets are needed for the cuts of (a) and (b)
	// and for passages (d).
	wantOffsets := sg.how != "" || !f.cfg.Fusion.NoParagraphs
	var enc prompt.Encoded
	var err error
	switch {
	case p.IsTokens:
		enc.IDs = p.Tokens
	case rendered:
		enc, err = prompt.EncodeText(f.tok, text, wantOffsets)
	default:
		if text, _, err = prompt.Render(f.chat, p); err == nil {
			enc, err = prompt.EncodeText(f.tok, text, wantOffsets)
		}
	}
	if err != nil || len(enc.IDs) == 0 {
		return nil, proxy.Skip(proxy.SkipEngineRejects)
	}
	ids := enc.IDs
	sg.ids = ids

	if sg.how != "" {
		var err error
		if sg.seg, err = fingerprint.Cut(spansOf(enc.Offsets), cuts); err != nil {
			return nil, proxy.Skip(proxy.SkipNoChunks)
		}
	} else {
		minPrefix := 0
		if prompt.AddsBOS(f.tok) {
			minPrefix = 1
		}
		// The tenant's own chunks and the shared ones together: segmenting
		// with one and then the other would cut a prompt that mixes them
		// at the first index's chunks only, and miss the rest.
		seen := f.seenBy(req.Tenant)
		var ok bool
		if enc.Offsets != nil && !f.cfg.Fusion.NoParagraphs {
			// (c) and (d) together: known chunks where they match,
			// passages around them.
			sg.seg, sg.how, ok = fingerprint.SegmentParagraphs(ids, enc.Text, spansOf(enc.Offsets), minPrefix, f.paragraphs(), seen, &f.index)
		} else {
			sg.seg, ok = fingerprint.SegmentAny(ids, minPrefix, seen, &f.index)
			sg.how = "index"
		}
		if !ok {
			return nil, proxy.Skip(proxy.SkipNoChunks)
		}
	}
	if len(sg.seg.Chunks) == 0 {
		return nil, proxy.Skip(proxy.SkipNoChunks)
	}
	return sg, nil
}

// spansOf converts tokenizer byte spans to fingerprint's.
func spansOf(offs []tokenizer.Span) []fingerprint.Span {
	spans := make([]fingerprint.Span, len(offs))
	for i, o := range offs {
		spans[i] = fingerprint.Span{Begin: o.Begin, End: o.End}
	}
	return spans
}

// paragraphs is convention (d)'s configuration.
func (f *Fuser) paragraphs() fingerprint.Paragraphs {
	fc := f.cfg.Fusion
	return fingerprint.Paragraphs{MinTokens: fc.ParagraphMinTokens, MaxTokens: fc.ParagraphMaxTokens}
}

// promptByteBound is the most bytes of prompt text that positions tokens can
// cover: positions times the longest vocabulary string, times 4 for
// normalisation that shortens the input (NFKC maps a 3-byte fullwidth
// letter to 1 byte) and for vocabulary strings shorter than the bytes they
// stand for. Loose on purpose: it only has to keep megabytes of text away
// from the tokenizer, never to skip a prompt that fits.
func promptByteBound(tok tokenizer.Tokenizer, positions int) int {
	longest := 1
	for id := range tok.VocabSize() {
		longest = max(longest, len(tok.Token(int32(id))))
	}
	return positions * longest * 4
}

// promptTextBytes is the byte length of p's text (the messages' text parts
// summed, or the completions prompt).
func promptTextBytes(p prompt.Prompt) int {
	n := len(p.Text)
	for _, m := range p.Messages {
		for _, part := range m.Content.Parts {
			n += len(part.Text)
		}
	}
	return n
}

// markers applies the configured separator or marker pair to text.
func (f *Fuser) markers(text string) (fingerprint.TextLayout, string, error) {
	fc := f.cfg.Fusion
	if fc.MarkerOpen != "" {
		lay, ok, err := fingerprint.SplitMarkers(text, fc.MarkerOpen, fc.MarkerClose, fc.KeepMarkers)
		if err != nil {
			return lay, "", proxy.Skip(proxy.SkipBadMarkers)
		}
		if ok {
			return lay, "markers", nil
		}
	}
	if fc.Separator != "" {
		if lay, ok := fingerprint.SplitSeparator(text, fc.Separator, fc.KeepMarkers); ok {
			return lay, "separator", nil
		}
	}
	return fingerprint.TextLayout{}, "", nil
}

func lastUser(msgs []tokenizer.Message) int {
	for i := len(msgs) - 1; i >= 0; i-- {
		if msgs[i].Role == "user" {
			return i
		}
	}
	return -1
}

func joinedText(c tokenizer.Content) string {
	if len(c.Parts) == 1 {
		return c.Parts[0].Text
	}
	if c.IsString && len(c.Parts) == 0 {
		return ""
	}
	s := ""
	for i, p := range c.Parts {
		if i > 0 {
			s += "\n"
		}
		s += p.Text
	}
	return s
}

// replaceMember returns body with the top-level member key set to v.
func replaceMember(body []byte, key string, v any) ([]byte, error) {
	raw, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	nb, _, err := jsonobj.Remove(body, key)
	if err != nil {
		return nil, err
	}
	return jsonobj.Append(nb, key, raw)
}

// replaceMessageContent returns body with the content of message u (of the
// top-level "messages" that counts, the last) set to the string text, every
// other byte as the client sent it: the other members of that message and
// the other messages (name, tool_calls, null contents...) are not re-encoded,
// so the engine gets the original request minus the markers.
func replaceMessageContent(body []byte, u int, text string) ([]byte, error) {
	ms, err := jsonobj.Members(body)
	if err != nil {
		return nil, err
	}
	m, ok := jsonobj.Last(ms, "messages")
	if !ok {
		return nil, errors.New("rag: no messages to rewrite")
	}
	var items []json.RawMessage
	if err := json.Unmarshal(body[m.ValStart:m.ValEnd], &items); err != nil {
		return nil, err
	}
	if u < 0 || u >= len(items) {
		return nil, fmt.Errorf("rag: message %d of %d", u, len(items))
	}
	raw, err := json.Marshal(text)
	if err != nil {
		return nil, err
	}
	msg, _, err := jsonobj.Remove(items[u], "content")
	if err != nil {
		return nil, err
	}
	if items[u], err = jsonobj.Append(msg, "content", raw); err != nil {
		return nil, err
	}
	out := make([]byte, 0, len(body)+len(raw))
	out = append(out, body[:m.ValStart]...)
	out = append(out, '[')
	for i, it := range items {
		if i > 0 {
			out = append(out, ',')
		}
		out = append(out, it...)
	}
	out = append(out, ']')
	return append(out, body[m.ValEnd:]...), nil
}
