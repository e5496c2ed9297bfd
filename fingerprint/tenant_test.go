package fingerprint

import "testing"

func TestTenant(t *testing.T) {
	a := Tenant(TenantFromHeader, "acme")
	tests := []struct {
		name       string
		got, other string
	}{
		{"header vs api key of the same text", a, Tenant(TenantFromAPIKey, "acme")},
		{"header vs another header", a, Tenant(TenantFromHeader, "acme2")},
		{"header vs anonymous", a, Tenant(TenantAnonymous, "")},
	}
	for _, tt := range tests {
		if tt.got == tt.other {
			t.Errorf("%s: both %s", tt.name, tt.got)
		}
	}
	if Tenant(TenantAnonymous, "x") != Tenant(TenantAnonymous, "") {
		t.Error("anonymous tenant depends on its value")
	}
	if a != Tenant(TenantFromHeader, "acme") || len(a) != 32 {
		t.Errorf("Tenant not stable or not 128-bit hex: %q", a)
	}
}
