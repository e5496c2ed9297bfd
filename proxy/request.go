package proxy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/fusionrag/fusionrag/fingerprint"
	"github.com/fusionrag/fusionrag/internal/jsonobj"
	"github.com/fusionrag/fusionrag/prompt"
)

// Request is an eligible request as the fusion path sees it: the parsed
// OpenAI body, the tenant and the per-request override.
type Request struct {
	Route Route

	// Tenant is 32 hex digits (xxh3-128) identifying the tenant; it must be
	// part of every cache key. TenantSource says where it came from:
	// "header", "api-key" or "anonymous".
	Tenant       string
	TenantSource string

	// Override is the per-request strategy and ratio, already validated.
	Override Override

	// Messages is the chat conversation (RouteChat).
	Messages []Message
	// Prompt is the completion prompt (RouteCompletions).
	Prompt Prompt

	// Body is the body the engine receives when fusion does not apply: the
	// client's body with the "fusionrag" and any client "kv_transfer_params"
	// members removed (see isKVParams), every other byte unchanged. The
	// fusion path must not modify it.
	Body []byte

	// Parsed is Body as the engine parses it (prompt.ParseRequest): the
	// fusion path parses it once, on first use, and keeps it here. Nil
	// until then.
	Parsed *prompt.Request
}

// Message is one chat message. Content is set when the message's content is a
// string; Parts when it is an array of content parts.
type Message struct {
	Role    string
	Content string
	Parts   []ContentPart
	// Other holds the members other than role and content (name, tool_calls,
	// ...), raw, for fusion paths that must reproduce the chat template exactly.
	Other map[string]json.RawMessage
}

// ContentPart is one part of a message's content array. Text is set for
// type "text"; other types (image_url, ...) keep their raw JSON.
type ContentPart struct {
	Type string
	Text string
	Raw  json.RawMessage
}

// Prompt is a completions prompt: a string or one array of token ids.
type Prompt struct {
	Text     string
	Tokens   []int
	IsTokens bool
}

// Override is a per-request choice of strategy and recompute ratio.
type Override struct {
	Strategy string  // "" means the configured default
	Ratio    float64 // meaningful when HasRatio
	HasRatio bool
}

// Errors of request parsing. ErrMalformed bodies are forwarded untouched so
// the engine answers them exactly as it would have; ErrNotEligible requests
// are well-formed but outside what the fusion path serves (batched prompts,
// n > 1, ...) and are passed through; *OverrideError is a bad override and is
// answered 400.
var (
	ErrMalformed   = errors.New("proxy: malformed request body")
	ErrNotEligible = errors.New("proxy: request not eligible for fusion")
)

// OverrideError is an invalid per-request override; the client gets a 400.
type OverrideError struct {
	Source string // "header X-Fusionrag-Ratio", "body fusionrag", ...
	Value  string
	Reason string
}

// InvalidRequestError is a body the OpenAI API defines as invalid and that
// the sidecar refuses (400) instead of reading its own way: a null model, or
// a null content in a message other than an assistant's (issue 18: both were
// read as "", so the sidecar and the engine could disagree on the request).
// A null stream is not one: the API makes it nullable, default false.
type InvalidRequestError struct{ Reason string }

func (e *InvalidRequestError) Error() string { return "invalid request: " + e.Reason }

func (e *OverrideError) Error() string {
	return fmt.Sprintf("invalid fusion override from %s (%q): %s", e.Source, e.Value, e.Reason)
}

// Override header names.
const (
	HeaderStrategy = "X-Fusionrag-Strategy"
	HeaderRatio    = "X-Fusionrag-Ratio"
	bodyOverride   = "fusionrag"
)

// HeaderTenant is the conventional name of the tenant header. The sidecar
// reads it only when configured to (Tenant.Header, off by default): behind a
// gateway that sets or strips it. Otherwise it is an ordinary header,
// forwarded to the engine and never consulted for the tenant.
const HeaderTenant = "X-Fusionrag-Tenant"

// ParseRequest parses the body of an eligible route. It returns the request
// (with Body set to the body minus the "fusionrag" member) even alongside
// ErrNotEligible, so the caller can forward that body. On ErrMalformed the
// returned request is nil and the original body must be forwarded untouched.
// Headers are not consulted here; see ParseOverrideHeaders and TenantOf.
func ParseRequest(route Route, body []byte) (*Request, error) {
	if !json.Valid(body) {
		return nil, ErrMalformed
	}
	ms, err := jsonobj.Members(body)
	if err != nil {
		return nil, ErrMalformed
	}
	r := &Request{Route: route, Body: body}

	// The override member is removed whatever the rest of the body holds: it
	// is addressed to the sidecar, not the engine.
	var ovErr error
	if m, ok := jsonobj.Last(ms, bodyOverride); ok {
		r.Override, ovErr = parseBodyOverride(body[m.ValStart:m.ValEnd])
		nb, _, err := jsonobj.Remove(body, bodyOverride)
		if err != nil {
			return nil, ErrMalformed // unreachable for a valid object
		}
		r.Body = nb
	}
	// kv_transfer_params is the sidecar's to set: a client's would point
	// the engine at KV published for someone else.
	if slices.ContainsFunc(ms, func(m jsonobj.Member) bool { return isKVParams(m.Key) }) {
		nb, _, err := jsonobj.RemoveFunc(r.Body, isKVParams)
		if err != nil {
			return nil, ErrMalformed // unreachable for a valid object
		}
		r.Body = nb
	}
	if ovErr != nil {
		return r, ovErr
	}

	if m, ok := jsonobj.Last(ms, "model"); ok {
		if skipSpaceByte(body[m.ValStart:m.ValEnd]) == 'n' {
			return r, &InvalidRequestError{Reason: "model is null; it must be a string"}
		}
		var model string // checked, not kept: the fuser reads the body's own
		if json.Unmarshal(body[m.ValStart:m.ValEnd], &model) != nil {
			return r, fmt.Errorf("%w: model is not a string", ErrNotEligible)
		}
	}
	if m, ok := jsonobj.Last(ms, "stream"); ok {
		var stream bool
		if json.Unmarshal(body[m.ValStart:m.ValEnd], &stream) != nil {
			return r, fmt.Errorf("%w: stream is not a boolean", ErrNotEligible)
		}
	}
	if m, ok := jsonobj.Last(ms, "n"); ok {
		var n float64
		if json.Unmarshal(body[m.ValStart:m.ValEnd], &n) != nil || n != 1 {
			return r, fmt.Errorf("%w: n must be 1", ErrNotEligible)
		}
	}
	switch route {
	case RouteChat:
		m, ok := jsonobj.Last(ms, "messages")
		if !ok {
			return r, fmt.Errorf("%w: no messages", ErrNotEligible)
		}
		if r.Messages, err = parseMessages(body[m.ValStart:m.ValEnd]); err != nil {
			return r, err
		}

	case RouteCompletions:
		m, ok := jsonobj.Last(ms, "prompt")
		if !ok {
			return r, fmt.Errorf("%w: no prompt", ErrNotEligible)
		}
		if r.Prompt, err = parsePrompt(body[m.ValStart:m.ValEnd]); err != nil {
			return r, err
		}
	default:
		return r, fmt.Errorf("%w: route %v", ErrNotEligible, route)
	}
	return r, nil
}

// kvParamsMember is the member through which the engine finds published KV.
const kvParamsMember = "kv_transfer_params"

// isKVParams reports whether an object member named key would be read as
// kv_transfer_params by an engine: exactly (vLLM) or case-insensitively with
// Unicode simple folding (Go's encoding/json, as this project's engine).
func isKVParams(key string) bool { return strings.EqualFold(key, kvParamsMember) }

// stripClientControl returns body without the members addressed to the
// sidecar ("fusionrag") or that only the sidecar may set
// ("kv_transfer_params"), every other byte unchanged; body itself when it
// has none or is not a JSON object.
func stripClientControl(body []byte) []byte {
	if !json.Valid(body) {
		return body
	}
	nb, _, err := jsonobj.RemoveFunc(body, func(k string) bool { return k == bodyOverride || isKVParams(k) })
	if err != nil {
		return body
	}
	return nb
}

// mayCarryKVParams reports whether a body that is not valid JSON might still
// name kv_transfer_params for a lenient engine parser (Python's json reads
// NaN and Infinity, a UTF-8 BOM, UTF-16 and UTF-32, all of which
// encoding/json rejects): the name in any case, NUL bytes dropped (UTF-16/32
// ASCII), \uXXXX escapes decoded. Such a body cannot be cleaned, so it is
// refused.
func mayCarryKVParams(body []byte) bool {
	body = bytes.ReplaceAll(body, []byte{0}, nil)
	var dec []byte
	for i := 0; i < len(body); i++ {
		if body[i] == '\\' && i+5 < len(body) && body[i+1] == 'u' {
			if r, err := strconv.ParseUint(string(body[i+2:i+6]), 16, 32); err == nil {
				dec = utf8.AppendRune(dec, rune(r))
				i += 5
				continue
			}
		}
		dec = append(dec, body[i])
	}
	return bytes.Contains(bytes.ToLower(dec), []byte(kvParamsMember))
}

func parseMessages(raw []byte) ([]Message, error) {
	var items []json.RawMessage
	if json.Unmarshal(raw, &items) != nil {
		return nil, fmt.Errorf("%w: messages is not an array", ErrNotEligible)
	}
	if len(items) == 0 {
		return nil, fmt.Errorf("%w: no messages", ErrNotEligible)
	}
	out := make([]Message, 0, len(items))
	for i, it := range items {
		ms, err := jsonobj.Members(it)
		if err != nil {
			return nil, fmt.Errorf("%w: message %d is not an object", ErrNotEligible, i)
		}
		var msg Message
		nullContent := false
		seen := map[string]bool{}
		for j := len(ms) - 1; j >= 0; j-- { // last duplicate wins
			m := ms[j]
			if seen[m.Key] {
				continue
			}
			seen[m.Key] = true
			v := it[m.ValStart:m.ValEnd]
			switch m.Key {
			case "role":
				if json.Unmarshal(v, &msg.Role) != nil {
					return nil, fmt.Errorf("%w: message %d role is not a string", ErrNotEligible, i)
				}
			case "content":
				if err := parseContent(v, &msg); err != nil {
					return nil, fmt.Errorf("%w: message %d: %v", ErrNotEligible, i, err)
				}
				nullContent = skipSpaceByte(v) == 'n'

			default:
				if msg.Other == nil {
					msg.Other = map[string]json.RawMessage{}
				}
				msg.Other[m.Key] = json.RawMessage(v)
			}
		}
		if nullContent && msg.Role != "assistant" {
			return nil, &InvalidRequestError{Reason: fmt.Sprintf("message %d (role %q) has null content; only an assistant's may be null", i, msg.Role)}
		}
		out = append(out, msg)
	}
	return out, nil
}

func parseContent(v []byte, msg *Message) error {
	switch skipSpaceByte(v) {
	case '"':
		return json.Unmarshal(v, &msg.Content)
	case 'n': // null content (assistant tool calls)
		return nil
	case '[':
		var parts []json.RawMessage
		if err := json.Unmarshal(v, &parts); err != nil {
			return err
		}
		msg.Parts = make([]ContentPart, 0, len(parts))
		for k, p := range parts {
			ms, err := jsonobj.Members(p)
			if err != nil {
				return fmt.Errorf("content part %d is not an object", k)
			}
			cp := ContentPart{Raw: json.RawMessage(p)}
			if m, ok := jsonobj.Last(ms, "type"); ok {
				if json.Unmarshal(p[m.ValStart:m.ValEnd], &cp.Type) != nil {
					return fmt.Errorf("content part %d type is not a string", k)
				}
			}
			if cp.Type == "text" {
				m, ok := jsonobj.Last(ms, "text")
				if !ok || json.Unmarshal(p[m.ValStart:m.ValEnd], &cp.Text) != nil {
					return fmt.Errorf("content part %d has no text string", k)
				}
			}
			msg.Parts = append(msg.Parts, cp)
		}
		return nil
	}
	return errors.New("content is not a string, array or null")
}

func parsePrompt(v []byte) (Prompt, error) {
	switch skipSpaceByte(v) {
	case '"':
		var p Prompt
		err := json.Unmarshal(v, &p.Text)
		return p, err
	case '[':
		// A single array of token ids is one prompt; an array of strings or of
		// arrays is a batch, which the fusion path does not serve.
		var toks []json.Number
		dec := json.NewDecoder(bytes.NewReader(v))
		dec.UseNumber()
		if dec.Decode(&toks) != nil {
			return Prompt{}, fmt.Errorf("%w: batched prompt", ErrNotEligible)
		}
		p := Prompt{IsTokens: true, Tokens: make([]int, len(toks))}
		for i, t := range toks {
			n, err := strconv.ParseInt(string(t), 10, 32)
			if err != nil || n < 0 {
				return Prompt{}, fmt.Errorf("%w: token %d (%s) is not a token id", ErrNotEligible, i, t)
			}
			p.Tokens[i] = int(n)
		}
		return p, nil
	}
	return Prompt{}, fmt.Errorf("%w: prompt is not a string or token array", ErrNotEligible)
}

func skipSpaceByte(v []byte) byte {
	i := jsonobj.SkipSpace(v, 0)
	if i < len(v) {
		return v[i]
	}
	return 0
}

func parseBodyOverride(v []byte) (Override, error) {
	bad := func(reason string) (Override, error) {
		return Override{}, &OverrideError{Source: "body field fusionrag", Value: string(v), Reason: reason}
	}
	ms, err := jsonobj.Members(v)
	if err != nil {
		return bad("must be an object {\"strategy\", \"ratio\"}")
	}
	var o Override
	for _, m := range ms {
		raw := v[m.ValStart:m.ValEnd]
		switch m.Key {
		case "strategy":
			if json.Unmarshal(raw, &o.Strategy) != nil {
				return bad("strategy must be a string")
			}
			if !validStrategy(o.Strategy) {
				return bad("strategy must be one of " + strategyNames())
			}
		case "ratio":
			if json.Unmarshal(raw, &o.Ratio) != nil {
				return bad("ratio must be a number")
			}
			if !(o.Ratio >= 0 && o.Ratio <= 1) {
				return bad("ratio must be in [0, 1]")
			}
			o.HasRatio = true
		default:
			return bad("unknown member " + strconv.Quote(m.Key))
		}
	}
	return o, nil
}

// ParseOverrideHeaders reads X-Fusionrag-Strategy and X-Fusionrag-Ratio
// (empty values mean absent) and merges them under body, which wins: the body
// is the more specific of the two.
func ParseOverrideHeaders(strategy, ratio string, body Override) (Override, error) {
	o := body
	if s := strings.TrimSpace(strategy); s != "" && o.Strategy == "" {
		if !validStrategy(s) {
			return Override{}, &OverrideError{Source: "header " + HeaderStrategy, Value: strategy, Reason: "must be one of " + strategyNames()}
		}
		o.Strategy = s
	}
	if s := strings.TrimSpace(ratio); s != "" && !o.HasRatio {
		x, err := strconv.ParseFloat(s, 64)
		if err != nil || !(x >= 0 && x <= 1) {
			return Override{}, &OverrideError{Source: "header " + HeaderRatio, Value: ratio, Reason: "must be a number in [0, 1]"}
		}
		o.Ratio, o.HasRatio = x, true
	}
	return o, nil
}

// TenantOf derives the tenant from the tenant header's value and the
// Authorization header. headerValue must come from the configured, trusted
// tenant header only (Tenant.Header), and be empty when none is configured or
// the request has none: then the tenant is the bearer key's, or anonymous.
// The result is 32 hex digits of an xxh3-128 hash (fingerprint.Tenant),
// domain-separated by source so that a header value can never equal a key's
// hash; the API key itself is never kept. `fusionrag ingest --tenant T`
// stores KV for the tenant TenantOf(T, "") names.
func TenantOf(headerValue, authorization string) (tenant, source string) {
	if v := strings.TrimSpace(headerValue); v != "" {
		return fingerprint.Tenant(fingerprint.TenantFromHeader, v), fingerprint.TenantFromHeader
	}
	if a := strings.TrimSpace(authorization); a != "" {
		key := a
		if scheme, rest, ok := strings.Cut(a, " "); ok && strings.EqualFold(scheme, "Bearer") {
			key = strings.TrimSpace(rest)
		}
		return fingerprint.Tenant(fingerprint.TenantFromAPIKey, key), fingerprint.TenantFromAPIKey
	}
	return fingerprint.Tenant(fingerprint.TenantAnonymous, ""), fingerprint.TenantAnonymous
}
