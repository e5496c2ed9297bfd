package bench

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"strings"
)

// CapacityModel is a transformer's KV shape and size, from its published
// configuration.
type CapacityModel struct {
	Name    string
	Layers  int     // num_hidden_layers
	KVHeads int     // num_key_value_heads (GQA)
	HeadDim int     // hidden_size / num_attention_heads
	DModel  int     // hidden_size
	Params  float64 // parameter count
	Source  string  // where the figures come from
}

// KVBytesPerToken is layers × {K, V} × kvHeads × headDim × bytes per element.
func (m CapacityModel) KVBytesPerToken(elemBytes float64) float64 {
	return float64(m.Layers) * 2 * float64(m.KVHeads) * float64(m.HeadDim) * elemBytes
}

// PrefillFLOPsPerToken is the forward cost of one token prefilled after ctx
// tokens: 2 × parameters (every weight multiplied once) plus attention's
// QK^T and AV, 2 × 2 × layers × dModel × ctx (the usual estimate, Kaplan et
// al. 2020, arXiv 2001.08361, Table 1, counting multiply-adds as 2 FLOPs).
func (m CapacityModel) PrefillFLOPsPerToken(ctx float64) float64 {
	return 2*m.Params + 4*float64(m.Layers)*float64(m.DModel)*ctx
}

// CapacityDType is a KV element type.
type CapacityDType struct {
	Name  string
	Bytes float64
}

// CapacityGPU is an accelerator's dense tensor throughput.
type CapacityGPU struct {
	Name   string
	TFLOPS float64 // dense (no sparsity) 16-bit tensor TFLOPS
	Source string
}

// CapacityConfig are the model's inputs; every figure says where it comes
// from in CapacityInputs. The zero value is not valid: start from
// DefaultCapacity.
type CapacityConfig struct {
	Models       []CapacityModel
	DTypes       []CapacityDType
	GPUs         []CapacityGPU
	ChunkTokens  int     // tokens per chunk
	PrefixTok    int     // tokens of S before each chunk (its attention context)
	Chunks       float64 // distinct chunks stored (the store-size row)
	Replicas     int     // Redis Cluster replicas per master
	MFU          float64 // fraction of peak a prefill reaches
	Rates        []float64
	ChunksPerReq int     // retrieved chunks per request
	HitRate      float64 // share of chunk lookups that hit
	Ratio        float64 // share of context tokens recomputed (FusionRAG)
	ShardGBps    float64 // usable network bandwidth of one shard
	ShardMemGiB  float64 // usable memory of one shard for blobs
	SidecarGBps  float64 // usable network bandwidth of one sidecar
	WorkingSet   float64 // distinct chunks kept hot (sizing shards by memory)
}

// DefaultCapacity returns the published and assumed inputs of docs/scale.md.
func DefaultCapacity() CapacityConfig {
	return CapacityConfig{
		Models: []CapacityModel{
			{Name: "Llama-3-8B", Layers: 32, KVHeads: 8, HeadDim: 4096 / 32, DModel: 4096, Params: 8.03e9,
				Source: "meta-llama/Meta-Llama-3-8B config.json: num_hidden_layers 32, num_key_value_heads 8, hidden_size 4096, num_attention_heads 32; 8.03 B parameters (model card)"},
			{Name: "Llama-3-70B", Layers: 80, KVHeads: 8, HeadDim: 8192 / 64, DModel: 8192, Params: 70.6e9,
				Source: "meta-llama/Meta-Llama-3-70B config.json: num_hidden_layers 80, num_key_value_heads 8, hidden_size 8192, num_attention_heads 64; 70.6 B parameters (model card)"},
		},
		DTypes: []CapacityDType{{"f16/bf16", 2}, {"8-bit", 1}},
		GPUs: []CapacityGPU{
			{Name: "A100 SXM", TFLOPS: 312, Source: "NVIDIA A100 datasheet: 312 TFLOPS BF16/FP16 tensor, dense"},
			{Name: "H100 SXM", TFLOPS: 989, Source: "NVIDIA H100 datasheet: 1,979 TFLOPS BF16 tensor with sparsity, 989 dense"},
		},
		ChunkTokens:  256,
		PrefixTok:    32,
		Chunks:       1e6,
		Replicas:     1,
		MFU:          0.5,
		Rates:        []float64{10, 100, 1000},
		ChunksPerReq: 10,
		HitRate:      0.9,
		Ratio:        0.15,
		ShardGBps:    25.0 / 8 * 0.8,
		ShardMemGiB:  200,
		SidecarGBps:  100.0 / 8 * 0.8,
		WorkingSet:   1e5,
	}
}

func (c *CapacityConfig) validate() error {
	if len(c.Models) == 0 || len(c.DTypes) == 0 || len(c.GPUs) == 0 {
		return errors.New("bench: capacity needs models, dtypes and GPUs")
	}
	if c.ChunkTokens <= 0 || c.Chunks <= 0 || c.MFU <= 0 || c.MFU > 1 || c.ChunksPerReq <= 0 ||
		c.HitRate < 0 || c.HitRate > 1 || c.Ratio < 0 || c.Ratio > 1 || c.ShardGBps <= 0 || c.ShardMemGiB <= 0 ||
		c.SidecarGBps <= 0 || c.WorkingSet <= 0 || c.Replicas < 0 {
		return fmt.Errorf("bench: capacity inputs out of range: %+v", *c)
	}
	return nil
}

// human formats a byte count with a binary unit.
func human(b float64) string {
	switch {
	case b >= 1<<40:
		return fmt.Sprintf("%.1f TiB", b/(1<<40))
	case b >= 1<<30:
		return fmt.Sprintf("%.1f GiB", b/(1<<30))
	case b >= 1<<20:
		return fmt.Sprintf("%.0f MiB", b/(1<<20))
	default:
		return fmt.Sprintf("%.0f KiB", b/(1<<10))
	}
}

// prefillTokPerS is one GPU's prefill throughput for a chunk after S: the
// FLOPs per token averaged over the chunk (attention context S + i for
// token i), at MFU × peak.
func (c *CapacityConfig) prefillTokPerS(m CapacityModel, g CapacityGPU) float64 {
	avgCtx := float64(c.PrefixTok) + float64(c.ChunkTokens)/2
	return c.MFU * g.TFLOPS * 1e12 / m.PrefillFLOPsPerToken(avgCtx)
}

// CapacityTables computes the capacity model's tables.
func CapacityTables(c CapacityConfig) ([]Table, error) {
	if err := c.validate(); err != nil {
		return nil, err
	}
	chunk := float64(c.ChunkTokens)

	kv := Table{Title: "KV bytes per token and per chunk",
		Header: []string{"model", "KV dtype", "bytes / token", "KiB / token", fmt.Sprintf("chunk of %d tokens", c.ChunkTokens)}}
	store := Table{Title: fmt.Sprintf("Store size for %.0f chunks of %d tokens", c.Chunks, c.ChunkTokens),
		Header: []string{"model", "KV dtype", "blobs (one copy)", fmt.Sprintf("with %d replica(s)", c.Replicas),
			fmt.Sprintf("shards of %.0f GiB", c.ShardMemGiB)}}
	for _, m := range c.Models {
		for _, d := range c.DTypes {
			pt := m.KVBytesPerToken(d.Bytes)
			kv.Rows = append(kv.Rows, []string{m.Name, d.Name, f(pt, 0), f(pt/1024, 0), human(pt * chunk)})
			one := pt * chunk * c.Chunks
			store.Rows = append(store.Rows, []string{m.Name, d.Name, human(one), human(one * float64(1+c.Replicas)),
				f(math.Ceil(one/(c.ShardMemGiB*(1<<30))), 0)})
		}
	}
	store.Notes = []string{"Blob headers (kvstore.HeaderSize, 128 bytes a blob) are left out; Redis's own per-key overhead (under 100 bytes) is negligible next to MiB-sized values. " +
		"Shards: masters needed to hold one copy; each has its replicas on top."}

	be := Table{Title: fmt.Sprintf("Load beats recompute above this bandwidth (chunk of %d tokens after %d tokens of S, MFU %.0f%%)", c.ChunkTokens, c.PrefixTok, c.MFU*100),
		Header: []string{"model", "GPU", "prefill tok/s (1 GPU)", "recompute ms / chunk", "break-even f16 GB/s", "break-even 8-bit GB/s"}}
	for _, m := range c.Models {
		for _, g := range c.GPUs {
			tps := c.prefillTokPerS(m, g)
			be.Rows = append(be.Rows, []string{m.Name, g.Name, f(tps, 0), f(chunk/tps*1e3, 1),
				f(m.KVBytesPerToken(2)*tps/1e9, 2), f(m.KVBytesPerToken(1)*tps/1e9, 2)})
		}
	}
	be.Notes = []string{"Break-even = KV bytes per token × prefill tokens per second: a link faster than this delivers a chunk's KV sooner than one GPU computes it. " +
		"A model sharded over n GPUs (tensor parallel) prefills about n times faster, so its break-even bandwidth is about n times higher per replica."}
	if len(c.Models) >= 2 {
		a, b := c.Models[0], c.Models[len(c.Models)-1]
		be.Notes[0] += fmt.Sprintf(" GQA makes %s cheaper to load relative to computing than %s: %.1fx the KV per token for %.1fx the parameters.",
			b.Name, a.Name, b.KVBytesPerToken(2)/a.KVBytesPerToken(2), b.Params/a.Params)
	}

	m0, g0 := c.Models[0], c.GPUs[len(c.GPUs)-1]
	blob := m0.KVBytesPerToken(2) * chunk
	tps := c.prefillTokPerS(m0, g0)
	plan := Table{Title: fmt.Sprintf("Sidecars and shards per request rate (%s, f16 KV, %s sidecars)", m0.Name, g0.Name),
		Header: []string{"requests / s", "store reads GB/s", "shards (bandwidth)", "shards (memory)", "shards", "sidecars (network)", "sidecars (GPU)", "sidecars"}}
	for _, r := range c.Rates {
		lookups := r * float64(c.ChunksPerReq)
		readBps := lookups * c.HitRate * blob
		shBW := math.Ceil(readBps / (c.ShardGBps * 1e9))
		shMem := math.Ceil(c.WorkingSet * blob / (c.ShardMemGiB * (1 << 30)))
		// GPU work per request on the sidecar: the recomputed share of the
		// hit chunks' tokens, and every token of the missed chunks.
		tok := float64(c.ChunksPerReq) * chunk * (c.HitRate*c.Ratio + (1 - c.HitRate))
		scNet := math.Ceil(readBps / (c.SidecarGBps * 1e9))
		scGPU := math.Ceil(r * tok / tps)
		plan.Rows = append(plan.Rows, []string{f(r, 0), f(readBps/1e9, 1), f(shBW, 0), f(shMem, 0), f(max(shBW, shMem), 0),
			f(scNet, 0), f(scGPU, 0), f(max(scNet, scGPU), 0)})
	}
	plan.Notes = []string{fmt.Sprintf("Per request: %d chunks looked up, %.0f%% hits (each a %s blob read), the FusionRAG ratio %.2f of the hit chunks' tokens and "+
		"every token of the missed chunks recomputed on the sidecar's GPU at the rate above. Shards are masters (each with %d replica(s)); "+
		"by bandwidth at %.2f GB/s each, by memory for a working set of %.0f chunks at %.0f GiB each. Sidecars: by network at %.2f GB/s each, "+
		"by GPU time. Reads are spread evenly over the shards (chunks hash over the slots, and a blob's 2 MiB parts over the shards).",
		c.ChunksPerReq, c.HitRate*100, human(blob), c.Ratio, c.Replicas, c.ShardGBps, c.WorkingSet, c.ShardMemGiB, c.SidecarGBps)}
	return []Table{kv, store, be, plan}, nil
}

// CapacityInputs lists every input figure with its source, as a table.
func CapacityInputs(c CapacityConfig) Table {
	t := Table{Title: "Inputs and where they come from", Header: []string{"input", "value", "source"}}
	for _, m := range c.Models {
		t.Rows = append(t.Rows, []string{m.Name + " shape", fmt.Sprintf("%d layers, %d KV heads × %d, d_model %d, %.3g parameters", m.Layers, m.KVHeads, m.HeadDim, m.DModel, m.Params), m.Source})
	}
	for _, g := range c.GPUs {
		t.Rows = append(t.Rows, []string{g.Name, fmt.Sprintf("%.0f TFLOPS", g.TFLOPS), g.Source})
	}
	var dt []string
	for _, d := range c.DTypes {
		dt = append(dt, fmt.Sprintf("%s %.0f B", d.Name, d.Bytes))
	}
	t.Rows = append(t.Rows,
		[]string{"KV element sizes", strings.Join(dt, ", "), "IEEE half / bfloat16; 8-bit KV (FP8 or int8) ignoring its per-block scales"},
		[]string{"prefill FLOPs / token", "2·N + 4·layers·d_model·context", "Kaplan et al. 2020 (arXiv 2001.08361), Table 1"},
		[]string{"MFU", f(c.MFU, 2), "assumption: share of peak a prefill reaches in a serving engine; scale the break-even column with it"},
		[]string{"chunk", fmt.Sprintf("%d tokens after %d tokens of S", c.ChunkTokens, c.PrefixTok), "assumption (issue 21's 256-token chunk)"},
		[]string{"chunks per request", fmt.Sprint(c.ChunksPerReq), "assumption: top-10 retrieval"},
		[]string{"hit rate", f(c.HitRate, 2), "assumption: a warm store"},
		[]string{"recompute ratio", f(c.Ratio, 2), "FusionRAG's default (arXiv 2601.12904), this project's default ratio"},
		[]string{"shard bandwidth", fmt.Sprintf("%.2f GB/s", c.ShardGBps), "assumption: 25 GbE at 80% (a single-threaded redis-server is near this; see the measured figure)"},
		[]string{"shard memory", fmt.Sprintf("%.0f GiB", c.ShardMemGiB), "assumption: a 256 GiB node less headroom"},
		[]string{"sidecar bandwidth", fmt.Sprintf("%.2f GB/s", c.SidecarGBps), "assumption: 100 GbE at 80%"},
		[]string{"replicas", fmt.Sprint(c.Replicas), "the tested topology (3 masters, 3 replicas)"},
		[]string{"working set", fmt.Sprintf("%.0f chunks", c.WorkingSet), "assumption: the hot chunks sized into memory"},
	)
	return t
}

// CapacityMarkdown renders the inputs and the tables.
func CapacityMarkdown(c CapacityConfig) (string, error) {
	tabs, err := CapacityTables(c)
	if err != nil {
		return "", err
	}
	var b bytes.Buffer
	all := append([]Table{CapacityInputs(c)}, tabs...)
	for i, t := range all {
		if i > 0 {
			b.WriteString("\n")
		}
		if err := t.WriteMarkdown(&b); err != nil {
			return "", err
		}
	}
	return b.String(), nil
}

// Capacity markers delimit the generated block of docs/scale.md.
const (
	CapacityBegin = "<!-- capacity:begin (generated by fusionrag bench capacity --update docs/scale.md: do not edit) -->"
	CapacityEnd   = "<!-- capacity:end -->"
)

// ReplaceCapacity returns doc with the block between the capacity markers
// replaced by block.
func ReplaceCapacity(doc, block string) (string, error) {
	i := strings.Index(doc, CapacityBegin)
	j := strings.Index(doc, CapacityEnd)
	if i < 0 || j < i {
		return "", errors.New("bench: no capacity markers in the document")
	}
	return doc[:i+len(CapacityBegin)] + "\n\n" + strings.TrimSpace(block) + "\n\n" + doc[j:], nil
}
