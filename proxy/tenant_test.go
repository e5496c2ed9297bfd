package proxy

import (
	"context"
	"flag"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/fusionrag/fusionrag/fingerprint"
)

// TestTenantHeaderConfig: no tenant header is trusted unless one is
// configured, by YAML, environment or flag; an empty value is the default.
func TestTenantHeaderConfig(t *testing.T) {
	tests := []struct {
		name, yaml string
		env        map[string]string
		flags      []string
		want       string
	}{
		{"default", "", nil, nil, "-"},
		{"yaml", "tenant:\n  header: X-Fusionrag-Tenant\n", nil, nil, HeaderTenant},
		{"env", "", map[string]string{"FUSIONRAG_TENANT_HEADER": "X-Gateway-Tenant"}, nil, "X-Gateway-Tenant"},
		{"flag", "", nil, []string{"-tenant.header", HeaderTenant}, HeaderTenant},
		{"flag over yaml", "tenant:\n  header: X-Fusionrag-Tenant\n", nil, []string{"-tenant.header=-"}, "-"},
		{"empty env is the default", "", map[string]string{"FUSIONRAG_TENANT_HEADER": ""}, nil, "-"},
		{"explicit off", "tenant:\n  header: \"-\"\n", nil, nil, "-"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			file := filepath.Join(t.TempDir(), "c.yaml")
			if err := os.WriteFile(file, []byte("upstream: http://127.0.0.1:1\n"+tt.yaml), 0o644); err != nil {
				t.Fatal(err)
			}
			fs := flag.NewFlagSet("serve", flag.ContinueOnError)
			cf := RegisterFlags(fs)
			if err := fs.Parse(tt.flags); err != nil {
				t.Fatal(err)
			}
			c, err := LoadConfig(file, func(k string) (string, bool) { v, ok := tt.env[k]; return v, ok }, cf.Visited())
			if err != nil {
				t.Fatal(err)
			}
			if c.Tenant.Header != tt.want {
				t.Errorf("tenant.header = %q, want %q", c.Tenant.Header, tt.want)
			}
		})
	}
	if got := DefaultConfig().Tenant.Header; got != "-" {
		t.Errorf("DefaultConfig().Tenant.Header = %q, want - (no header trusted)", got)
	}
}

// tenantRecorder is an upstream that records the tenant header each request
// brought, and a Fuser and Documents that record the tenant the sidecar
// derived.
type tenantRecorder struct {
	mu       sync.Mutex
	upstream []string // HeaderTenant as the engine received it
	fused    []string // Request.TenantSource + " " + Request.Tenant
	docs     []string // the tenant HandleSubmit was given
}

func (tr *tenantRecorder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	tr.mu.Lock()
	tr.upstream = append(tr.upstream, r.Header.Get(HeaderTenant))
	tr.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write([]byte(`{"ok":true}`))
}

func (tr *tenantRecorder) Fuse(_ context.Context, r *Request) (*Plan, error) {
	tr.mu.Lock()
	tr.fused = append(tr.fused, r.TenantSource+" "+r.Tenant)
	tr.mu.Unlock()
	return nil, Skip("test")
}

func (tr *tenantRecorder) HandleSubmit(tenant string, _ []byte) (int, []byte) {
	tr.mu.Lock()
	tr.docs = append(tr.docs, tenant)
	tr.mu.Unlock()
	return http.StatusAccepted, []byte(`{"id":"job"}`)
}

func (tr *tenantRecorder) HandleStatus(string) (int, []byte) { return http.StatusOK, []byte(`{}`) }

// TestTenantHeaderTrust: the tenant of the fusion path and of the documents
// route comes from the tenant header only when one is configured; otherwise
// the header is forwarded to the engine like any other and the tenant is
// the API key's, or anonymous.
func TestTenantHeaderTrust(t *testing.T) {
	anon := fingerprint.Tenant(fingerprint.TenantAnonymous, "")
	key := fingerprint.Tenant(fingerprint.TenantFromAPIKey, "sk-1")
	acme := fingerprint.Tenant(fingerprint.TenantFromHeader, "acme")
	tests := []struct {
		name, configured string // Tenant.Header; "" leaves the default
		hdr              []string
		want             string // source and tenant
	}{
		{"default: header ignored", "", []string{HeaderTenant, "acme"}, "anonymous " + anon},
		{"default: header ignored, key used", "", []string{HeaderTenant, "acme", "Authorization", "Bearer sk-1"}, "api-key " + key},
		{"off: header ignored", "-", []string{HeaderTenant, "acme"}, "anonymous " + anon},
		{"configured", HeaderTenant, []string{HeaderTenant, "acme", "Authorization", "Bearer sk-1"}, "header " + acme},
		{"configured, absent: key", HeaderTenant, []string{"Authorization", "Bearer sk-1"}, "api-key " + key},
		{"configured, case-insensitive", "x-fusionrag-tenant", []string{HeaderTenant, "acme"}, "header " + acme},
		{"other header configured", "X-Gateway-Tenant", []string{HeaderTenant, "acme"}, "anonymous " + anon},
		{"other header set", "X-Gateway-Tenant", []string{"X-Gateway-Tenant", "acme", HeaderTenant, "evil"}, "header " + acme},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr := &tenantRecorder{}
			up := httptest.NewServer(tr)
			defer up.Close()
			cfg := upstreamConfig(up.URL)
			if tt.configured != "" {
				cfg.Tenant.Header = tt.configured
			}
			cfg.Documents.AdminKey = "admin"
			_, base := startProxy(t, cfg, WithFuser(tr), WithDocuments(tr))
			if code, body := post(t, base+"/v1/completions", `{"model":"m","prompt":"p"}`, tt.hdr...); code != 200 {
				t.Fatalf("completions: %d %s", code, body)
			}
			if code, body := post(t, base+DocumentsPath, `[]`, append([]string{HeaderAdminKey, "admin"}, tt.hdr...)...); code != http.StatusAccepted {
				t.Fatalf("documents: %d %s", code, body)
			}
			want := map[string]string{}
			for i := 0; i+1 < len(tt.hdr); i += 2 {
				want[http.CanonicalHeaderKey(tt.hdr[i])] = tt.hdr[i+1]
			}
			_, wantTenant, _ := strings.Cut(tt.want, " ")
			tr.mu.Lock()
			defer tr.mu.Unlock()
			if d := cmp.Diff([]string{tt.want}, tr.fused); d != "" {
				t.Errorf("fusion path tenant (-want +got):\n%s", d)
			}
			if d := cmp.Diff([]string{wantTenant}, tr.docs); d != "" {
				t.Errorf("documents route tenant (-want +got):\n%s", d)
			}
			// Trusted or not, the header is forwarded as it came (the
			// sidecar strips nothing; keeping clients' values out is the
			// gateway's job).
			if d := cmp.Diff([]string{want[HeaderTenant]}, tr.upstream); d != "" {
				t.Errorf("%s at the engine (-want +got):\n%s", HeaderTenant, d)
			}
		})
	}
}

func (tr *tenantRecorder) Count(b []byte) (int, error) { return countDocuments(b) }
