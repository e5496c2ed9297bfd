package rag

import (
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/fusionrag/fusionrag/fingerprint"
	"github.com/fusionrag/fusionrag/internal/proxytest"
	"github.com/fusionrag/fusionrag/proxy"
)

// TestTenantHeaderIsolation is the review finding end to end, on the real
// model, store and engine: two clients with no API key send the same RAG
// request, claiming different tenants in X-Fusionrag-Tenant. With the
// default configuration the header is not trusted: both are the anonymous
// tenant, and the second request hits the chunk KV the first one stored.
// With the header configured (as behind a gateway) they are two tenants, and
// the second finds none of the first one's KV.
func TestTenantHeaderIsolation(t *testing.T) {
	body := storiesBody(`"max_tokens":2,"temperature":0`)
	anon := fingerprint.Tenant(fingerprint.TenantAnonymous, "")
	tests := []struct {
		name, header string
		want         []tenantStats
	}{
		{"default", "", []tenantStats{{"anonymous", anon, 0, 2}, {"anonymous", anon, 2, 0}}},
		{"configured", proxy.HeaderTenant, []tenantStats{
			{"header", fingerprint.Tenant(fingerprint.TenantFromHeader, "tenant-a"), 0, 2},
			{"header", fingerprint.Tenant(fingerprint.TenantFromHeader, "tenant-b"), 0, 2},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fe := newFuserEnv(t, nil) // a store of its own: nothing stored yet
			sf := &statsFuser{f: fe.f}
			cfg := upstreamConfig(fe.engine)
			if tt.header != "" {
				cfg.Tenant.Header = tt.header
			}
			_, base := proxytest.Start(t, cfg, proxy.WithFuser(sf))
			for _, claimed := range []string{"tenant-a", "tenant-b"} {
				if code, resp := post(t, base+"/v1/chat/completions", body, proxy.HeaderTenant, claimed); code != 200 {
					t.Fatalf("%s: %d %s", claimed, code, resp)
				}
			}
			sf.mu.Lock()
			defer sf.mu.Unlock()
			if d := cmp.Diff(tt.want, sf.plans); d != "" {
				t.Errorf("tenants and chunk hits of the two requests (-want +got):\n%s", d)
			}
		})
	}
}
