package llamacpp

import (
	"errors"
	"fmt"

	"github.com/fusionrag/fusionrag/adapters"
)

// Fallback reasons: short stable labels for metrics and spans. Every
// Publish error carries one (Reason() string, found with errors.As); the
// proxy forwards the original request on any of them.
const (
	ReasonBusy            = "busy"             // every slot leased
	ReasonRestoreRefused  = "restore_refused"  // the server answered restore with an error
	ReasonMismatch        = "mismatch"         // the handshake found another model or an unsupported layout
	ReasonTokenMismatch   = "token_mismatch"   // the server tokenizes the body into other ids than the published prompt
	ReasonWriteError      = "write_error"      // the slot file could not be written into SlotDir
	ReasonEngineRestarted = "engine_restarted" // the server's /props changed: re-handshake failed or is under way
	ReasonEngineError     = "engine_error"     // a control call failed (connection, 5xx, bad answer)
	ReasonUnsupported     = "unsupported"      // a request shape the adapter cannot prove (several prompts, unknown path)
	ReasonTooLong         = "too_long"         // the prompt does not fit a slot's context
	ReasonBadPublication  = "bad_publication"  // the publication itself is invalid
	ReasonCanceled        = "canceled"         // the request's context ended during publish (not an engine failure)
)

// Sentinel errors.
var (
	// ErrTokenMismatch: the server would run other token ids than the
	// published prompt.
	ErrTokenMismatch = errors.New("llamacpp: the server tokenizes the request differently from the published prompt")
	// ErrUnsupported: a request, cache type or model the adapter cannot
	// handle exactly.
	ErrUnsupported = errors.New("llamacpp: unsupported")

	errMismatch = adapters.ErrMismatch
	// errProbeTaken: the handshake's probe slot was taken by another
	// request before it was saved (not a mismatch: the probe is re-run).
	errProbeTaken = errors.New("llamacpp: the probe slot was taken by another request before its save")
	errShape      = fmt.Errorf("%w: KV shape", adapters.ErrMismatch)
)

// Error is a Publish failure with its fallback reason.
type Error struct {
	Why string // one of the Reason constants
	Err error
}

func (e *Error) Error() string  { return "llamacpp: " + e.Why + ": " + e.Err.Error() }
func (e *Error) Unwrap() error  { return e.Err }
func (e *Error) Reason() string { return e.Why }

// Is makes the request-caused failures (the server would tokenize this body
// differently, it does not fit a slot, its shape cannot be proved) match
// adapters.ErrRequest: the proxy forwards them as skips, not as failures of
// the fusion path that count against its breaker.
func (e *Error) Is(target error) bool {
	if target != adapters.ErrRequest {
		return false
	}
	switch e.Why {
	case ReasonTokenMismatch, ReasonTooLong, ReasonUnsupported:
		return true
	}
	return false
}

func fail(why string, err error) error {
	var r interface{ Reason() string }
	if errors.As(err, &r) && r.Reason() == why {
		return err
	}
	return &Error{Why: why, Err: err}
}
