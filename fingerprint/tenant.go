package fingerprint

import (
	"encoding/hex"

	"github.com/zeebo/xxh3"
)

// Tenant sources: where the sidecar took a request's tenant from.
const (
	TenantFromHeader = "header"    // the tenant header (set by a trusted gateway)
	TenantFromAPIKey = "api-key"   // a hash of the bearer API key
	TenantAnonymous  = "anonymous" // neither: every such request shares one tenant
)

// Tenant is the tenant identity that goes into every key (Namespace.Tenant):
// a hex xxh3-128 of the source and the value, so that an API key never
// appears in a key or a log, and a header value cannot collide with an API
// key. The sidecar (per request) and `fusionrag ingest --tenant/--api-key`
// (offline) both call it, so KV ingested for a tenant is found by that
// tenant's requests.
func Tenant(source, value string) string {
	if source == TenantAnonymous {
		value = ""
	}
	h := xxh3.HashString128("fusionrag-tenant\x00" + source + "\x00" + value).Bytes()
	return hex.EncodeToString(h[:])
}
