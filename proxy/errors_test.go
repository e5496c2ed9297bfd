package proxy

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/fusionrag/fusionrag/internal/golden"
)

// okDocuments accepts every submission.
type okDocuments struct{}

func (okDocuments) HandleSubmit(string, []byte) (int, []byte) {
	return http.StatusAccepted, []byte(`{"id":"j1"}`)
}
func (okDocuments) HandleStatus(string) (int, []byte) { return http.StatusOK, []byte(`{}`) }

// TestErrorPages holds every answer the sidecar writes itself (not the
// engine's) byte for byte: status, headers and body of each error page, one
// request per way to get one. The golden file was written before the error
// mapping moved into errors.go (issue 17), so it proves the move kept the
// wire behaviour. Update with go test ./proxy -run TestErrorPages -update.
func TestErrorPages(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"ok":true}`)
	}))
	defer up.Close()
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadURL := "http://" + dead.Addr().String()
	dead.Close()

	limits := func(c *Config) {
		c.Limits.MaxRequestBody = 4000
		c.Limits.MaxFusionBody = 2000
		c.Limits.BufferBody = 100
		c.Documents.MaxBytes = 1000
		c.Documents.MaxDocuments = 2
		c.Documents.TenantBytesPerMinute = 60
	}
	skipAll := WithFuser(FuserFunc(func(context.Context, *Request) (*Plan, error) { return nil, Skip("no_chunks") }))
	start := func(upstream string, mod func(*Config), opts ...Option) string {
		c := upstreamConfig(upstream)
		limits(&c)
		if mod != nil {
			mod(&c)
		}
		_, base := startProxy(t, c, opts...)
		return strings.TrimPrefix(base, "http://")
	}
	fused := start(up.URL, nil, skipAll)
	off := start(up.URL, nil)
	down := start(deadURL, nil, skipAll)
	closedDocs := start(up.URL, nil, WithDocuments(okDocuments{}))
	docs := start(up.URL, adminKey("k"), WithDocuments(okDocuments{}))

	chat := "/v1/chat/completions"
	okChat := `{"model":"m","messages":[{"role":"user","content":"hi"}]}`
	big := func(n int) string { return `{"model":"m","prompt":"` + strings.Repeat("a", n) + `"}` }
	chunked := func(body string) string {
		var b strings.Builder
		for len(body) > 0 {
			n := min(len(body), 300)
			fmt.Fprintf(&b, "%x\r\n%s\r\n", n, body[:n])
			body = body[n:]
		}
		return b.String() + "0\r\n\r\n"
	}
	type req struct {
		name, addr, method, uri string
		hdr                     []string // "Name: value"
		body                    string   // sent as is after the headers
		noBody                  bool     // announce Content-Length cl, send only its first 200 bytes
		cl                      int      // Content-Length when noBody
	}
	tests := []req{
		{name: "kv route", addr: fused, method: "PUT", uri: "/v1/kv/abc", body: "x"},
		{name: "kv route raw", addr: fused, method: "GET", uri: "/v1/kv/%2e%2e/"},
		{name: "over max_request_body by content-length", addr: fused, method: "POST", uri: "/v1/models", noBody: true, cl: 5000},
		{name: "eligible over max_fusion_body by content-length", addr: fused, method: "POST", uri: chat, noBody: true, cl: 3000},
		{name: "eligible over max_fusion_body chunked", addr: fused, method: "POST", uri: "/v1/completions",
			hdr: []string{"Transfer-Encoding: chunked"}, body: chunked(big(2500))},
		{name: "other route over max_request_body chunked", addr: fused, method: "POST", uri: "/v1/other",
			hdr: []string{"Transfer-Encoding: chunked"}, body: chunked(big(4500))},
		{name: "invalid json naming kv_transfer_params", addr: fused, method: "POST", uri: chat, body: `{"kv_transfer_params": NaN}`},
		{name: "invalid json naming kv_transfer_params, fusion off", addr: off, method: "POST", uri: chat, body: `{"kv_transfer_params": NaN}`},
		{name: "bad body override", addr: fused, method: "POST", uri: chat, body: `{"messages":[{"role":"user","content":"q"}],"fusionrag":{"ratio":2}}`},
		{name: "bad body strategy", addr: fused, method: "POST", uri: chat, body: `{"messages":[{"role":"user","content":"q"}],"fusionrag":{"strategy":"x"}}`},
		{name: "bad header strategy", addr: fused, method: "POST", uri: chat, hdr: []string{"X-Fusionrag-Strategy: nope"}, body: okChat},
		{name: "bad header ratio", addr: fused, method: "POST", uri: chat, hdr: []string{"X-Fusionrag-Ratio: 1.5"}, body: okChat},
		{name: "null model", addr: fused, method: "POST", uri: chat, body: `{"model":null,"messages":[{"role":"user","content":"q"}]}`},
		{name: "null user content", addr: fused, method: "POST", uri: chat, body: `{"model":"m","messages":[{"role":"user","content":null}]}`},
		{name: "engine down, eligible", addr: down, method: "POST", uri: chat, body: okChat},
		{name: "engine down, other route", addr: down, method: "GET", uri: "/v1/models"},
		{name: "documents closed", addr: closedDocs, method: "POST", uri: DocumentsPath, hdr: []string{"Content-Type: application/json"}, body: `{}`},
		{name: "documents wrong key", addr: docs, method: "POST", uri: DocumentsPath, hdr: []string{"Content-Type: application/json", "X-Fusionrag-Admin-Key: no"}, body: `{}`},
		{name: "documents no key", addr: docs, method: "POST", uri: DocumentsPath, hdr: []string{"Content-Type: application/json"}, body: `{}`},
		{name: "documents media type", addr: docs, method: "POST", uri: DocumentsPath, hdr: []string{"Content-Type: text/plain", "X-Fusionrag-Admin-Key: k"}, body: `{}`},
		{name: "documents over max_bytes by content-length", addr: docs, method: "POST", uri: DocumentsPath, hdr: []string{"Content-Type: application/json", "X-Fusionrag-Admin-Key: k"}, noBody: true, cl: 1500},
		{name: "documents over max_bytes chunked", addr: docs, method: "POST", uri: DocumentsPath,
			hdr: []string{"Content-Type: application/json", "X-Fusionrag-Admin-Key: k", "Transfer-Encoding: chunked"}, body: chunked(strings.Repeat(" ", 1500))},
		{name: "documents too many", addr: docs, method: "POST", uri: DocumentsPath, hdr: []string{"Content-Type: application/json", "X-Fusionrag-Admin-Key: k", "Authorization: Bearer a"},
			body: `[{"text":"a"},{"text":"b"},{"text":"c"}]`},
		{name: "documents rate limited", addr: docs, method: "POST", uri: DocumentsPath, hdr: []string{"Content-Type: application/json", "X-Fusionrag-Admin-Key: k", "Authorization: Bearer b"},
			body: `[{"text":"` + strings.Repeat("a", 900) + `"}]`},
		{name: "documents rate limited again", addr: docs, method: "POST", uri: DocumentsPath, hdr: []string{"Content-Type: application/json", "X-Fusionrag-Admin-Key: k", "Authorization: Bearer b"},
			body: `[{"text":"` + strings.Repeat("a", 900) + `"}]`},
		{name: "documents unknown job", addr: docs, method: "GET", uri: DocumentsPath + "/nope"},
		{name: "malformed request line", addr: fused, method: "BAD REQUEST", uri: "/"},
	}
	// What varies between runs: the clock, the dead engine's port, the
	// seconds a token bucket asks to wait.
	normal := strings.NewReplacer(dead.Addr().String(), "127.0.0.1:DEAD")
	date := regexp.MustCompile(`(?m)^Date: .*$`)
	wait := regexp.MustCompile(`(Retry-After: |retry in )\d+`)
	var got strings.Builder
	for _, tt := range tests {
		page := roundTripRaw(t, tt.addr, tt.method, tt.uri, tt.hdr, tt.body, tt.noBody, tt.cl)
		page = wait.ReplaceAllString(date.ReplaceAllString(normal.Replace(page), "Date: DATE"), "${1}N")
		fmt.Fprintf(&got, "=== %s: %s %s\n%s\n", tt.name, tt.method, tt.uri, page)
	}
	golden.Text(t, filepath.Join("testdata", "error_pages.golden"), got.String(), *update, "error pages")
}

// roundTripRaw sends one request on a fresh connection and returns the
// response as status line, sorted headers and body.
func roundTripRaw(t *testing.T, addr, method, uri string, hdr []string, body string, noBody bool, cl int) string {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\nHost: sidecar\r\n", method, uri)
	chunked := false
	for _, h := range hdr {
		b.WriteString(h + "\r\n")
		chunked = chunked || strings.HasPrefix(h, "Transfer-Encoding")
	}
	switch {
	case noBody:
		fmt.Fprintf(&b, "Content-Length: %d\r\n\r\n%s", cl, strings.Repeat(" ", min(cl, 200)))
	case chunked:
		b.WriteString("\r\n" + body)
	default:
		fmt.Fprintf(&b, "Content-Length: %d\r\n\r\n%s", len(body), body)
	}
	go func() { _, _ = io.WriteString(c, b.String()) }()
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("%s %s: %v", method, uri, err)
	}
	defer resp.Body.Close()
	rb, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading the body: %v", method, uri, err)
	}
	var out strings.Builder
	fmt.Fprintf(&out, "%s close=%v\n", resp.Status, resp.Close)
	keys := make([]string, 0, len(resp.Header))
	for k := range resp.Header {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		fmt.Fprintf(&out, "%s: %s\n", k, strings.Join(resp.Header[k], ", "))
	}
	out.Write(rb)
	return out.String()
}

func (okDocuments) Count(b []byte) (int, error) { return countDocuments(b) }
