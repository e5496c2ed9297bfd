package engine

import (
	"bufio"
	"io"
	"net/http/httptest"
	"strings"
	"testing"
)

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// sseReader yields the data payloads of a server-sent event stream.
type sseReader struct{ sc *bufio.Scanner }

func newSSEReader(r io.Reader) *sseReader {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	return &sseReader{sc: sc}
}

func (s *sseReader) next() (string, bool) {
	for s.sc.Scan() {
		if data, ok := strings.CutPrefix(s.sc.Text(), "data: "); ok {
			return data, true
		}
	}
	return "", false
}

// serve runs e on a loopback httptest server until the test ends and
// returns its URL. At cleanup the engine closes first (it fails what still
// runs, so the server's connections end), then the server.
func serve(tb testing.TB, e *Engine) string {
	srv := httptest.NewServer(e.Handler())
	tb.Cleanup(func() {
		e.Close()
		srv.Close()
	})
	return srv.URL
}
