package bench

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

func TestReadStream(t *testing.T) {
	tests := []struct {
		name   string
		stream string
		want   StreamResult
		err    error // errors.Is target; nil for success
		msg    string
	}{
		{name: "completion with usage",
			stream: "data: {\"choices\":[{\"text\":\"Hel\"}]}\n\ndata: {\"choices\":[{\"text\":\"lo\"}]}\n\n" +
				"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"prompt_tokens_details\":{\"cached_tokens\":11}}}\n\ndata: [DONE]\n\n",
			want: StreamResult{Text: "Hello", Tokens: 2, Choices: 2, PromptTokens: 12, CachedTokens: 11}},
		{name: "CRLF, comments, other fields",
			stream: ": keep-alive\r\nevent: message\r\nid: 1\r\ndata:{\"choices\":[{\"text\":\"x\"}]}\r\n\r\ndata: [DONE]\r\n",
			want:   StreamResult{Text: "x", Tokens: 1, Choices: 1}},
		{name: "usage without details", stream: "data: {\"choices\":[{\"text\":\"a\"}],\"usage\":{\"prompt_tokens\":3}}\ndata: [DONE]",
			want: StreamResult{Text: "a", Tokens: 1, Choices: 1, PromptTokens: 3}},
		// The engine's last choice event carries finish_reason and no text.
		{name: "finish event", stream: "data: {\"choices\":[{\"text\":\"a\"}]}\n\ndata: {\"choices\":[{\"text\":\"\",\"finish_reason\":\"length\"}]}\n\ndata: [DONE]\n\n",
			want: StreamResult{Text: "a", Tokens: 1, Choices: 2}},
		{name: "no [DONE]", stream: "data: {\"choices\":[{\"text\":\"a\"}]}\n\n", err: ErrStream, msg: "stream ended without [DONE]"},
		{name: "empty", stream: "", err: ErrStream, msg: "stream ended without [DONE]"},
		{name: "bad JSON", stream: "data: {\"choices\":[{\"text\":\n\n", err: ErrStream, msg: `bad SSE event "{\"choices\":[{\"text\":": unexpected end of JSON input`},
		{name: "error event", stream: "data: {\"error\":{\"message\":\"engine is shutting down\"}}\n\n", err: ErrStream, msg: "stream error: engine is shutting down"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			firsts, texts := 0, 0
			got, err := ReadStream(strings.NewReader(tt.stream), func() { firsts++ }, func() { texts++ })
			if tt.err != nil {
				if !errors.Is(err, tt.err) {
					t.Fatalf("err %v, want %v", err, tt.err)
				}
				if err.Error() != tt.msg {
					t.Errorf("message %q, want %q", err, tt.msg)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if firsts != 1 {
				t.Errorf("first called %d times, want once", firsts)
			}
			if texts != 1 {
				t.Errorf("firstText called %d times, want once", texts)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("result (-want +got):\n%s", diff)
			}
		})
	}
}

// TestReadStreamNoChoice: a stream without a choice is a result without
// tokens (callers that need a token check Choices), with no callback run.
func TestReadStreamNoChoice(t *testing.T) {
	called := 0
	got, err := ReadStream(strings.NewReader("data: {\"choices\":[]}\n\ndata: [DONE]\n\n"), func() { called++ }, func() { called++ })
	if err != nil || called != 0 {
		t.Fatalf("err %v, %d callbacks", err, called)
	}
	if diff := cmp.Diff(StreamResult{}, got); diff != "" {
		t.Errorf("result (-want +got):\n%s", diff)
	}
}

// FuzzReadStream: any byte stream gives a result or an error, never a
// panic, and each callback runs at most once, exactly when the counts say.
func FuzzReadStream(f *testing.F) {
	f.Add([]byte("data: {\"choices\":[{\"text\":\"Hi\"}]}\n\ndata: [DONE]\n\n"))
	f.Add([]byte("data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"prompt_tokens_details\":{\"cached_tokens\":0}}}\ndata: [DONE]"))
	f.Add([]byte("data: {\"error\":{\"message\":\"x\"}}\n"))
	f.Add([]byte(": comment\r\n\r\ndata:[DONE]"))
	f.Add([]byte("data: {\"choices\":null}\ndata: [DONE]\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		firsts, texts := 0, 0
		c, err := ReadStream(strings.NewReader(string(b)), func() { firsts++ }, func() { texts++ })
		if firsts > 1 || texts > 1 {
			t.Fatalf("first called %d times, firstText %d times", firsts, texts)
		}
		if (firsts == 1) != (c.Choices > 0) || (texts == 1) != (c.Tokens > 0) || c.Tokens > c.Choices {
			t.Fatalf("callbacks (%d, %d) disagree with the result %+v", firsts, texts, c)
		}
		if err != nil && !errors.Is(err, ErrStream) {
			t.Fatalf("error %v does not match ErrStream", err)
		}
	})
}

// TestStreamCompletion serves canned streams over real HTTP: the request
// carries the headers, the times are ordered, a non-200 is a *StatusError.
func TestStreamCompletion(t *testing.T) {
	long := strings.Repeat("x", 1000)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/completions" || r.Method != http.MethodPost || r.Header.Get("Content-Type") != "application/json" {
			http.Error(w, "bad request line "+r.Method+" "+r.URL.Path, http.StatusBadRequest)
			return
		}
		if b, _ := io.ReadAll(r.Body); string(b) != `{"prompt":"p"}` {
			http.Error(w, "bad body "+string(b), http.StatusBadRequest)
			return
		}
		switch r.Header.Get("X-Case") {
		case "long error":
			http.Error(w, long, http.StatusServiceUnavailable)
			return
		case "empty":
			io.WriteString(w, "data: {\"choices\":[{\"text\":\"\",\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n")
			return
		}
		io.WriteString(w, "data: {\"choices\":[{\"text\":\"a\"}]}\n\n")
		w.(http.Flusher).Flush()
		time.Sleep(2 * time.Millisecond)
		io.WriteString(w, "data: {\"choices\":[{\"text\":\"b\"}]}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"prompt_tokens_details\":{\"cached_tokens\":4}}}\n\ndata: [DONE]\n\n")
	}))
	defer srv.Close()
	ctx := context.Background()
	body := []byte(`{"prompt":"p"}`)

	got, err := StreamCompletion(ctx, srv.Client(), srv.URL+"/", nil, body)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(StreamResult{Text: "ab", Tokens: 2, Choices: 2, PromptTokens: 5, CachedTokens: 4}, got,
		cmpopts.IgnoreFields(StreamResult{}, "TTFT", "FirstChoice", "Total")); diff != "" {
		t.Errorf("result (-want +got):\n%s", diff)
	}
	// The server pauses after the first event, so the first token comes
	// strictly before the end; the first choice is the first text event.
	if got.FirstChoice <= 0 || got.TTFT < got.FirstChoice || got.Total <= got.TTFT {
		t.Errorf("times: TTFT %v, first choice %v, total %v", got.TTFT, got.FirstChoice, got.Total)
	}

	// A completion without text: TTFT is the whole stream, FirstChoice its
	// finish event.
	got, err = StreamCompletion(ctx, srv.Client(), srv.URL, map[string]string{"X-Case": "empty"}, body)
	if err != nil || got.Tokens != 0 || got.Choices != 1 || got.TTFT != got.Total || got.FirstChoice <= 0 || got.FirstChoice > got.Total {
		t.Errorf("empty completion: %v %+v", err, got)
	}

	_, err = StreamCompletion(ctx, srv.Client(), srv.URL, map[string]string{"X-Case": "long error"}, body)
	var se *StatusError
	if !errors.As(err, &se) || se.Code != http.StatusServiceUnavailable || string(se.Body) != long {
		t.Fatalf("long error: %v", err)
	}
	if want := "503 Service Unavailable: " + long[:512]; err.Error() != want {
		t.Errorf("message %q, want %q", err, want)
	}
}

// TestVsFirst: ratios to the first row's p50, none when it is 0.
func TestVsFirst(t *testing.T) {
	rows := []LoadRow{{TTFTP50Ms: 4}, {TTFTP50Ms: 2}, {TTFTP50Ms: 0}}
	vsFirst(rows, func(r *LoadRow) (float64, *float64) { return r.TTFTP50Ms, &r.VsFirst })
	if got := []float64{rows[0].VsFirst, rows[1].VsFirst, rows[2].VsFirst}; !cmp.Equal(got, []float64{1, 0.5, 0}) {
		t.Errorf("ratios %v, want [1 0.5 0]", got)
	}
	rows = []LoadRow{{TTFTP50Ms: 0}, {TTFTP50Ms: 2}}
	vsFirst(rows, func(r *LoadRow) (float64, *float64) { return r.TTFTP50Ms, &r.VsFirst })
	if rows[1].VsFirst != 0 {
		t.Errorf("no baseline: ratio %v, want 0", rows[1].VsFirst)
	}
	vsFirst([]E2ERow(nil), func(r *E2ERow) (float64, *float64) { return r.TTFTP50Ms, &r.VsFirst })
}
