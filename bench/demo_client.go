package bench

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"

	"github.com/fusionrag/fusionrag/proxy"
)

// errDemoStream is returned for a response that is not a well-formed
// completions event stream, or one that carries no token.
var errDemoStream = errors.New("demo: bad event stream")

// demoComplete sends one streamed completions request to base (the sidecar,
// with the strategy and ratio headers, or the engine) and times it. The
// demo's time to first token is the result's FirstChoice (the first event
// carrying a choice); a stream without one is an errDemoStream.
func demoComplete(ctx context.Context, client *http.Client, base string, body []byte, strategy string, ratio float64) (StreamResult, error) {
	headers := map[string]string{"Accept": "text/event-stream"}
	if strategy != "" { // "": straight to the engine, no override
		headers[proxy.HeaderStrategy] = strategy
		headers[proxy.HeaderRatio] = strconv.FormatFloat(ratio, 'g', -1, 64)
	}
	c, err := StreamCompletion(ctx, client, base, headers, body)
	var se *StatusError
	switch {
	case errors.As(err, &se):
		return c, fmt.Errorf("demo: sidecar answered %s: %s", se.Status, se.Body)
	case errors.Is(err, ErrStream):
		return c, fmt.Errorf("%w: %w", errDemoStream, err)
	case err != nil:
		return c, err
	case c.Choices == 0:
		return c, fmt.Errorf("%w: no token in the stream", errDemoStream)
	}
	return c, nil
}
