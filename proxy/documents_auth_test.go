package proxy

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestDocumentsRouteGuarded (issue 18 finding 3): POST /v1/fusion/documents
// is closed by default (an anonymous client could fill the stores and the
// known-chunk index), opened by documents.admin_key or a trusted tenant
// header; it takes JSON or JSONL only (no cross-site text/plain post), and
// a tenant's submissions are bounded in documents, bytes and rate. Before,
// every row here answered 202.
func TestDocumentsRouteGuarded(t *testing.T) {
	docs := func(n int) string {
		var b strings.Builder
		b.WriteString("[")
		for i := range n {
			if i > 0 {
				b.WriteString(",")
			}
			b.WriteString(`{"id":"d","text":"x"}`)
		}
		return b.String() + "]"
	}
	const key = "s3cret-admin"
	json := []string{"Content-Type", "application/json"}
	with := func(h ...string) []string { return append(append([]string{}, json...), h...) }
	tests := []struct {
		name   string
		mod    func(*Config)
		body   string
		hdr    []string
		status int
		has    string // in the answer
	}{
		{"default: closed", nil, docs(1), json, 403, "documents.admin_key"},
		{"default: closed to a key-looking header", nil, docs(1), with(HeaderAdminKey, "guess"), 403, "closed"},
		{"default: tenant header not trusted", nil, docs(1), with(HeaderTenant, "acme"), 403, "closed"},
		{"admin key", adminKey(key), docs(1), with(HeaderAdminKey, key), 202, ""},
		{"wrong admin key", adminKey(key), docs(1), with(HeaderAdminKey, key+"x"), 403, "wrong"},
		{"no admin key", adminKey(key), docs(1), json, 401, HeaderAdminKey},
		{"trusted tenant header", func(c *Config) { c.Tenant.Header = HeaderTenant }, docs(1), with(HeaderTenant, "acme"), 202, ""},
		{"trusted header configured, absent", func(c *Config) { c.Tenant.Header = HeaderTenant }, docs(1), json, 401, ""},
		{"jsonl", adminKey(key), `{"id":"a","text":"x"}` + "\n", []string{"Content-Type", "application/jsonl", HeaderAdminKey, key}, 202, ""},
		{"json with charset", adminKey(key), docs(1), []string{"Content-Type", "application/json; charset=utf-8", HeaderAdminKey, key}, 202, ""},
		{"text/plain (cross-site)", adminKey(key), docs(1), []string{"Content-Type", "text/plain", HeaderAdminKey, key}, 415, "application/json"},
		{"form", adminKey(key), docs(1), []string{"Content-Type", "application/x-www-form-urlencoded", HeaderAdminKey, key}, 415, ""},
		{"too many documents", func(c *Config) { adminKey(key)(c); c.Documents.MaxDocuments = 3 }, docs(4), with(HeaderAdminKey, key), 413, "max_documents"},
		{"as many as allowed", func(c *Config) { adminKey(key)(c); c.Documents.MaxDocuments = 3 }, docs(3), with(HeaderAdminKey, key), 202, ""},
		{"too many bytes", func(c *Config) { adminKey(key)(c); c.Documents.MaxBytes = 100 }, docs(10), with(HeaderAdminKey, key), 413, "max_bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr := &tenantRecorder{}
			up := httptest.NewServer(tr)
			defer up.Close()
			cfg := upstreamConfig(up.URL)
			if tt.mod != nil {
				tt.mod(&cfg)
			}
			_, base := startProxy(t, cfg, WithDocuments(tr))
			code, body := postRaw(t, base+DocumentsPath, tt.body, tt.hdr...)
			if code != tt.status || !strings.Contains(body, tt.has) {
				t.Errorf("got %d %s, want %d with %q", code, body, tt.status, tt.has)
			}
			tr.mu.Lock()
			n := len(tr.docs)
			tr.mu.Unlock()
			if want := map[bool]int{true: 1, false: 0}[tt.status == 202]; n != want {
				t.Errorf("%d submissions reached the queue, want %d", n, want)
			}
		})
	}
}

// TestDocumentsTenantRate: one tenant over documents.tenant_bytes_per_minute
// gets 429 with Retry-After; another tenant is not held back by it.
func TestDocumentsTenantRate(t *testing.T) {
	tr := &tenantRecorder{}
	up := httptest.NewServer(tr)
	defer up.Close()
	cfg := upstreamConfig(up.URL)
	cfg.Tenant.Header = HeaderTenant
	cfg.Documents.MaxBytes = 1000
	cfg.Documents.TenantBytesPerMinute = 1000 // bucket of 1000 bytes, refilled at ~17 B/s
	_, base := startProxy(t, cfg, WithDocuments(tr))
	body := `[{"id":"d","text":"` + strings.Repeat("x", 400) + `"}]`
	for i, want := range []int{202, 202, 429} {
		req, _ := http.NewRequest("POST", base+DocumentsPath, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set(HeaderTenant, "greedy")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Fatalf("submission %d: %d, want %d", i, resp.StatusCode, want)
		}
		if want == 429 && resp.Header.Get("Retry-After") == "" {
			t.Error("429 without Retry-After")
		}
	}
	if code, b := postRaw(t, base+DocumentsPath, body, "Content-Type", "application/json", HeaderTenant, "other"); code != 202 {
		t.Errorf("another tenant: %d %s, want 202", code, b)
	}
}

func adminKey(k string) func(*Config) { return func(c *Config) { c.Documents.AdminKey = k } }

// postRaw posts body with exactly the headers given (no default
// Content-Type).
func postRaw(t *testing.T, url, body string, hdr ...string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest("POST", url, strings.NewReader(body))
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b strings.Builder
	buf := make([]byte, 4096)
	for {
		n, err := resp.Body.Read(buf)
		b.Write(buf[:n])
		if err != nil {
			break
		}
	}
	return resp.StatusCode, b.String()
}
