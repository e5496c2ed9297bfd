package prompt

import (
	"errors"
	"fmt"
)

// ErrBadRequest is wrapped by every request validation error: the request
// is the client's mistake (HTTP 400 in the engine's one status mapping).
var ErrBadRequest = errors.New("invalid request")

// ParamError is a validation error that names the offending parameter, as
// OpenAI's error body does ("param"). It matches ErrBadRequest.
type ParamError struct {
	Param string // "prompt", "messages[2].role", "max_tokens", ...
	Msg   string // the message, as OpenAI-compatible servers word it
}

func (e *ParamError) Error() string { return e.Msg }

// Unwrap makes errors.Is(err, ErrBadRequest) true.
func (e *ParamError) Unwrap() error { return ErrBadRequest }

// BadParam returns a *ParamError for param with a formatted message.
func BadParam(param, format string, args ...any) error {
	return &ParamError{Param: param, Msg: fmt.Sprintf(format, args...)}
}
