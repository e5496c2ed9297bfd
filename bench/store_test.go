package bench

import (
	"context"
	"github.com/fusionrag/fusionrag/internal/redistest"
	"testing"
	"time"

	"github.com/fusionrag/fusionrag/kvstore"
)

// testTiers returns mem, disk and, when redis-server is installed, a real
// Redis tier (stopped at cleanup); it says loudly when Redis is skipped.
func testTiers(t *testing.T) []string {
	t.Helper()
	tiers := []string{"mem://?max=256MiB", "disk://" + t.TempDir() + "?max=1GiB"}
	if !redistest.Installed() {
		t.Log("REDIS TIER NOT MEASURED: redis-server not installed (apt-get install redis-server)")
		return tiers
	}
	r := redistest.Start(t, redistest.Args("--proto-max-bulk-len", "1gb"))
	return append(tiers, r.URL(0))
}

func TestStoreQuick(t *testing.T) {
	tiers := testTiers(t)
	start := time.Now()
	shapes := []StoreShape{{Name: "small-fp16", Layers: 4, KVHeads: 2, HeadDim: 16, Tokens: 64, DType: kvstore.Float16},
		{Name: "small-fp32", Layers: 2, KVHeads: 2, HeadDim: 8, Tokens: 32, DType: kvstore.Float32}}
	rows, err := RunStore(context.Background(), StoreConfig{Tiers: tiers, Shapes: shapes, Blobs: 3, Rounds: 2, Quiet: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != len(tiers)*len(shapes) {
		t.Fatalf("%d rows, want %d", len(rows), len(tiers)*len(shapes))
	}
	for _, r := range rows {
		if r.PutMBps <= 0 || r.GetMBps <= 0 || r.MemcpyMBps <= 0 || r.GetP99Ms < r.GetP50Ms || r.Blobs != 3 {
			t.Errorf("bad row %+v", r)
		}
		if want := int64(kvstore.HeaderSize); r.BlobBytes <= want {
			t.Errorf("%s blob %d bytes: no payload", r.Shape, r.BlobBytes)
		}
	}
	if s := (StoreShape{Layers: 32, KVHeads: 8, HeadDim: 128, Tokens: 512, DType: kvstore.Float16}); s.Bytes() != 64<<20 {
		t.Errorf("llama3-8b chunk %d bytes, want 64 MiB", s.Bytes())
	}
	tb := StoreTable(rows, time.Since(start))
	var sb stringsBuilder
	tb.WriteMarkdown(&sb)
	t.Logf("\n%s", sb.String())
	if _, err := RunStore(context.Background(), StoreConfig{}); err == nil {
		t.Error("no tiers: no error")
	}
	if _, err := RunStore(context.Background(), StoreConfig{Tiers: []string{"nope://x"}}); err == nil {
		t.Error("bad URL: no error")
	}
}

func TestStoreTierLabelsAndRatios(t *testing.T) {
	for spec, want := range map[string]string{
		"redis://h:1/0":                          "redis",
		"redis-cluster://a:1,b:2/":               "redis-cluster",
		"redis-cluster://a:1,b:2/?spread=0":      "redis-cluster-1slot",
		"redis-cluster://a:1,b:2/?spread=1":      "redis-cluster",
		"mem://?max=1MiB,disk:///tmp/x?max=1MiB": "tiered",
		"disk:///tmp/x":                          "disk",
	} {
		if got := tierLabel(spec); got != want {
			t.Errorf("tierLabel(%q) = %q, want %q", spec, got, want)
		}
	}
	rows := []StoreRow{
		{Tier: "redis", Shape: "a", GetMBps: 100, PutMBps: 50, GetP99Ms: 2},
		{Tier: "redis-cluster", Shape: "a", GetMBps: 150, PutMBps: 25, GetP99Ms: 1},
		{Tier: "redis-cluster", Shape: "b", GetMBps: 150, PutMBps: 25, GetP99Ms: 1},
	}
	fillRatios(rows)
	if r := rows[1]; r.GetVsRedis != 1.5 || r.PutVsRedis != 0.5 || r.P99VsRedis != 0.5 {
		t.Errorf("ratios %+v", r)
	}
	if rows[2].GetVsRedis != 0 {
		t.Errorf("a shape without a redis row got ratio %v", rows[2].GetVsRedis)
	}
}
