package bench

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/fusionrag/fusionrag/fingerprint"
	"github.com/fusionrag/fusionrag/kvstore"
)

// StoreShape is the KV blob measured: one chunk of Tokens tokens of a model
// with Layers × KVHeads × HeadDim, in DType.
type StoreShape struct {
	Name    string
	Layers  int
	KVHeads int
	HeadDim int
	Tokens  int
	DType   kvstore.DType
}

// Bytes is the payload size: layers × {K, V} × tokens × kvHeads × headDim ×
// element size.
func (s StoreShape) Bytes() int64 {
	el := int64(4)
	if s.DType != kvstore.Float32 {
		el = 2
	}
	return int64(s.Layers) * 2 * int64(s.Tokens) * int64(s.KVHeads) * int64(s.HeadDim) * el
}

// DefaultStoreShapes: a 512-token chunk of Llama-3-8B (32 layers × 8 KV
// heads × 128, fp16: 64 MiB) and of stories260K (5 × 4 × 8, fp32: 320 KiB).
func DefaultStoreShapes() []StoreShape {
	return []StoreShape{
		{Name: "llama3-8b-512tok-fp16", Layers: 32, KVHeads: 8, HeadDim: 128, Tokens: 512, DType: kvstore.Float16},
		{Name: "stories260K-512tok-fp32", Layers: 5, KVHeads: 4, HeadDim: 8, Tokens: 512, DType: kvstore.Float32},
	}
}

// ScaleStoreShapes are the chunk sizes of the scale-out comparison, from
// 100 KiB to 32 MiB: a 100 KiB synthetic blob (25 layers × 2 KV heads × 64,
// 8 tokens, fp16), then chunks of Llama-3-8B in fp16 (128 KiB a token) of
// 8, 64 and 256 tokens: 1, 8 and 32 MiB.
func ScaleStoreShapes() []StoreShape {
	return []StoreShape{
		{Name: "100KiB-synthetic-fp16", Layers: 25, KVHeads: 2, HeadDim: 64, Tokens: 8, DType: kvstore.Float16},
		{Name: "llama3-8b-8tok-fp16", Layers: 32, KVHeads: 8, HeadDim: 128, Tokens: 8, DType: kvstore.Float16},
		{Name: "llama3-8b-64tok-fp16", Layers: 32, KVHeads: 8, HeadDim: 128, Tokens: 64, DType: kvstore.Float16},
		{Name: "llama3-8b-256tok-fp16", Layers: 32, KVHeads: 8, HeadDim: 128, Tokens: 256, DType: kvstore.Float16},
	}
}

// StoreConfig configures RunStore.
type StoreConfig struct {
	// Tiers are kvstore URLs, each measured alone (a comma-separated value
	// is a tiered store, measured as one). Required.
	Tiers []string
	// Shapes of the blobs; default DefaultStoreShapes.
	Shapes []StoreShape
	// Blobs is the number of distinct blobs written and read per shape and
	// tier; default 8.
	Blobs int
	// Rounds is the number of times every blob is read back; default 3.
	Rounds int
	// Progress receives the progress bar; Quiet silences it.
	Progress io.Writer
	Quiet    bool
}

// StoreRow is one tier × shape.
type StoreRow struct {
	Tier      string `json:"tier"`
	URL       string `json:"url"`
	Shape     string `json:"shape"`
	BlobBytes int64  `json:"blob_bytes"`
	Blobs     int    `json:"blobs"`
	// PutMBps and GetMBps are MB/s (10^6 bytes) over all puts and gets.
	PutMBps float64 `json:"put_mbps"`
	GetMBps float64 `json:"get_mbps"`
	// GetP50Ms and GetP99Ms are per-blob Get latencies (the blob verified).
	GetP50Ms float64 `json:"get_p50_ms"`
	GetP99Ms float64 `json:"get_p99_ms"`
	// MemcpyMBps is a plain copy of the same bytes measured in the same run,
	// GetVsMemcpy = GetMBps / MemcpyMBps.
	MemcpyMBps  float64 `json:"memcpy_mbps"`
	GetVsMemcpy float64 `json:"get_vs_memcpy"`
	// GetVsRedis, PutVsRedis and P99VsRedis are this row's get and put
	// bandwidth and get p99 divided by the single-Redis row's of the same
	// shape in the same run; 0 when the run has no single Redis.
	GetVsRedis float64 `json:"get_vs_redis,omitempty"`
	PutVsRedis float64 `json:"put_vs_redis,omitempty"`
	P99VsRedis float64 `json:"p99_vs_redis,omitempty"`
}

// tierLabel names a store URL's tier: its scheme, "-1slot" for a cluster
// that keeps a blob's parts in its slot (spread=0), "tiered" for several
// URLs.
func tierLabel(spec string) string {
	if len(splitComma(spec)) > 1 && !strings.HasPrefix(spec, "redis-cluster://") && !strings.HasPrefix(spec, "rediss-cluster://") {
		return "tiered"
	}
	u, err := url.Parse(spec)
	if err != nil {
		return "?"
	}
	if sp, err := strconv.ParseBool(u.Query().Get("spread")); err == nil && !sp && strings.HasSuffix(u.Scheme, "-cluster") {
		return u.Scheme + "-1slot"
	}
	return u.Scheme
}

// fillRatios sets the ratios to the single-Redis row of each shape.
func fillRatios(rows []StoreRow) {
	for i := range rows {
		for _, b := range rows {
			if b.Tier == "redis" && b.Shape == rows[i].Shape && b.GetMBps > 0 && b.PutMBps > 0 && b.GetP99Ms > 0 {
				rows[i].GetVsRedis = rows[i].GetMBps / b.GetMBps
				rows[i].PutVsRedis = rows[i].PutMBps / b.PutMBps
				rows[i].P99VsRedis = rows[i].GetP99Ms / b.GetP99Ms
			}
		}
	}
}

func (c *StoreConfig) fill() error {
	if len(c.Tiers) == 0 {
		return errors.New("bench: StoreConfig.Tiers is empty")
	}
	if c.Shapes == nil {
		c.Shapes = DefaultStoreShapes()
	}
	for _, s := range c.Shapes {
		if s.Layers <= 0 || s.KVHeads <= 0 || s.HeadDim <= 0 || s.Tokens <= 0 {
			return fmt.Errorf("bench: store shape %q has a zero dimension", s.Name)
		}
	}
	if c.Blobs <= 0 {
		c.Blobs = 8
	}
	if c.Rounds <= 0 {
		c.Rounds = 3
	}
	return nil
}

// storeBlobs makes n sealed blobs of shape s filled with pseudo-random bits
// (a payload the store cannot compress or deduplicate), with distinct keys.
func storeBlobs(s StoreShape, n int, seed uint64) ([]*kvstore.Blob, [][]int32, error) {
	rng := rand.New(rand.NewPCG(seed, 0x570e))
	var blobs []*kvstore.Blob
	var toks [][]int32
	for range n {
		t := make([]int32, s.Tokens)
		for i := range t {
			t[i] = int32(rng.IntN(32000))
		}
		var key fingerprint.Key
		binary.LittleEndian.PutUint64(key[:], rng.Uint64())
		binary.LittleEndian.PutUint64(key[8:], rng.Uint64())
		dt := s.DType
		if dt == 0 {
			dt = kvstore.Float32
		}
		b, err := kvstore.NewBlob(kvstore.Meta{DType: dt, Layers: s.Layers, KVHeads: s.KVHeads, HeadDim: s.HeadDim, Tokens: s.Tokens,
			PositionFree: true, Key: key, Check: fingerprint.CheckOf(t)})
		if err != nil {
			return nil, nil, err
		}
		p := b.Payload()
		for i := 0; i+8 <= len(p); i += 8 {
			// Finite halves and floats: clear each 16-bit word's top
			// exponent bit (a NaN payload is legal for the store, but keep
			// the data plausible).
			binary.LittleEndian.PutUint64(p[i:], rng.Uint64()&0xbfffbfffbfffbfff)
		}
		if _, err := b.Encode(); err != nil {
			return nil, nil, err
		}
		blobs = append(blobs, b)
		toks = append(toks, t)
	}
	return blobs, toks, nil
}

// memcpyMBps times copying src into a buffer of its size (faulted in first).
func memcpyMBps(src []byte, rounds int) float64 {
	dst := make([]byte, len(src))
	copy(dst, src)
	t0 := time.Now()
	for range rounds {
		copy(dst, src)
	}
	return float64(len(src)) * float64(rounds) / 1e6 / time.Since(t0).Seconds()
}

// redactURL drops a password from a store URL.
func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil || u.User == nil {
		return s
	}
	if _, ok := u.User.Password(); ok {
		u.User = url.UserPassword(u.User.Username(), "xxx")
	}
	return u.String()
}

// RunStore writes Blobs blobs of every shape to every tier, then reads each
// back Rounds times (every Get verifies the checksums and the token check),
// and reports bandwidth and latency next to a memcpy of the same bytes.
func RunStore(ctx context.Context, c StoreConfig) ([]StoreRow, error) {
	if err := c.fill(); err != nil {
		return nil, err
	}
	bar := NewProgress(c.Progress, "store", len(c.Tiers)*len(c.Shapes)*c.Blobs*(1+c.Rounds), c.Quiet)
	defer bar.Done()
	var rows []StoreRow
	for si, sh := range c.Shapes {
		blobs, toks, err := storeBlobs(sh, c.Blobs, uint64(si))
		if err != nil {
			return nil, err
		}
		raw, err := blobs[0].Encode()
		if err != nil {
			return nil, err
		}
		for _, spec := range c.Tiers {
			st, err := kvstore.Open(spec)
			if err != nil {
				return nil, fmt.Errorf("bench: open %s: %w", redactURL(spec), err)
			}
			row, err := measureStore(ctx, st, blobs, toks, c.Rounds, bar)
			for _, b := range blobs {
				st.Delete(ctx, b.Key)
			}
			st.Close()
			if err != nil {
				return nil, fmt.Errorf("bench: %s %s: %w", redactURL(spec), sh.Name, err)
			}
			row.URL, row.Shape, row.Tier = redactURL(spec), sh.Name, tierLabel(spec)
			row.MemcpyMBps = memcpyMBps(raw, max(3, c.Rounds*c.Blobs/2))
			if row.MemcpyMBps > 0 {
				row.GetVsMemcpy = row.GetMBps / row.MemcpyMBps
			}
			rows = append(rows, row)
		}
	}
	fillRatios(rows)
	return rows, nil
}

func splitComma(s string) []string {
	var out []string
	start := 0
	for i := 0; i <= len(s); i++ {
		if i == len(s) || s[i] == ',' {
			if i > start {
				out = append(out, s[start:i])
			}
			start = i + 1
		}
	}
	return out
}

func measureStore(ctx context.Context, st kvstore.Store, blobs []*kvstore.Blob, toks [][]int32, rounds int, bar *Progress) (StoreRow, error) {
	size := int64(blobs[0].Size())
	row := StoreRow{BlobBytes: size, Blobs: len(blobs)}
	t0 := time.Now()
	for _, b := range blobs {
		if err := st.Put(ctx, b); err != nil {
			return row, err
		}
		bar.Add(1)
	}
	row.PutMBps = float64(size) * float64(len(blobs)) / 1e6 / time.Since(t0).Seconds()
	var lat []float64
	t0 = time.Now()
	for range rounds {
		for i, b := range blobs {
			g0 := time.Now()
			got, err := st.Get(ctx, b.Key, fingerprint.CheckOf(toks[i]))
			if err != nil {
				return row, err
			}
			if int64(got.Size()) != size {
				got.Release()
				return row, fmt.Errorf("got %d bytes, want %d", got.Size(), size)
			}
			got.Release()
			lat = append(lat, ms(time.Since(g0)))
			bar.Add(1)
		}
		if err := ctx.Err(); err != nil {
			return row, err
		}
	}
	row.GetMBps = float64(size) * float64(len(lat)) / 1e6 / time.Since(t0).Seconds()
	slices.Sort(lat)
	row.GetP50Ms, row.GetP99Ms = quantile(lat, 0.5), quantile(lat, 0.99)
	return row, nil
}

// quantile returns the q-quantile of sorted x (nearest rank; 0 for none).
func quantile(sorted []float64, q float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(q*float64(len(sorted))+0.999999) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

// StoreTable renders rows as a Markdown table.
func StoreTable(rows []StoreRow, elapsed time.Duration) Table {
	t := Table{Title: "KV store tiers: bandwidth and latency per chunk blob",
		Header: []string{"tier", "shape", "blob MiB", "put MB/s", "get MB/s", "get p50 ms", "get p99 ms", "memcpy MB/s", "get / memcpy"}}
	ratios := false
	for _, r := range rows {
		ratios = ratios || r.GetVsRedis > 0
	}
	if ratios {
		t.Header = append(t.Header, "get / redis", "put / redis", "p99 / redis")
	}
	for _, r := range rows {
		row := []string{r.Tier, r.Shape, f(float64(r.BlobBytes)/(1<<20), 2), f(r.PutMBps, 0), f(r.GetMBps, 0),
			f(r.GetP50Ms, 2), f(r.GetP99Ms, 2), f(r.MemcpyMBps, 0), f(r.GetVsMemcpy, 3)}
		if ratios {
			row = append(row, f(r.GetVsRedis, 2), f(r.PutVsRedis, 2), f(r.P99VsRedis, 2))
		}
		t.Rows = append(t.Rows, row)
	}
	t.Notes = []string{
		"Every Get verifies the blob's checksums and token check, as the serving path does. mem returns the stored buffer " +
			"(no copy); disk reads a file that was just written (warm page cache); redis goes through a loopback TCP connection " +
			"to a local redis-server; redis-cluster is a 3-master, 3-replica Redis Cluster on loopback ports of the same machine (every write is " +
			"also replicated, on the same cores) with its defaults (2 MiB parts, each on its own slot: spread over the shards), redis-cluster-1slot the same " +
			"cluster with spread=0&part=8MiB (a blob's parts on its own shard, single Redis's part size). memcpy is a plain copy of one blob's bytes measured in the same run: the ratio is the figure to compare across machines.",
		fmt.Sprintf("Measured in %s.", elapsed.Round(time.Millisecond)),
	}
	return t
}

// StorePlots draws get and put bandwidth per tier, one bar group per shape
// (log scale: mem and redis differ by orders of magnitude).
func StorePlots(rows []StoreRow) []Plot {
	var tiers, shapes []string
	for _, r := range rows {
		if !slices.Contains(tiers, r.Tier) {
			tiers = append(tiers, r.Tier)
		}
		if !slices.Contains(shapes, r.Shape) {
			shapes = append(shapes, r.Shape)
		}
	}
	get := Plot{File: "store-get.png", Title: "KV store: Get bandwidth per tier", YLabel: "MB/s", Kind: Bars, Categories: tiers, LogY: true}
	put := Plot{File: "store-put.png", Title: "KV store: Put bandwidth per tier", YLabel: "MB/s", Kind: Bars, Categories: tiers, LogY: true}
	for _, sh := range shapes {
		g, p := Series{Name: sh, Y: make([]float64, len(tiers))}, Series{Name: sh, Y: make([]float64, len(tiers))}
		for _, r := range rows {
			if r.Shape == sh {
				i := slices.Index(tiers, r.Tier)
				g.Y[i], p.Y[i] = r.GetMBps, r.PutMBps
			}
		}
		get.Series, put.Series = append(get.Series, g), append(put.Series, p)
	}
	return []Plot{get, put}
}
