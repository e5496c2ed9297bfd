package main

import (
	"fmt"
	"os"

	"github.com/fusionrag/fusionrag/bench"
)

func init() {
	registerBench("capacity", "capacity model: KV bytes per chunk, store size, load-vs-recompute bandwidth, sidecars and shards per request rate", benchCapacity)
}

func benchCapacity(args []string) error {
	fs := newFlagSet("bench capacity")
	c := bench.DefaultCapacity()
	update := fs.String("update", "", "rewrite the generated block of this Markdown file (docs/scale.md) instead of printing")
	fs.IntVar(&c.ChunkTokens, "chunk-tokens", c.ChunkTokens, "tokens per chunk")
	fs.IntVar(&c.ChunksPerReq, "chunks", c.ChunksPerReq, "retrieved chunks per request")
	// Percents, as every other harness's --ratio and the demo's.
	mfu := fs.Float64("mfu", c.MFU*100, "share of the GPU's peak FLOP/s a prefill reaches, percent")
	hitRate := fs.Float64("hit-rate", c.HitRate*100, "chunk lookups that hit, percent")
	ratio := fs.Float64("ratio", c.Ratio*100, "context tokens recomputed, percent")
	fs.Float64Var(&c.ShardGBps, "shard-gbps", c.ShardGBps, "usable network GB/s of one shard")
	fs.Float64Var(&c.ShardMemGiB, "shard-gib", c.ShardMemGiB, "usable memory GiB of one shard")
	fs.Float64Var(&c.SidecarGBps, "sidecar-gbps", c.SidecarGBps, "usable network GB/s of one sidecar")
	fs.Float64Var(&c.WorkingSet, "working-set", c.WorkingSet, "hot chunks to hold in memory")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	c.MFU, c.HitRate, c.Ratio = *mfu/100, *hitRate/100, *ratio/100
	md, err := bench.CapacityMarkdown(c)
	if err != nil {
		return err
	}
	if *update == "" {
		fmt.Print(md)
		return nil
	}
	doc, err := os.ReadFile(*update)
	if err != nil {
		return err
	}
	out, err := bench.ReplaceCapacity(string(doc), md)
	if err != nil {
		return fmt.Errorf("bench capacity: %s: %w", *update, err)
	}
	return os.WriteFile(*update, []byte(out), 0o644)
}
