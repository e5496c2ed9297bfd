package demo

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/fusionrag/fusionrag/proxy"
)

// completion is what one streamed request through the sidecar gave.
type completion struct {
	// TTFT is the time from sending the request to the first streamed
	// token; Total to the end of the stream.
	TTFT, Total time.Duration
	// Text is the completion; Tokens the number of streamed text events.
	Text   string
	Tokens int
	// PromptTokens and CachedTokens come from the final usage event: the
	// prompt length the engine saw and how many of its tokens it loaded from
	// published KV instead of prefilling.
	PromptTokens, CachedTokens int
}

// streamEvent is the part of an OpenAI completions stream event the demo
// reads.
type streamEvent struct {
	Choices []struct {
		Text string `json:"text"`
	} `json:"choices"`
	Usage *struct {
		PromptTokens        int `json:"prompt_tokens"`
		PromptTokensDetails *struct {
			CachedTokens int `json:"cached_tokens"`
		} `json:"prompt_tokens_details"`
	} `json:"usage"`
	Error *struct {
		Message string `json:"message"`
	} `json:"error"`
}

// ErrStream is returned for a response that is not a well-formed
// completions event stream.
var ErrStream = errors.New("demo: bad event stream")

// readStream reads an OpenAI server-sent event stream ("data: {json}"
// events, "data: [DONE]" at the end) from r, calling first once at the first
// event that carries a choice. Other SSE fields (event:, id:, comments) are
// skipped.
func readStream(r io.Reader, first func()) (completion, error) {
	var c completion
	br := bufio.NewReaderSize(r, 64<<10)
	seenFirst := false
	for {
		line, readErr := br.ReadString('\n')
		if data, ok := strings.CutPrefix(strings.TrimRight(line, "\r\n"), "data:"); ok {
			data = strings.TrimSpace(data)
			if data == "[DONE]" {
				if !seenFirst {
					return c, fmt.Errorf("%w: no token in the stream", ErrStream)
				}
				return c, nil
			}
			var ev streamEvent
			if err := json.Unmarshal([]byte(data), &ev); err != nil {
				return c, fmt.Errorf("%w: %v in %.80q", ErrStream, err, data)
			}
			if ev.Error != nil {
				return c, fmt.Errorf("%w: engine error: %s", ErrStream, ev.Error.Message)
			}
			if len(ev.Choices) > 0 {
				if !seenFirst {
					seenFirst = true
					if first != nil {
						first()
					}
				}
				c.Text += ev.Choices[0].Text
				c.Tokens++
			}
			if ev.Usage != nil {
				c.PromptTokens = ev.Usage.PromptTokens
				if ev.Usage.PromptTokensDetails != nil {
					c.CachedTokens = ev.Usage.PromptTokensDetails.CachedTokens
				}
			}
		}
		if readErr != nil {
			if errors.Is(readErr, io.EOF) {
				return c, fmt.Errorf("%w: stream ended without [DONE]", ErrStream)
			}
			return c, readErr
		}
	}
}

// requestBody is the completions request of a prompt (its token ids, or
// its text), greedy, streamed with usage.
func requestBody(modelName, user string, prompt any, maxTokens int) ([]byte, error) {
	return json.Marshal(map[string]any{
		"model":          modelName,
		"prompt":         prompt,
		"max_tokens":     maxTokens,
		"temperature":    0,
		"stream":         true,
		"stream_options": map[string]any{"include_usage": true},
		"user":           user,
	})
}

// complete sends one streamed completions request to base (the sidecar,
// with the strategy and ratio headers, or the engine) and times it.
func complete(ctx context.Context, client *http.Client, base string, body []byte, strategy string, ratio float64) (completion, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/v1/completions", bytes.NewReader(body))
	if err != nil {
		return completion{}, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "text/event-stream")
	if strategy != "" { // "": straight to the engine, no override
		req.Header.Set(proxy.HeaderStrategy, strategy)
		req.Header.Set(proxy.HeaderRatio, strconv.FormatFloat(ratio, 'g', -1, 64))
	}
	start := time.Now()
	resp, err := client.Do(req)
	if err != nil {
		return completion{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
		return completion{}, fmt.Errorf("demo: sidecar answered %s: %s", resp.Status, bytes.TrimSpace(b))
	}
	var ttft time.Duration
	c, err := readStream(resp.Body, func() { ttft = time.Since(start) })
	c.TTFT, c.Total = ttft, time.Since(start)
	return c, err
}
