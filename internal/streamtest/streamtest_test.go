package streamtest

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// TestReadUntil: the request arrives as sent (method, path, body), the
// reading stops at the wanted line, and closing the returned connection
// ends Counter's stream.
func TestReadUntil(t *testing.T) {
	type seen struct{ method, path, ctype, body string }
	got := make(chan seen, 1)
	var gone chan struct{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		got <- seen{r.Method, r.URL.Path, r.Header.Get("Content-Type"), string(b)}
		r.Body = io.NopCloser(strings.NewReader(""))
		Counter(5*time.Millisecond, gone).ServeHTTP(w, r)
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
