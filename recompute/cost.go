package recompute

import (
	"sort"

	"github.com/fusionrag/fusionrag/model"
)

// Cost counts floating-point operations (a multiply-add is 2) of forward
// passes, split by kind. It is what a method must compute, independent of the
// machine: FLOPs(full) / FLOPs(method) is the speedup limit of a method.
type Cost struct {
	// GEMM: the projections and the feed-forward network, per token and
	// layer 2 × (Dim·QDim + 2·Dim·KVDim + QDim·Dim + 3·Dim·HiddenDim).
	GEMM float64 `json:"gemm"`
	// Attention: per query, layer and visible key 4 × Heads × HeadDim
	// (q·k and the weighted sum of v).
	Attention float64 `json:"attention"`
	// Logits: 2 × Dim × Vocab per logits row.
	Logits float64 `json:"logits"`
}

// Total is the sum of the parts.
func (c Cost) Total() float64 { return c.GEMM + c.Attention + c.Logits }

// Add returns c + o.
func (c Cost) Add(o Cost) Cost {
	return Cost{GEMM: c.GEMM + o.GEMM, Attention: c.Attention + o.Attention, Logits: c.Logits + o.Logits}
}

// gemmPerTokenLayer is the GEMM FLOPs of one token through one layer.
func gemmPerTokenLayer(c model.Config) float64 {
	d, q, kv, h := float64(c.Dim), float64(c.QDim()), float64(c.KVDim()), float64(c.HiddenDim)
	return 2 * (d*q + 2*d*kv + q*d + 3*d*h)
}

// PassCost is the cost of running batch positions pos through layers layers
// against a cache holding cachePos (sorted ascending; nil for none), with
// logitsRows rows of logits. A query at position p sees the cache entries at
// positions <= p that no batch token shadows, and the batch tokens at
// positions <= p, the model's attention rule. pos must be sorted ascending.
func PassCost(c model.Config, cachePos, pos []int32, layers, logitsRows int) Cost {
	n := len(pos)
	var keys float64
	shadowed := 0 // batch tokens so far whose position the cache also holds
	for i, p := range pos {
		ci := sort.Search(len(cachePos), func(j int) bool { return cachePos[j] > p })
		if j := sort.Search(len(cachePos), func(j int) bool { return cachePos[j] >= p }); j < len(cachePos) && cachePos[j] == p {
			shadowed++
		}
		keys += float64(ci - shadowed + i + 1)
	}
	return Cost{
		GEMM:      float64(n) * float64(layers) * gemmPerTokenLayer(c),
		Attention: keys * float64(layers) * 4 * float64(c.Heads*c.HeadDim),
		Logits:    float64(logitsRows) * 2 * float64(c.Dim) * float64(c.Vocab),
	}
}
