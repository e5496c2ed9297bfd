package engine

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"

	"github.com/fusionrag/fusionrag/prompt"
)

// Sentinel errors for expected conditions. httpError maps them (and the
// typed errors below) to an HTTP status and an OpenAI error body; it is the
// one place where that mapping lives.
var (
	// ErrBadRequest is wrapped by request validation errors (400); it is
	// prompt.ErrBadRequest, which the request parser wraps.
	ErrBadRequest = prompt.ErrBadRequest
	// ErrModelNotFound: the request names a model this engine does not serve (404).
	ErrModelNotFound = errors.New("model not found")
	// ErrOverloaded: the wait queue is full (503, retry later).
	ErrOverloaded = errors.New("engine overloaded: request queue is full")
	// ErrClosed: the engine is shutting down (503).
	ErrClosed = errors.New("engine is shutting down")
	// ErrNotFound: unknown route (404).
	ErrNotFound = errors.New("not found")
	// ErrMethod: wrong HTTP method for the route (405).
	ErrMethod = errors.New("method not allowed")
	// ErrTooLarge: the request body exceeds Config.MaxBodyBytes (413).
	ErrTooLarge = errors.New("request body too large")
)

// ContextLengthError reports a prompt (plus requested completion) that does
// not fit the context window.
type ContextLengthError struct {
	Limit     int    // context window in tokens
	Prompt    int    // prompt tokens
	MaxTokens int    // requested completion tokens (0 when the prompt alone is too long)
	Param     string // "prompt" or "messages"
}

func (e *ContextLengthError) Error() string {
	if e.MaxTokens == 0 {
		return fmt.Sprintf("This model's maximum context length is %d tokens. However, your prompt is %d tokens long, "+
			"which leaves no room for a completion. Please reduce the length of the prompt.", e.Limit, e.Prompt)
	}
	return fmt.Sprintf("This model's maximum context length is %d tokens. However, you requested %d tokens "+
		"(%d in the prompt, %d in the completion). Please reduce the length of the prompt or the completion.",
		e.Limit, e.Prompt+e.MaxTokens, e.Prompt, e.MaxTokens)
}

// badParam is a validation error that names the offending parameter
// (a *prompt.ParamError, as the request parser returns them).
func badParam(param, format string, args ...any) error {
	return prompt.BadParam(param, format, args...)
}

// apiError is the OpenAI error body: {"error": {"message", "type", "param", "code"}}.
type apiError struct {
	Message string  `json:"message"`
	Type    string  `json:"type"`
	Param   *string `json:"param"`
	Code    *string `json:"code"`
}

type errorBody struct {
	Error apiError `json:"error"`
}

func strp(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

// httpError maps err to its status and body.
func httpError(err error) (int, errorBody) {
	var (
		ce *ContextLengthError
		pe *prompt.ParamError
	)
	msg := err.Error()
	switch {
	case errors.As(err, &ce):
		return http.StatusBadRequest, errorBody{apiError{Message: msg, Type: "invalid_request_error",
			Param: strp(ce.Param), Code: strp("context_length_exceeded")}}
	case errors.As(err, &pe):
		return http.StatusBadRequest, errorBody{apiError{Message: pe.Msg, Type: "invalid_request_error", Param: strp(pe.Param)}}
	case errors.Is(err, ErrBadRequest):
		return http.StatusBadRequest, errorBody{apiError{Message: msg, Type: "invalid_request_error"}}
	case errors.Is(err, ErrModelNotFound):
		return http.StatusNotFound, errorBody{apiError{Message: msg, Type: "invalid_request_error",
			Param: strp("model"), Code: strp("model_not_found")}}
	case errors.Is(err, ErrNotFound):
		return http.StatusNotFound, errorBody{apiError{Message: msg, Type: "invalid_request_error"}}
	case errors.Is(err, ErrMethod):
		return http.StatusMethodNotAllowed, errorBody{apiError{Message: msg, Type: "invalid_request_error"}}
	case errors.Is(err, ErrTooLarge):
		return http.StatusRequestEntityTooLarge, errorBody{apiError{Message: msg, Type: "invalid_request_error"}}
	case errors.Is(err, ErrOverloaded), errors.Is(err, ErrClosed):
		return http.StatusServiceUnavailable, errorBody{apiError{Message: msg, Type: "server_error"}}
	case errors.Is(err, context.DeadlineExceeded):
		return http.StatusGatewayTimeout, errorBody{apiError{Message: "request timed out: " + msg, Type: "server_error", Code: strp("timeout")}}
	default:
		return http.StatusInternalServerError, errorBody{apiError{Message: msg, Type: "server_error"}}
	}
}

// writeError writes err as an OpenAI error response.
func writeError(w http.ResponseWriter, err error) {
	status, body := httpError(err)
	b, _ := json.Marshal(body)
	w.Header().Set("Content-Type", "application/json")
	if status == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", "1")
	}
	w.WriteHeader(status)
	w.Write(append(b, '\n'))
}
