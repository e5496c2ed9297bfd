package llamacpp

import (
	"errors"
	"fmt"
	"testing"

	"github.com/fusionrag/fusionrag/adapters"
)

// TestRequestCausedErrors: the failures a request causes match
// adapters.ErrRequest (a skip for the proxy); the engine's and the
// adapter's do not (they count against the breaker).
func TestRequestCausedErrors(t *testing.T) {
	for _, tc := range []struct {
		why  string
		want bool
	}{
		{ReasonTokenMismatch, true}, {ReasonTooLong, true}, {ReasonUnsupported, true},
		{ReasonBusy, false}, {ReasonRestoreRefused, false}, {ReasonMismatch, false}, {ReasonWriteError, false},
		{ReasonEngineRestarted, false}, {ReasonEngineError, false}, {ReasonBadPublication, false}, {ReasonCanceled, false},
	} {
		err := fmt.Errorf("publish: %w", fail(tc.why, errors.New("x")))
		if got := errors.Is(err, adapters.ErrRequest); got != tc.want {
			t.Errorf("%s: errors.Is(err, adapters.ErrRequest) = %v, want %v", tc.why, got, tc.want)
		}
		if got := adapters.ReasonOf(err); got != tc.why {
			t.Errorf("%s: ReasonOf = %q", tc.why, got)
		}
	}
}
