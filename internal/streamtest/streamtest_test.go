package streamtest

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

// TestReadUntil: the request arrives as sent (method, path, body), the
// reading stops at the wanted line, and closing the returned connection
// cancels the handler's request.
func TestReadUntil(t *testing.T) {
	gone := make(chan struct{})
	type seen struct{ method, path, ctype, body string }
	got := make(chan seen, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		got <- seen{r.Method, r.URL.Path, r.Header.Get("Content-Type"), string(b)}
		w.Header().Set("Content-Type", "text/event-stream")
		for i := 0; ; i++ {
			fmt.Fprintf(w, "data: %d\n\n", i)
			w.(http.Flusher).Flush()
			select {
			case <-r.Context().Done():
				close(gone)
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	}))
	defer srv.Close()
	for _, tc := range []struct {
		req  Request
		want seen
	}{
		{Request{"POST", "/v1/completions", `{"stream":true}`}, seen{"POST", "/v1/completions", "application/json", `{"stream":true}`}},
		{Request{Method: "GET", Path: "/stream"}, seen{"GET", "/stream", "", ""}},
	} {
		gone = make(chan struct{})
		conn := ReadUntil(t, srv.URL, tc.req, "data: 3")
		if s := <-got; s != tc.want {
			t.Errorf("server saw %+v, want %+v", s, tc.want)
		}
		conn.Close()
		select {
		case <-gone:
		case <-time.After(5 * time.Second):
			t.Fatalf("%s: handler not canceled after the hang-up", tc.req.Path)
		}
	}
}
