package demo

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"

	"github.com/fusionrag/fusionrag/bench"
	"github.com/fusionrag/fusionrag/proxy"
)

// ErrStream is returned for a response that is not a well-formed
// completions event stream, or one that carries no token.
var ErrStream = errors.New("demo: bad event stream")

// requestBody is the completions request of a prompt (its token ids, or
// its text), greedy, streamed with usage.
func requestBody(modelName, user string, prompt any, maxTokens int) ([]byte, error) {
	return bench.CompletionBody(modelName, user, prompt, maxTokens)
}

// complete sends one streamed completions request to base (the sidecar,
// with the strategy and ratio headers, or the engine) and times it. The
// demo's time to first token is the result's FirstChoice (the first event
// carrying a choice); a stream without one is an ErrStream.
func complete(ctx context.Context, client *http.Client, base string, body []byte, strategy string, ratio float64) (bench.StreamResult, error) {
	headers := map[string]string{"Accept": "text/event-stream"}
	if strategy != "" { // "": straight to the engine, no override
		headers[proxy.HeaderStrategy] = strategy
		headers[proxy.HeaderRatio] = strconv.FormatFloat(ratio, 'g', -1, 64)
	}
	c, err := bench.StreamCompletion(ctx, client, base, headers, body)
	var se *bench.StatusError
	switch {
	case errors.As(err, &se):
		return c, fmt.Errorf("demo: sidecar answered %s: %s", se.Status, se.Body)
	case errors.Is(err, bench.ErrStream):
		return c, fmt.Errorf("%w: %w", ErrStream, err)
	case err != nil:
		return c, err
	case c.Choices == 0:
		return c, fmt.Errorf("%w: no token in the stream", ErrStream)
	}
	return c, nil
}
