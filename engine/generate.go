package engine

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/fusionrag/fusionrag/prompt"
)

// handleGenerate serves /v1/completions (chat=false) and
// /v1/chat/completions (chat=true), streaming or not.
func (e *Engine) handleGenerate(w http.ResponseWriter, r *http.Request, chat bool) {
	body, err := readBody(r, e.cfg.MaxBodyBytes)
	if err != nil {
		writeError(w, err)
		return
	}
	req, err := prompt.ParseRequest(body, chat)
	if err != nil {
		writeError(w, err)
		return
	}
	if req.Model != "" && req.Model != e.cfg.ModelName {
		writeError(w, fmt.Errorf("%w: The model `%s` does not exist (this engine serves `%s`).", ErrModelNotFound, req.Model, e.cfg.ModelName))
		return
	}
	ids, err := prompt.Tokens(e.tok, e.chat, req.Prompt)
	if err != nil {
		writeError(w, err)
		return
	}
	vocab := e.lm.VocabSize()
	for i, id := range ids {
		if id < 0 || int(id) >= vocab {
			writeError(w, badParam("prompt", "token id %d at index %d is outside the vocabulary [0, %d)", id, i, vocab))
			return
		}
	}
	maxTokens := req.Sampling.MaxTokens
	param := "prompt"
	if chat {
		param = "messages"
	}
	switch {
	case len(ids) >= e.limit:
		writeError(w, &ContextLengthError{Limit: e.limit, Prompt: len(ids), Param: param})
		return
	case maxTokens > 0 && len(ids)+maxTokens > e.limit:
		writeError(w, &ContextLengthError{Limit: e.limit, Prompt: len(ids), MaxTokens: maxTokens, Param: param})
		return
	case maxTokens == 0:
		maxTokens = e.limit - len(ids)
	}
	ctx, cancel := context.WithTimeout(r.Context(), e.cfg.RequestTimeout)
	defer cancel()
	q := &seq{ctx: ctx, req: req, prompt: ids, limit: e.limit, maxTokens: maxTokens, stopIDs: e.stopIDs}
	if req.KVNamespace != "" && e.kv != nil {
		// Look up and load published KV here, on the request's goroutine,
		// so a slow store never stalls the batch's decode steps.
		q.s = e.lm.NewSequence()
		q.cached = e.kv.Load(ctx, req.KVNamespace, ids, q.s)
	}
	if err := e.sched.submit(q); err != nil {
		writeError(w, err)
		return
	}
	e.met.promptTokens.Add(int64(len(ids)))
	prefix := "cmpl-"
	if chat {
		prefix = "chatcmpl-"
	}
	rs := &responder{e: e, req: req, q: q, id: newID(prefix), created: time.Now().Unix()}
	if req.Stream {
		rs.stream(ctx, w)
	} else {
		rs.whole(ctx, w)
	}
	e.met.cachedTokens.Add(int64(q.usage().PromptTokensDetails.CachedTokens))
}

// responder writes one request's response.
type responder struct {
	e       *Engine
	req     *Request
	q       *seq
	id      string
	created int64
}

// whole waits for the completion and writes it as one JSON response.
func (rs *responder) whole(ctx context.Context, w http.ResponseWriter) {
	var text strings.Builder
	for {
		o, err := rs.q.next(ctx)
		if err != nil {
			writeError(w, err)
			return
		}
		for _, d := range o.deltas {
			text.WriteString(d)
		}
		if o.done {
			if o.err != nil {
				writeError(w, o.err)
				return
			}
			rs.writeWhole(w, text.String(), o.finish)
			return
		}
	}
}

func (rs *responder) writeWhole(w http.ResponseWriter, text, finish string) {
	u := rs.q.usage()
	if rs.req.Chat {
		writeJSON(w, http.StatusOK, chatResponse{
			ID: rs.id, Object: "chat.completion", Created: rs.created, Model: rs.e.cfg.ModelName,
			Choices: []chatChoice{{Message: chatMessage{Role: "assistant", Content: text}, FinishReason: finish}},
			Usage:   u,
		})
		return
	}
	writeJSON(w, http.StatusOK, completionResponse{
		ID: rs.id, Object: "text_completion", Created: rs.created, Model: rs.e.cfg.ModelName,
		Choices: []completionChoice{{Text: text, FinishReason: &finish}},
		Usage:   u,
	})
}

// stream writes the completion as OpenAI server-sent events: one chunk per
// text delta, a final chunk carrying finish_reason, a usage chunk with no
// choices when stream_options.include_usage is set, then "data: [DONE]".
// The status line is sent with the first output, so an error before any
// token (timeout, shutdown) still gets its proper status and error body.
func (rs *responder) stream(ctx context.Context, w http.ResponseWriter) {
	flusher, _ := w.(http.Flusher)
	started := false
	start := func() {
		if started {
			return
		}
		started = true
		h := w.Header()
		h.Set("Content-Type", "text/event-stream")
		h.Set("Cache-Control", "no-cache")
		h.Set("Connection", "keep-alive")
		h.Set("X-Accel-Buffering", "no")
		w.WriteHeader(http.StatusOK)
		if rs.req.Chat {
			empty := ""
			rs.event(w, rs.chatChunk(chatDelta{Role: "assistant", Content: &empty}, nil))
		}
	}
	for {
		o, err := rs.q.next(ctx)
		if err != nil {
			if !started {
				writeError(w, err)
				return
			}
			// The client went away or the deadline passed mid-stream: an
			// error event if anyone is still listening, then stop.
			rs.errorEvent(w, err)
			return
		}
		if o.done && o.err != nil && !started && len(o.deltas) == 0 {
			writeError(w, o.err)
			return
		}
		start()
		for _, d := range o.deltas {
			if rs.req.Chat {
				rs.event(w, rs.chatChunk(chatDelta{Content: &d}, nil))
			} else {
				rs.event(w, rs.textChunk(d, nil))
			}
		}
		if o.done {
			if o.err != nil {
				rs.errorEvent(w, o.err)
				return
			}
			finish := o.finish
			if rs.req.Chat {
				rs.event(w, rs.chatChunk(chatDelta{}, &finish))
			} else {
				rs.event(w, rs.textChunk("", &finish))
			}
			if rs.req.IncludeUsage {
				u := rs.q.usage()
				if rs.req.Chat {
					rs.event(w, chatChunk{ID: rs.id, Object: "chat.completion.chunk", Created: rs.created,
						Model: rs.e.cfg.ModelName, Choices: []chatChunkChoice{}, Usage: u})
				} else {
					rs.event(w, completionChunk{ID: rs.id, Object: "text_completion", Created: rs.created,
						Model: rs.e.cfg.ModelName, Choices: []completionChoice{}, Usage: u})
				}
			}
			io.WriteString(w, "data: [DONE]\n\n")
			if flusher != nil {
				flusher.Flush()
			}
			return
		}
		if flusher != nil {
			flusher.Flush()
		}
	}
}

func (rs *responder) chatChunk(d chatDelta, finish *string) chatChunk {
	return chatChunk{ID: rs.id, Object: "chat.completion.chunk", Created: rs.created, Model: rs.e.cfg.ModelName,
		Choices: []chatChunkChoice{{Delta: d, FinishReason: finish}}, Usage: rs.nullUsage()}
}

func (rs *responder) textChunk(text string, finish *string) completionChunk {
	return completionChunk{ID: rs.id, Object: "text_completion", Created: rs.created, Model: rs.e.cfg.ModelName,
		Choices: []completionChoice{{Text: text, FinishReason: finish}}, Usage: rs.nullUsage()}
}

// nullUsage is the usage field of a chunk that is not the last: null when
// the client asked for usage, absent otherwise.
func (rs *responder) nullUsage() any {
	if rs.req.IncludeUsage {
		return json.RawMessage("null")
	}
	return nil
}

// event writes one "data: <json>" server-sent event.
func (rs *responder) event(w io.Writer, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("engine: marshal SSE chunk: %v", err)) // our own types: cannot fail
	}
	buf := make([]byte, 0, len(b)+8)
	buf = append(buf, "data: "...)
	buf = append(buf, b...)
	buf = append(buf, "\n\n"...)
	w.Write(buf)
}

func (rs *responder) errorEvent(w http.ResponseWriter, err error) {
	if errors.Is(err, context.Canceled) {
		return // the client is gone; nothing to tell
	}
	_, body := httpError(err)
	rs.event(w, body)
	io.WriteString(w, "data: [DONE]\n\n")
	if f, ok := w.(http.Flusher); ok {
		f.Flush()
	}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		writeError(w, fmt.Errorf("engine: encoding response: %w", err))
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	w.Write(append(b, '\n'))
}
