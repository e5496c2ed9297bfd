package recompute

import (
	"fmt"
	"strings"
	"testing"

	"github.com/fusionrag/fusionrag/chunkkv"
	"github.com/fusionrag/fusionrag/internal/redistest"
	"github.com/fusionrag/fusionrag/internal/skiplog"
	"github.com/fusionrag/fusionrag/kvstore"
)

// TestTiersAndDTypes runs the store round trip over every tier (memory,
// disk with file mappings, real Redis, a tiered mem+redis store) and KV
// dtypes. fp32 reuse from any tier must equal the run that computed the KV
// (exactTol); fp16 and bf16 round every K and V element (relative error up
// to 2^-11 and 2^-8), which moved the logits by 4e-5 and 2.3e-4 (relative)
// here; 1e-2 bounds that rounding while catching a wrong conversion, which
// garbles the logits entirely.
func TestTiersAndDTypes(t *testing.T) {
	m := tinySynthetic(t)
	req := randomRequest(m, 11, []int{21, 30, 17}, 6)
	ref := run(t, newRep(t, m, nil), req, "fusionrag", 0.15)
	redisAddr := ""
	if redistest.Installed() {
		redisAddr = redistest.Start(t).Addr
	}
	db := 0 // every Redis subtest gets its own empty database
	nextDB := func() int { db++; return db }
	urls := map[string]func() string{
		"mem":       func() string { return "mem://?max=64MiB" },
		"disk":      func() string { return "disk://" + t.TempDir() + "?max=64MiB" },
		"redis":     func() string { return fmt.Sprintf("redis://%s/%d", redisAddr, nextDB()) },
		"mem+redis": func() string { return fmt.Sprintf("mem://?max=64MiB,redis://%s/%d", redisAddr, nextDB()) },
	}
	for _, tier := range []string{"mem", "disk", "redis", "mem+redis"} {
		for _, dt := range []kvstore.DType{kvstore.Float32, kvstore.Float16, kvstore.BFloat16} {
			t.Run(tier+"/"+dt.String(), func(t *testing.T) {
				if strings.Contains(tier, "redis") && redisAddr == "" {
					skiplog.Record(skiplog.Redis, t.Name())
					t.Skip("SKIPPING: redis-server not installed (apt-get install redis-server); recompute over the Redis tier is NOT tested")
				}
				store, err := kvstore.Open(urls[tier]())
				if err != nil {
					t.Fatal(err)
				}
				defer store.Close()
				r := newRep(t, m, &chunkkv.Store{Store: store, DType: dt})
				first := run(t, r, req, "fusionrag", 0.15)
				if first.Record.Misses != 3 {
					t.Fatalf("first run: %d misses, want 3", first.Record.Misses)
				}
				second := run(t, r, req, "fusionrag", 0.15)
				if rec := second.Record; rec.RawHits != 3 || !rec.PrefixHit || rec.BytesLoaded == 0 {
					t.Fatalf("second run: hits %d prefix %v bytes %d", rec.RawHits, rec.PrefixHit, rec.BytesLoaded)
				}
				tol := exactTol
				if dt != kvstore.Float32 {
					tol = 1e-2
				}
				if d := relDiff(second.LastLogits, ref.LastLogits); d > tol {
					t.Errorf("logits differ from the in-memory run by %.3g (tolerance %g)", d, tol)
				} else {
					t.Logf("logits differ by %.3g", d)
				}
			})
		}
	}
}
