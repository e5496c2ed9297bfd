package proxy

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/fusionrag/fusionrag/fusion"
)

// busyDocuments answers every submission like a fusion.Queue whose tenant
// is at documents.max_jobs_per_tenant.
type busyDocuments struct{}

func (busyDocuments) HandleSubmit(string, []byte) (int, []byte) {
	return http.StatusTooManyRequests, []byte(`{"error":"fusion: too many ingest jobs of this tenant queued or running: 4 of at most 4","retry_after":7}`)
}
func (busyDocuments) HandleStatus(string) (int, []byte) { return http.StatusNotFound, []byte(`{}`) }

// TestDocumentsJobsQuotaRetryAfter: the queue's 429 (a tenant's jobs quota,
// or the queue full) reaches the client with the Retry-After its body
// names.
func TestDocumentsJobsQuotaRetryAfter(t *testing.T) {
	up := httptest.NewServer(&tenantRecorder{})
	defer up.Close()
	cfg := upstreamConfig(up.URL)
	cfg.Tenant.Header = HeaderTenant
	_, base := startProxy(t, cfg, WithDocuments(busyDocuments{}))
	req, _ := http.NewRequest("POST", base+DocumentsPath, strings.NewReader(`[{"id":"d","text":"x"}]`))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(HeaderTenant, "busy")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") != "7" {
		t.Errorf("got %d with Retry-After %q, want 429 with 7", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
}

// countDocuments is the Count of the test Documents: the queue's own
// parse, as the sidecar wires it.
func countDocuments(body []byte) (int, error) {
	docs, err := fusion.ParseDocuments(body)
	return len(docs), err
}

func (busyDocuments) Count(b []byte) (int, error) { return countDocuments(b) }
