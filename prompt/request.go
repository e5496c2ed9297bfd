// Package prompt is the one place where an OpenAI request becomes the exact
// token ids an engine runs: the /v1/completions and /v1/chat/completions
// bodies are parsed and validated (ParseRequest), chat messages are rendered
// with the model's chat template once, and the text is encoded with BOS
// added once, by one rule (WithBOS). Encode also returns the byte offset of
// every id in the rendered text, so a caller that must find spans in the
// ids (the sidecar's segmentation) tokenizes once, not twice.
//
// The engine, the sidecar's fuser, the offline ingest, the benchmarks and
// the command line all call it; none decides BOS or renders a template on
// its own.
package prompt

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"strings"

	"github.com/fusionrag/fusionrag/fingerprint"
	"github.com/fusionrag/fusionrag/model/tokenizer"
)

// Prompt is a request's input before tokenization. Exactly one form is set:
// Text (completions with a string prompt), Tokens (completions with token
// ids, used as they are), or Messages (chat, rendered with the model's chat
// template).
type Prompt struct {
	Text     string
	Tokens   []int32
	IsTokens bool
	Messages []tokenizer.Message
}

// Sampling holds the decoding parameters of one request.
type Sampling struct {
	// Temperature scales logits; 0 is greedy (argmax). Default 1.
	Temperature float64
	// TopP keeps the smallest set of tokens whose probability reaches TopP. 1 disables.
	TopP float64
	// TopK keeps the K most likely tokens. 0 disables.
	TopK int
	// Seed makes sampling reproducible; nil draws a random seed.
	Seed *int64
	// MaxTokens bounds the completion; 0 means up to the context limit.
	MaxTokens int
	// Stop strings end the completion; the matched stop string is not returned.
	Stop []string
	// IgnoreEOS keeps generating past end-of-sequence tokens (vLLM extension).
	IgnoreEOS bool
}

// Request is a parsed and validated /v1/completions or /v1/chat/completions body.
type Request struct {
	Chat         bool
	Model        string
	Prompt       Prompt
	Sampling     Sampling
	Stream       bool
	IncludeUsage bool
	// KVNamespace is kv_transfer_params.namespace (hex): the request may use
	// KV published under it. Empty: no published KV is looked up.
	KVNamespace string
}

// MaxStops bounds the number of stop strings, as OpenAI does.
const MaxStops = 4

// wireRequest is the union of both endpoints' fields that the engine reads;
// unknown fields are ignored (as vLLM does).
type wireRequest struct {
	Model               string          `json:"model"`
	Prompt              json.RawMessage `json:"prompt"`
	Messages            json.RawMessage `json:"messages"`
	MaxTokens           *int            `json:"max_tokens"`
	MaxCompletionTokens *int            `json:"max_completion_tokens"`
	Temperature         *float64        `json:"temperature"`
	TopP                *float64        `json:"top_p"`
	TopK                *int            `json:"top_k"`
	Seed                *int64          `json:"seed"`
	Stop                json.RawMessage `json:"stop"`
	N                   *int            `json:"n"`
	Stream              bool            `json:"stream"`
	StreamOptions       *struct {
		IncludeUsage bool `json:"include_usage"`
	} `json:"stream_options"`
	IgnoreEOS        bool            `json:"ignore_eos"`
	Echo             bool            `json:"echo"`
	Logprobs         json.RawMessage `json:"logprobs"`
	BestOf           *int            `json:"best_of"`
	Suffix           *string         `json:"suffix"`
	KVTransferParams *struct {
		Namespace string `json:"namespace"`
	} `json:"kv_transfer_params"`
}

// ParseRequest parses and validates a request body. chat selects the
// /v1/chat/completions schema. Errors wrap ErrBadRequest; those about one
// parameter are *ParamError. Unknown members are ignored (as vLLM does).
func ParseRequest(body []byte, chat bool) (*Request, error) {
	counts.parses.Add(1)
	var w wireRequest
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(&w); err != nil {
		return nil, fmt.Errorf("%w: invalid JSON body: %v", ErrBadRequest, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("%w: invalid JSON body: trailing data after the object", ErrBadRequest)
	}
	r := &Request{Chat: chat, Model: w.Model, Stream: w.Stream}
	var err error
	if chat {
		if len(w.Messages) == 0 || string(w.Messages) == "null" {
			return nil, BadParam("messages", "'messages' is a required property")
		}
		if r.Prompt.Messages, err = parseMessages(w.Messages); err != nil {
			return nil, err
		}
	} else {
		if len(w.Prompt) == 0 || string(w.Prompt) == "null" {
			return nil, BadParam("prompt", "'prompt' is a required property")
		}
		if r.Prompt, err = parsePrompt(w.Prompt); err != nil {
			return nil, err
		}
	}
	if w.StreamOptions != nil {
		if !w.Stream {
			return nil, BadParam("stream_options", "stream_options is only allowed when stream is true")
		}
		r.IncludeUsage = w.StreamOptions.IncludeUsage
	}
	switch {
	case w.Echo:
		return nil, BadParam("echo", "echo is not supported by this engine")
	case len(w.Logprobs) > 0 && !slices.Contains([]string{"null", "false", "0"}, string(w.Logprobs)):
		return nil, BadParam("logprobs", "logprobs are not supported by this engine")
	case w.BestOf != nil && *w.BestOf > 1:
		return nil, BadParam("best_of", "best_of > 1 is not supported by this engine")
	case w.Suffix != nil && *w.Suffix != "":
		return nil, BadParam("suffix", "suffix is not supported by this engine")
	}
	if w.N != nil && *w.N != 1 {
		return nil, BadParam("n", "n = %d is not supported: this engine returns one choice per request", *w.N)
	}
	s := Sampling{Temperature: 1, TopP: 1, IgnoreEOS: w.IgnoreEOS, Seed: w.Seed}
	if w.Temperature != nil {
		s.Temperature = *w.Temperature
		if s.Temperature < 0 || s.Temperature > 2 || math.IsNaN(s.Temperature) {
			return nil, BadParam("temperature", "temperature must be in [0, 2], got %v", s.Temperature)
		}
	}
	if w.TopP != nil {
		s.TopP = *w.TopP
		if !(s.TopP > 0 && s.TopP <= 1) {
			return nil, BadParam("top_p", "top_p must be in (0, 1], got %v", s.TopP)
		}
	}
	if w.TopK != nil {
		s.TopK = *w.TopK
		if s.TopK == -1 { // vLLM's "disabled"
			s.TopK = 0
		}
		if s.TopK < 0 {
			return nil, BadParam("top_k", "top_k must be -1 (disabled) or >= 1, got %d", *w.TopK)
		}
	}
	mt := w.MaxTokens
	if w.MaxCompletionTokens != nil {
		mt = w.MaxCompletionTokens
	}
	if mt != nil {
		if *mt < 1 {
			return nil, BadParam("max_tokens", "max_tokens must be at least 1, got %d", *mt)
		}
		// Bounded so that prompt + max_tokens cannot overflow an int in
		// the context-length check; no context is this long anyway.
		if *mt > math.MaxInt32 {
			return nil, BadParam("max_tokens", "max_tokens must be at most %d, got %d", math.MaxInt32, *mt)
		}
		s.MaxTokens = *mt
	}
	if s.Stop, err = parseStop(w.Stop); err != nil {
		return nil, err
	}
	r.Sampling = s
	if p := w.KVTransferParams; p != nil && p.Namespace != "" {
		if !fingerprint.ValidKVNamespace(p.Namespace) {
			return nil, BadParam("kv_transfer_params", "kv_transfer_params.namespace must be a hex string of at most 128 digits")
		}
		r.KVNamespace = strings.ToLower(p.Namespace)
	}
	return r, nil
}

// parsePrompt accepts a string, a one-element array of strings, an array of
// token ids, or a one-element array of token-id arrays.
func parsePrompt(raw json.RawMessage) (Prompt, error) {
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return Prompt{Text: s}, nil
	}
	var ids []int32
	if json.Unmarshal(raw, &ids) == nil {
		if len(ids) == 0 {
			return Prompt{}, BadParam("prompt", "prompt must not be an empty list of token ids")
		}
		return Prompt{Tokens: ids, IsTokens: true}, nil
	}
	var ss []string
	if json.Unmarshal(raw, &ss) == nil {
		if len(ss) != 1 {
			return Prompt{}, BadParam("prompt", "exactly one prompt per request is supported, got %d", len(ss))
		}
		return Prompt{Text: ss[0]}, nil
	}
	var idss [][]int32
	if json.Unmarshal(raw, &idss) == nil {
		if len(idss) != 1 {
			return Prompt{}, BadParam("prompt", "exactly one prompt per request is supported, got %d", len(idss))
		}
		if len(idss[0]) == 0 {
			return Prompt{}, BadParam("prompt", "prompt must not be an empty list of token ids")
		}
		return Prompt{Tokens: idss[0], IsTokens: true}, nil
	}
	return Prompt{}, BadParam("prompt", "prompt must be a string, an array of token ids (int32), or a one-element array of either")
}

// parseMessages accepts OpenAI chat messages whose content is a string or an
// array of {"type": "text", "text": ...} parts.
func parseMessages(raw json.RawMessage) ([]tokenizer.Message, error) {
	var wire []struct {
		Role    string          `json:"role"`
		Content json.RawMessage `json:"content"`
	}
	if err := json.Unmarshal(raw, &wire); err != nil {
		return nil, BadParam("messages", "messages must be an array of {role, content} objects: %v", err)
	}
	if len(wire) == 0 {
		return nil, BadParam("messages", "messages must not be empty")
	}
	out := make([]tokenizer.Message, len(wire))
	for i, m := range wire {
		switch m.Role {
		case "system", "developer", "user", "assistant", "tool":
		default:
			return nil, BadParam(fmt.Sprintf("messages[%d].role", i), "unsupported role %q", m.Role)
		}
		out[i].Role = m.Role
		if len(m.Content) == 0 || string(m.Content) == "null" {
			out[i].Content = tokenizer.Content{IsString: true} // e.g. an assistant message with tool calls only
			continue
		}
		var s string
		if json.Unmarshal(m.Content, &s) == nil {
			out[i].Content = tokenizer.Text(s)
			continue
		}
		var parts []struct {
			Type string  `json:"type"`
			Text *string `json:"text"`
		}
		if err := json.Unmarshal(m.Content, &parts); err != nil {
			return nil, BadParam(fmt.Sprintf("messages[%d].content", i), "content must be a string or an array of content parts")
		}
		texts := make([]string, len(parts))
		for j, p := range parts {
			if p.Type != "text" || p.Text == nil {
				return nil, BadParam(fmt.Sprintf("messages[%d].content[%d]", i, j),
					"only text content parts are supported, got type %q", p.Type)
			}
			texts[j] = *p.Text
		}
		out[i].Content = tokenizer.TextParts(texts...)
	}
	return out, nil
}

func parseStop(raw json.RawMessage) ([]string, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		if s == "" {
			return nil, nil
		}
		return []string{s}, nil
	}
	var ss []string
	if err := json.Unmarshal(raw, &ss); err != nil {
		return nil, BadParam("stop", "stop must be a string or an array of strings")
	}
	if len(ss) > MaxStops {
		return nil, BadParam("stop", "at most %d stop sequences are allowed, got %d", MaxStops, len(ss))
	}
	out := ss[:0]
	for _, s := range ss {
		if s != "" {
			out = append(out, s)
		}
	}
	return out, nil
}
