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
	fs.Float64Var(&c.MFU, "mfu", c.MFU, "share of the GPU's peak a prefill reaches")
	fs.IntVar(&c.ChunkTokens, "chunk-tokens", c.ChunkTokens, "tokens per chunk")
	fs.IntVar(&c.ChunksPerReq, "chunks", c.ChunksPerReq, "retrieved chunks per request")
	fs.Float64Var(&c.HitRate, "hit-rate", c.HitRate, "share of chunk lookups that hit")
	fs.Float64Var(&c.Ratio, "ratio", c.Ratio, "share of context tokens recomputed")
	fs.Float64Var(&c.ShardGBps, "shard-gbps", c.ShardGBps, "usable network GB/s of one shard")
	fs.Float64Var(&c.ShardMemGiB, "shard-gib", c.ShardMemGiB, "usable memory GiB of one shard")
	fs.Float64Var(&c.SidecarGBps, "sidecar-gbps", c.SidecarGBps, "usable network GB/s of one sidecar")
	fs.Float64Var(&c.WorkingSet, "working-set", c.WorkingSet, "hot chunks to hold in memory")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
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
