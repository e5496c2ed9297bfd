package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

// StreamResult is what one streamed OpenAI completion gave.
type StreamResult struct {
	// TTFT is the time from sending the request to the first event carrying
	// text (Total for a completion without text); FirstChoice to the first
	// event carrying a choice, text or not (e.g. the finish_reason event of
	// an empty completion), 0 when none came; Total to [DONE].
	TTFT, FirstChoice, Total time.Duration
	// Text is the completion. Tokens counts the events carrying text,
	// Choices those carrying a choice (Tokens plus, from this engine, the
	// final finish_reason event).
	Text            string
	Tokens, Choices int
	// PromptTokens is usage.prompt_tokens when the server sent usage,
	// CachedTokens its prompt_tokens_details.cached_tokens: prompt tokens
	// whose KV the engine loaded instead of computing.
	PromptTokens, CachedTokens int
}

// ErrStream matches (errors.Is) every error ReadStream returns for a
// response that is not a well-formed completions event stream.
var ErrStream = errors.New("bench: bad event stream")

// streamError is a malformed or failed event stream. Its message is the
// bare description; it matches ErrStream and unwraps to its cause.
type streamError struct {
	msg string
	err error
}

func (e *streamError) Error() string        { return e.msg }
func (e *streamError) Is(target error) bool { return target == ErrStream }
func (e *streamError) Unwrap() error        { return e.err }

// StatusError is a completions request answered with a status other than
// 200 OK.
type StatusError struct {
	// Code and Status are the response's ("503", "503 Service Unavailable").
	Code   int
	Status string
	// Body is the start of the response body (at most 4 KiB), trimmed.
	Body []byte
}

// Error is the status and the first 512 bytes of the body.
func (e *StatusError) Error() string {
	return fmt.Sprintf("%s: %s", e.Status, e.Body[:min(len(e.Body), 512)])
}

// maxEventLine bounds one SSE line: longer is an error, not unbounded memory.
const maxEventLine = 16 << 20

// ReadStream reads an OpenAI completions server-sent event stream from r:
// "data: {json}" events, "data: [DONE]" at the end; other SSE fields
// (event:, id:, comments) are skipped. It calls first once at the first
// event that carries a choice and firstText once at the first that carries
// text; either may be nil. Stream errors (bad JSON, an error event, no
// [DONE]) match ErrStream; a read error is returned as is. A stream without
// any choice is not an error here: callers that need a token check Choices.
func ReadStream(r io.Reader, first, firstText func()) (StreamResult, error) {
	var res StreamResult
	var text strings.Builder
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), maxEventLine)
	for sc.Scan() {
		data, ok := bytes.CutPrefix(sc.Bytes(), []byte("data:"))
		if !ok {
			continue
		}
		data = bytes.TrimSpace(data)
		if string(data) == "[DONE]" {
			res.Text = text.String()
			return res, nil
		}
		var ev struct {
			Choices []struct {
				Text string `json:"text"`
			} `json:"choices"`
			Error *struct {
				Message string `json:"message"`
			} `json:"error"`
			Usage *struct {
				PromptTokens int `json:"prompt_tokens"`
				Details      *struct {
					CachedTokens int `json:"cached_tokens"`
				} `json:"prompt_tokens_details"`
			} `json:"usage"`
		}
		if err := json.Unmarshal(data, &ev); err != nil {
			res.Text = text.String()
			return res, &streamError{fmt.Sprintf("bad SSE event %q: %v", data[:min(len(data), 120)], err), err}
		}
		if ev.Error != nil {
			res.Text = text.String()
			return res, &streamError{msg: "stream error: " + ev.Error.Message}
		}
		if ev.Usage != nil {
			res.PromptTokens = ev.Usage.PromptTokens
			if ev.Usage.Details != nil {
				res.CachedTokens = ev.Usage.Details.CachedTokens
			}
		}
		if len(ev.Choices) > 0 {
			if res.Choices == 0 && first != nil {
				first()
			}
			res.Choices++
			if t := ev.Choices[0].Text; t != "" {
				if res.Tokens == 0 && firstText != nil {
					firstText()
				}
				res.Tokens++
				text.WriteString(t)
			}
		}
	}
	res.Text = text.String()
	if err := sc.Err(); err != nil {
		return res, err
	}
	return res, &streamError{msg: "stream ended without [DONE]"}
}

// StreamCompletion posts body, a streaming completions request, to
// base+"/v1/completions" with headers (on top of Content-Type:
// application/json) and reads the answer with ReadStream, timing it from
// just before the request is sent. A status other than 200 is a
// *StatusError.
func StreamCompletion(ctx context.Context, client *http.Client, base string, headers map[string]string, body []byte) (StreamResult, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimRight(base, "/")+"/v1/completions", bytes.NewReader(body))
	if err != nil {
		return StreamResult{}, err
	}
	req.Header.Set("Content-Type", "application/json")
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	start := time.Now()
	resp, err := client.Do(req)
	if err != nil {
		return StreamResult{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
		return StreamResult{}, &StatusError{Code: resp.StatusCode, Status: resp.Status, Body: bytes.TrimSpace(b)}
	}
	var firstChoice, firstText time.Duration
	res, err := ReadStream(resp.Body, func() { firstChoice = time.Since(start) }, func() { firstText = time.Since(start) })
	res.Total = time.Since(start)
	res.FirstChoice, res.TTFT = firstChoice, firstText
	if res.Tokens == 0 {
		res.TTFT = res.Total // a completion without text: its last event
	}
	return res, err
}

// CompletionBody is a greedy streaming completions request for prompt (a
// string, or token ids) asking for usage; user, when not empty, is the
// request's "user" field.
func CompletionBody(modelName, user string, prompt any, maxTokens int) ([]byte, error) {
	req := map[string]any{"model": modelName, "prompt": prompt, "max_tokens": maxTokens, "temperature": 0,
		"stream": true, "stream_options": map[string]any{"include_usage": true}}
	if user != "" {
		req["user"] = user
	}
	return json.Marshal(req)
}
