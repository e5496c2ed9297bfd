package bench

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"

	"github.com/fusionrag/fusionrag/proxy"
	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

// TestDemoComplete serves canned streams over real HTTP and checks what the
// demo makes of them: the stream's contents, errDemoStream for a bad stream or
// one without a token, the override headers, the status error.
func TestDemoComplete(t *testing.T) {
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
		// An empty completion (only the finish event) is a completion.
		{name: "finish event only", stream: "data: {\"choices\":[{\"text\":\"\",\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n",
			want: StreamResult{Choices: 1}},
		{name: "no [DONE]", stream: "data: {\"choices\":[{\"text\":\"a\"}]}\n\n", err: errDemoStream,
			msg: "demo: bad event stream: stream ended without [DONE]"},
		{name: "no token", stream: "data: {\"choices\":[]}\n\ndata: [DONE]\n\n", err: errDemoStream,
			msg: "demo: bad event stream: no token in the stream"},
		{name: "empty", stream: "", err: errDemoStream, msg: "demo: bad event stream: stream ended without [DONE]"},
		{name: "bad JSON", stream: "data: {\"choices\":[{\"text\":\n\n", err: errDemoStream,
			msg: `demo: bad event stream: bad SSE event "{\"choices\":[{\"text\":": unexpected end of JSON input`},
		{name: "error event", stream: "data: {\"error\":{\"message\":\"engine is shutting down\"}}\n\n", err: errDemoStream,
			msg: "demo: bad event stream: stream error: engine is shutting down"},
	}
	// The case's index is the first path segment of the base URL.
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		i, err := strconv.Atoi(strings.TrimSuffix(strings.TrimPrefix(r.URL.Path, "/"), "/v1/completions"))
		if err != nil || i < 0 || i >= len(tests) || r.Header.Get("Accept") != "text/event-stream" {
			http.Error(w, "bad request "+r.URL.Path, http.StatusBadRequest)
			return
		}
		// Straight to the engine: no override headers; through the
		// sidecar: both.
		s, ratio := r.Header.Get(proxy.HeaderStrategy), r.Header.Get(proxy.HeaderRatio)
		if (s == "") != (ratio == "") || s != "" && (s != "reuse" || ratio != "0.15") {
			http.Error(w, "strategy "+s+" ratio "+ratio, http.StatusTeapot)
			return
		}
		io.WriteString(w, tests[i].stream)
	}))
	defer srv.Close()
	for i, tt := range tests {
		for _, strategy := range []string{"", "reuse"} {
			t.Run(tt.name+"/"+strategy, func(t *testing.T) {
				got, err := demoComplete(context.Background(), srv.Client(), srv.URL+"/"+strconv.Itoa(i), []byte("{}"), strategy, 0.15)
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
				if got.FirstChoice <= 0 || got.FirstChoice > got.Total {
					t.Errorf("first choice at %v, total %v", got.FirstChoice, got.Total)
				}
				if diff := cmp.Diff(tt.want, got, cmpopts.IgnoreFields(StreamResult{}, "TTFT", "FirstChoice", "Total")); diff != "" {
					t.Errorf("completion (-want +got):\n%s", diff)
				}
			})
		}
	}

	t.Run("status", func(t *testing.T) {
		long := strings.Repeat("y", 1000)
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			http.Error(w, long, http.StatusBadGateway)
		}))
		defer srv.Close()
		_, err := demoComplete(context.Background(), srv.Client(), srv.URL, []byte("{}"), "reuse", 0.15)
		if want := "demo: sidecar answered 502 Bad Gateway: " + long; err == nil || err.Error() != want {
			t.Errorf("err %v, want %q", err, want)
		}
	})
}

// TestDemoRequestBody pins the request the demo sends.
func TestDemoRequestBody(t *testing.T) {
	b, err := CompletionBody("m", "q1/reuse", []int32{1, 2}, 8)
	if err != nil {
		t.Fatal(err)
	}
	const want = `{"max_tokens":8,"model":"m","prompt":[1,2],"stream":true,"stream_options":{"include_usage":true},"temperature":0,"user":"q1/reuse"}`
	if string(b) != want {
		t.Errorf("body %s, want %s", b, want)
	}
}
