package fusion

import (
	"context"
	"testing"

	"github.com/fusionrag/fusionrag/chunkkv"
	"github.com/fusionrag/fusionrag/fingerprint"
	"github.com/fusionrag/fusionrag/internal/modeltest"
	"github.com/fusionrag/fusionrag/recompute"
)

// The serving side's contract, end to end: a prompt built by concatenating
// EncodePrefix(S), the chunks' Template.Tokens and EncodeSegment(question),
// reprocessed by recompute with this package's Namespace, finds every
// chunk's fused KV (and the raw KV when asked for raw). The distance of the
// reused prompt's last logits to a full prefill's is logged for both, not
// asserted: on a 260K-parameter model it measures, it does not prove.
func TestServingFindsFusedKV(t *testing.T) {
	m := modeltest.Stories(t)
	ctx := context.Background()
	st := openStore(t, "mem://")
	system := "Read the stories."
	S := EncodePrefix(m.Tokenizer, system)
	chunks := chunksOf(t, m, storyDocs(), 32, 0)
	in := newIngester(t, Config{Model: m, Store: st, Prefix: S, Neighbours: 3})
	if _, err := in.Run(ctx, chunks); err != nil {
		t.Fatal(err)
	}
	dist := map[fingerprint.Variant]float64{}
	var full []float32
	for _, variant := range []fingerprint.Variant{fingerprint.VariantFused, fingerprint.VariantRaw} {
		ns, err := chunkNamespace(m, "", fingerprint.FusionParams(3, "bm25"))
		if err != nil {
			t.Fatal(err)
		}
		rp, err := recompute.New(recompute.Config{Model: m, Source: &chunkkv.Store{Store: st}, Namespace: ns,
			Variant: variant, NoStoreBack: true})
		if err != nil {
			t.Fatal(err)
		}
		req := recompute.Request{Prefix: S, Question: EncodeSegment(m.Tokenizer, "\nWho had a red ball?"), Strategy: "reuse"}
		for _, i := range []int{0, 2, 4} {
			req.Chunks = append(req.Chunks, chunks[i].Tokens)
		}
		res, err := rp.Run(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		r := res.Record
		// The first chunk is served raw (exact right after S), the others fused.
		wantFused, wantRaw := 2, 1
		if variant == fingerprint.VariantRaw {
			wantFused, wantRaw = 0, 3
		}
		if full == nil {
			req.Strategy = "full"
			fr, err := rp.Run(ctx, req)
			if err != nil {
				t.Fatal(err)
			}
			full = fr.LastLogits
		}
		for k, x := range res.LastLogits {
			d := float64(x - full[k])
			dist[variant] += d * d
		}
		if r.FusedHits != wantFused || r.RawHits != wantRaw || r.Misses != 0 || r.ExactChunks != 1 {
			t.Errorf("%v lookup: fused hits %d, raw hits %d, misses %d, exact chunks %d; want %d, %d, 0, 1", variant, r.FusedHits, r.RawHits, r.Misses, r.ExactChunks, wantFused, wantRaw)
		}
		if variant == fingerprint.VariantFused { // the ablation: every chunk fused, none exact
			ab, err := recompute.New(recompute.Config{Model: m, Source: &chunkkv.Store{Store: st}, Namespace: ns,
				Variant: variant, NoStoreBack: true, FirstChunkFused: true})
			if err != nil {
				t.Fatal(err)
			}
			req.Strategy = "reuse"
			res, err := ab.Run(ctx, req)
			if err != nil {
				t.Fatal(err)
			}
			if r := res.Record; r.FusedHits != 3 || r.RawHits != 0 || r.ExactChunks != 0 {
				t.Errorf("FirstChunkFused: fused hits %d, raw hits %d, exact chunks %d; want 3, 0, 0", r.FusedHits, r.RawHits, r.ExactChunks)
			}
		}
	}
	t.Logf("reuse without recompute, squared L2 distance of the last logits to a full prefill: fused KV %.3g, raw KV %.3g",
		dist[fingerprint.VariantFused], dist[fingerprint.VariantRaw])
}
