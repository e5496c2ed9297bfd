package proxy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"unicode/utf8"

	"github.com/fusionrag/fusionrag/fingerprint"
	"github.com/fusionrag/fusionrag/internal/jsonobj"
	"github.com/fusionrag/fusionrag/prompt"
)

// Request is an eligible request as the fusion path sees it: the body the
// engine gets when fusion does not apply, the body as the engine parses it,
// the tenant and the per-request override.
type Request struct {
	Route Route

	// Tenant is 32 hex digits (xxh3-128) identifying the tenant; it must be
	// part of every cache key. TenantSource says where it came from:
	// "header", "api-key" or "anonymous".
	Tenant       string
	TenantSource string

	// Override is the per-request strategy and ratio, already validated.
	Override Override

	// Body is the body the engine receives when fusion does not apply: the
	// client's body with the "fusionrag" and any client "kv_transfer_params"
	// members removed (see isKVParams), every other byte unchanged. The
	// fusion path must not modify it.
	Body []byte

	// Parsed is Body as the engine parses it (prompt.ParseRequest), done
	// once by ParseRequest: the sidecar's one decode of the body. Nil when
	// the engine's parser refuses Body although it is eligible (a content
	// part type such as image_url, a parameter out of the engine's range):
	// the engine would answer it 400, so a Fuser skips it
	// (SkipEngineRejects) and the body is forwarded for the engine to say so.
	Parsed *prompt.Request
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
//
// The body is decoded once, by prompt.ParseRequest into Parsed, and only
// when it is eligible. Everything before is a scan of the bytes: json.Valid
// (jsonobj reads valid JSON only), the member scan, and the eligibility
// rules over the shapes of the members' values (checkMessages,
// checkPrompt), which decode nothing but, rarely, a short string holding
// escapes (a role or a part type; see Decodes).
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

	// The values below are valid JSON (json.Valid above), so the first
	// byte names the type: a string always decodes, true/false/null are
	// what their first byte says.
	if m, ok := jsonobj.Last(ms, "model"); ok {
		switch skipSpaceByte(body[m.ValStart:m.ValEnd]) {
		case 'n':
			return r, &InvalidRequestError{Reason: "model is null; it must be a string"}
		case '"': // checked, not kept: the fuser reads the engine's parse
		default:
			return r, fmt.Errorf("%w: model is not a string", ErrNotEligible)
		}
	}
	if m, ok := jsonobj.Last(ms, "stream"); ok {
		if c := skipSpaceByte(body[m.ValStart:m.ValEnd]); c != 't' && c != 'f' && c != 'n' { // null: the default, false
			return r, fmt.Errorf("%w: stream is not a boolean", ErrNotEligible)
		}
	}
	if m, ok := jsonobj.Last(ms, "n"); ok {
		// As a float64 reads it (1, 1.0, 1e0 are all one); null is not 1.
		if n, err := strconv.ParseFloat(string(body[m.ValStart:m.ValEnd]), 64); err != nil || n != 1 {
			return r, fmt.Errorf("%w: n must be 1", ErrNotEligible)
		}
	}
	switch route {
	case RouteChat:
		m, ok := jsonobj.Last(ms, "messages")
		if !ok {
			return r, fmt.Errorf("%w: no messages", ErrNotEligible)
		}
		if err := checkMessages(body[m.ValStart:m.ValEnd]); err != nil {
			return r, err
		}
	case RouteCompletions:
		m, ok := jsonobj.Last(ms, "prompt")
		if !ok {
			return r, fmt.Errorf("%w: no prompt", ErrNotEligible)
		}
		if err := checkPrompt(body[m.ValStart:m.ValEnd]); err != nil {
			return r, err
		}
	default:
		return r, fmt.Errorf("%w: route %v", ErrNotEligible, route)
	}
	// The one decode. A refusal is not the sidecar's to answer: the body
	// is eligible, the engine answers it (see Parsed).
	r.Parsed, _ = prompt.ParseRequest(r.Body, route == RouteChat)
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

// checkMessages applies the fusion path's rules to the chat messages v (a
// valid JSON value) by scanning it: an array of at least one object, each
// role a string, each content a string, null or an array of objects whose
// type is a string and whose text parts have a text string; other part
// types (image_url, ...) are eligible here, the engine's parser decides.
// Only an assistant's content may be null (*InvalidRequestError).
func checkMessages(v []byte) error {
	switch skipSpaceByte(v) {
	case 'n':
		return fmt.Errorf("%w: no messages", ErrNotEligible)
	case '[':
	default:
		return fmt.Errorf("%w: messages is not an array", ErrNotEligible)
	}
	items, err := jsonobj.Elements(v)
	if err != nil {
		return fmt.Errorf("%w: messages is not an array", ErrNotEligible) // unreachable for valid JSON
	}
	if len(items) == 0 {
		return fmt.Errorf("%w: no messages", ErrNotEligible)
	}
	for i, e := range items {
		it := v[e[0]:e[1]]
		ms, err := jsonobj.Members(it)
		if err != nil {
			return fmt.Errorf("%w: message %d is not an object", ErrNotEligible, i)
		}
		var role []byte // raw; nil when absent
		if m, ok := jsonobj.Last(ms, "role"); ok {
			role = it[m.ValStart:m.ValEnd]
			if !isStringOrNull(role) {
				return fmt.Errorf("%w: message %d role is not a string", ErrNotEligible, i)
			}
		}
		nullContent := false
		if m, ok := jsonobj.Last(ms, "content"); ok {
			c := it[m.ValStart:m.ValEnd]
			if err := checkContent(c); err != nil {
				return fmt.Errorf("%w: message %d: %v", ErrNotEligible, i, err)
			}
			nullContent = skipSpaceByte(c) == 'n'
		}
		if nullContent {
			if r := stringValue(role); r != "assistant" {
				return &InvalidRequestError{Reason: fmt.Sprintf("message %d (role %q) has null content; only an assistant's may be null", i, r)}
			}
		}
	}
	return nil
}

// checkContent checks a message's content v (a valid JSON value).
func checkContent(v []byte) error {
	switch skipSpaceByte(v) {
	case '"', 'n': // a string; null (assistant tool calls)
		return nil
	case '[':
		parts, err := jsonobj.Elements(v)
		if err != nil {
			return err // unreachable for valid JSON
		}
		for k, e := range parts {
			p := v[e[0]:e[1]]
			ms, err := jsonobj.Members(p)
			if err != nil {
				return fmt.Errorf("content part %d is not an object", k)
			}
			var typ []byte
			if m, ok := jsonobj.Last(ms, "type"); ok {
				if typ = p[m.ValStart:m.ValEnd]; !isStringOrNull(typ) {
					return fmt.Errorf("content part %d type is not a string", k)
				}
			}
			if stringValue(typ) == "text" {
				m, ok := jsonobj.Last(ms, "text")
				if !ok || !isStringOrNull(p[m.ValStart:m.ValEnd]) {
					return fmt.Errorf("content part %d has no text string", k)
				}
			}
		}
		return nil
	}
	return errors.New("content is not a string, array or null")
}

// checkPrompt applies the fusion path's rules to a completions prompt v (a
// valid JSON value) by scanning it: a string, or one array of token ids
// (integers in [0, 2^31)). An array of strings or of arrays is a batch,
// which the fusion path does not serve. As encoding/json's Number reads
// them, a string holding an integer literal ("5") counts as that id.
func checkPrompt(v []byte) error {
	switch skipSpaceByte(v) {
	case '"':
		return nil
	case '[':
		toks, err := jsonobj.Elements(v)
		if err != nil {
			return fmt.Errorf("%w: batched prompt", ErrNotEligible) // unreachable for valid JSON
		}
		for i, e := range toks {
			t := v[e[0]:e[1]]
			var s string
			switch c := t[0]; {
			case c == '-' || c >= '0' && c <= '9':
				s = string(t)
			case c == '"':
				if s = stringValue(t); !isIntLiteral(s) {
					return fmt.Errorf("%w: batched prompt", ErrNotEligible)
				}
			case c == 'n': // a null id
			default:
				return fmt.Errorf("%w: batched prompt", ErrNotEligible)
			}
			if n, err := strconv.ParseInt(s, 10, 32); err != nil || n < 0 {
				return fmt.Errorf("%w: token %d (%s) is not a token id", ErrNotEligible, i, s)
			}
		}
		return nil
	}
	return fmt.Errorf("%w: prompt is not a string or token array", ErrNotEligible)
}

// isIntLiteral reports whether s is a JSON integer literal: -?(0|[1-9][0-9]*).
func isIntLiteral(s string) bool {
	s = strings.TrimPrefix(s, "-")
	if s == "" || s[0] == '0' && len(s) > 1 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// isStringOrNull reports whether the valid JSON value v is a string or null.
func isStringOrNull(v []byte) bool {
	c := skipSpaceByte(v)
	return c == '"' || c == 'n'
}

// decodes counts the JSON values request parsing decodes itself; see Decodes.
var decodes atomic.Int64

// Decodes returns how many JSON values the proxy's request parsing has
// decoded itself (encoding/json) since the process started: the members
// of a "fusionrag" override, and a string of the eligibility checks that
// holds escapes or bytes that are not valid UTF-8 (a role, a part type).
// Never the messages or the prompt: the body's one decode is
// prompt.ParseRequest's (prompt.Counts). For tests.
func Decodes() int64 { return decodes.Load() }

// decode is json.Unmarshal, counted in Decodes.
func decode(raw []byte, v any) error {
	decodes.Add(1)
	return json.Unmarshal(raw, v)
}

// stringValue returns the string the valid JSON string or null v holds
// ("" for null or nil), as encoding/json decodes it.
func stringValue(v []byte) string {
	if len(v) < 2 || v[0] != '"' {
		return ""
	}
	if in := v[1 : len(v)-1]; bytes.IndexByte(in, '\\') < 0 && utf8.Valid(in) {
		return string(in)
	}
	var s string
	_ = decode(v, &s) // a valid JSON string: cannot fail
	return s
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
			if decode(raw, &o.Strategy) != nil {
				return bad("strategy must be a string")
			}
			if !validStrategy(o.Strategy) {
				return bad("strategy must be one of " + strategyNames())
			}
		case "ratio":
			if decode(raw, &o.Ratio) != nil {
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
