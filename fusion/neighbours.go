package fusion

import (
	"context"
	"math/rand/v2"
	"slices"
)

// Random is a control Neighbourer: n other chunks drawn uniformly at random
// (seeded, so deterministic). Fused KV built on it measures how much of the
// gain of fusion comes from a chunk merely not sitting right after S, as
// opposed to related content.
type Random struct {
	// Seed makes the draw reproducible.
	Seed uint64
}

// Name implements Neighbourer.
func (Random) Name() string { return "random" }

// Neighbours implements Neighbourer.
func (r Random) Neighbours(ctx context.Context, chunks []Chunk, n int) ([][]int, error) {
	rng := rand.New(rand.NewPCG(r.Seed, 0x6e65696768))
	out := make([][]int, len(chunks))
	for i := range chunks {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		k := min(n, len(chunks)-1)
		pick := make([]int, 0, k)
		for len(pick) < k {
			j := rng.IntN(len(chunks))
			if j != i && !slices.Contains(pick, j) {
				pick = append(pick, j)
			}
		}
		out[i] = pick
	}
	return out, nil
}

// CoRetrieved is an oracle Neighbourer for evaluation: a chunk's neighbours
// are the chunks retrieved together with it (Groups, e.g. the passages of
// each question), the ones it shares most groups with first, ties by index.
// It tells what fusion could gain if similarity found exactly the chunks
// that end up in the same prompts.
type CoRetrieved struct {
	// Groups are sets of chunk indices retrieved together.
	Groups [][]int
}

// Name implements Neighbourer.
func (CoRetrieved) Name() string { return "coretrieved" }

// Neighbours implements Neighbourer.
func (c CoRetrieved) Neighbours(ctx context.Context, chunks []Chunk, n int) ([][]int, error) {
	count := make([]map[int]int, len(chunks))
	for _, g := range c.Groups {
		for _, i := range g {
			if i < 0 || i >= len(chunks) {
				continue
			}
			for _, j := range g {
				if j != i && j >= 0 && j < len(chunks) {
					if count[i] == nil {
						count[i] = map[int]int{}
					}
					count[i][j]++
				}
			}
		}
	}
	out := make([][]int, len(chunks))
	for i, m := range count {
		var js []int
		for j := range m {
			js = append(js, j)
		}
		slices.SortFunc(js, func(a, b int) int {
			if m[a] != m[b] {
				return m[b] - m[a]
			}
			return a - b
		})
		out[i] = js[:min(n, len(js))]
	}
	return out, ctx.Err()
}

// CoRetrievalShare is a neighbour-quality statistic: the share of stored
// neighbours (nb[i] for chunk i) that were retrieved together with their
// chunk in at least one of groups. 0 when there are no neighbours. Fusion
// can only help a prompt through neighbours that are its other chunks.
func CoRetrievalShare(nb [][]int, groups [][]int) float64 {
	with := make([]map[int]bool, len(nb))
	for _, g := range groups {
		for _, i := range g {
			if i < 0 || i >= len(nb) {
				continue
			}
			if with[i] == nil {
				with[i] = map[int]bool{}
			}
			for _, j := range g {
				with[i][j] = true
			}
		}
	}
	var hit, all int
	for i, js := range nb {
		for _, j := range js {
			all++
			if with[i][j] {
				hit++
			}
		}
	}
	if all == 0 {
		return 0
	}
	return float64(hit) / float64(all)
}
