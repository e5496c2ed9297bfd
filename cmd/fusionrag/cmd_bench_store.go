package main

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/fusionrag/fusionrag/internal/redisproc"

	"github.com/fusionrag/fusionrag/bench"
	"github.com/fusionrag/fusionrag/kvstore"
)

func init() {
	registerBench("store", "KV store tiers: put/get bandwidth and get latency per tier, against memcpy", benchStore)
}

func benchStore(args []string) error {
	fs := newFlagSet("bench store")
	var bf benchFlags
	bf.register(fs, "") // no model: the blobs are synthetic
	tiers := fs.String("tiers", "", `store URLs separated by ";" (a "," inside one makes a tiered store); default mem, disk (a temporary directory) and redis`)
	redisURL := fs.String("redis", "auto", `redis tier of the default tiers: "auto" starts a local redis-server on a free port, "off", or a redis:// URL`)
	clusterURL := fs.String("cluster", "auto", `Redis Cluster tiers of the default tiers (its defaults, and spread=0&part=8MiB): "auto" starts a local 3-master, 3-replica cluster, "off", or a redis-cluster:// URL`)
	shapeSet := fs.String("shapes", "scale", `blob shapes: "scale" (100 KiB, then Llama-3-8B fp16 chunks of 1, 8 and 32 MiB) or "default" (Llama-3-8B 512 tokens, 64 MiB, and stories260K)`)
	blobs := fs.Int("blobs", 8, "distinct blobs per shape and tier (--quick: 4)")
	rounds := fs.Int("rounds", 3, "reads of every blob (--quick: 2)")
	quiet := fs.Bool("quiet", false, "no progress bar")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	var shapes []bench.StoreShape
	switch *shapeSet {
	case "scale":
		shapes = bench.ScaleStoreShapes()
		if bf.quick {
			shapes = shapes[:3] // up to 8 MiB
		}
	case "default":
		shapes = bench.DefaultStoreShapes()
	default:
		return fmt.Errorf("bench store: --shapes %q: want scale or default", *shapeSet)
	}
	if bf.quick && *shapeSet == "default" {
		if !flagSet(fs, "blobs") {
			*blobs = 4
		}
		if !flagSet(fs, "rounds") {
			*rounds = 2
		}
		// A 128-token Llama-3-8B chunk (16 MiB) instead of 512 tokens.
		shapes[0].Tokens, shapes[0].Name = 128, "llama3-8b-128tok-fp16"
	}
	var urls []string
	var notes []string
	if *tiers != "" {
		for _, u := range strings.Split(*tiers, ";") {
			if u = strings.TrimSpace(u); u != "" {
				urls = append(urls, u)
			}
		}
	} else {
		dir, err := os.MkdirTemp("", "fusionrag-bench-disk-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		var big int64
		for _, s := range shapes {
			big = max(big, s.Bytes()+kvstore.HeaderSize)
		}
		budget := fmt.Sprintf("%d", 2*int64(*blobs)*big)
		urls = []string{"mem://?max=" + budget, "disk://" + dir + "?max=" + budget}
		switch *redisURL {
		case "off":
			notes = append(notes, "Redis tier not measured (--redis off).")
		case "auto":
			r, err := redisproc.Start(redisproc.Config{Args: []string{"--proto-max-bulk-len", "1gb"}})
			if errors.Is(err, redisproc.ErrNotInstalled) {
				fmt.Fprintln(os.Stderr, "fusionrag bench store: redis-server not installed: the Redis tier is NOT measured")
				notes = append(notes, "Redis tier not measured: redis-server not installed.")
				break
			}
			if err != nil {
				return err
			}
			defer r.Close()
			urls = append(urls, r.URL(0))
			notes = append(notes, "Redis: a local redis-server (persistence off) on a loopback port, started by the benchmark.")
		default:
			urls = append(urls, *redisURL)
		}
		switch *clusterURL {
		case "off":
			notes = append(notes, "Redis Cluster tiers not measured (--cluster off).")
		case "auto":
			c, err := redisproc.StartCluster(redisproc.ClusterConfig{Args: []string{"--proto-max-bulk-len", "1gb"}})
			if errors.Is(err, redisproc.ErrNotInstalled) || errors.Is(err, redisproc.ErrCLINotInstalled) {
				fmt.Fprintf(os.Stderr, "fusionrag bench store: %v: the Redis Cluster tiers are NOT measured\n", err)
				notes = append(notes, "Redis Cluster tiers not measured: "+err.Error())
				break
			}
			if err != nil {
				return err
			}
			defer c.Close()
			urls = append(urls, c.URL(), c.URL()+"?spread=0&part=8MiB")
			notes = append(notes, "Redis Cluster: 3 masters and 3 replicas (redis-server --cluster-enabled yes, redis-cli --cluster create "+
				"--cluster-replicas 1), persistence off, on loopback ports of this machine, started by the benchmark.")
		default:
			sep := "?"
			if strings.Contains(*clusterURL, "?") {
				sep = "&"
			}
			urls = append(urls, *clusterURL, *clusterURL+sep+"spread=0&part=8MiB")
		}
	}
	ctx, stop := benchContext()
	defer stop()
	start := time.Now()
	rows, err := bench.RunStore(ctx, bench.StoreConfig{Tiers: urls, Shapes: shapes, Blobs: *blobs, Rounds: *rounds, Progress: os.Stderr, Quiet: *quiet})
	if err != nil {
		return err
	}
	return bf.write("store", "", []bench.Table{bench.StoreTable(rows, time.Since(start))}, rows, bench.StorePlots(rows), notes...)
}
