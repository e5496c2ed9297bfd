package fingerprint

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fusionrag/fusionrag/internal/golden"
)

// The inputs of TestNamespaceGolden: stories260K's model and tokenizer
// fingerprints (any 32-hex model fingerprint and any tokenizer string would
// do; these are the ones the golden values were first computed for).
const (
	goldenModelFP     = "daba8c2ed9bb7af48e9c73e3855a3096"
	goldenTokenizerFP = "8e022b15b21d071b386947146223c2e6f2504e3fbb1f99523e42741fd5bfc525"
)

// TestNamespaceGolden pins every namespace and key built in namespace.go.
// testdata/namespaces.golden was first written by the code these functions
// replaced (fusion.Namespace/Params, recompute.ChunkKey/PrefixKey, the
// proxy's publishNamespace, engine.KVNamespace and KVBlockSize, fusion's
// neighbour record key), so KV
// stored before the move is still found. Run with -update only after an
// intended key change (and bump the domain tags' version).
func TestNamespaceGolden(t *testing.T) {
	var b strings.Builder
	fmt.Fprintf(&b, "model_fp %s\ntokenizer_fp %q\n", goldenModelFP, goldenTokenizerFP)
	prefix := []int32{1, 403, 29871, 13}
	chunk := []int32{13, 13, 6268, 29901, 278, 2998, 3105, 1010, 29889}
	for _, tenant := range []string{"", "0123456789abcdef0123456789abcdef"} {
		for _, np := range []struct {
			n   int
			sim string
		}{{10, "bm25"}, {3, "embed:bge-m3"}, {0, "bm25"}} {
			params := FusionParams(np.n, np.sim)
			ns, err := ChunkNamespace(goldenModelFP, goldenTokenizerFP, tenant, params)
			if err != nil {
				t.Fatal(err)
			}
			fmt.Fprintf(&b, "params n=%d sim=%s %q\n", np.n, np.sim, params)
			fmt.Fprintf(&b, "chunk_ns tenant=%q n=%d sim=%s seed %s\n", tenant, np.n, np.sim, ns.Seed())
			for _, v := range []Variant{VariantRaw, VariantFused} {
				fmt.Fprintf(&b, "chunk_key tenant=%q n=%d sim=%s %s %s\n", tenant, np.n, np.sim, v, ChunkKeyAfter(ns, v, prefix, chunk))
			}
			pk, err := SystemPrefixKey(ns, prefix, BlockSize)
			if err != nil {
				t.Fatal(err)
			}
			fmt.Fprintf(&b, "prefix_key tenant=%q n=%d sim=%s %s\n", tenant, np.n, np.sim, pk)
			for _, sr := range []struct {
				s string
				r float64
			}{{"fusionrag", 0.15}, {"reuse", 0}, {"cacheblend", 0.3}} {
				fmt.Fprintf(&b, "publish tenant=%q n=%d sim=%s %s %v %s\n", tenant, np.n, np.sim, sr.s, sr.r,
					PublishNamespace(tenant, params, sr.s, sr.r))
			}
		}
	}
	for _, pns := range []string{"beef", "bb02", "00ff00ff"} {
		kns := KVNamespace(goldenModelFP, goldenTokenizerFP, pns)
		k, err := PrefixKey(kns, append(prefix, chunk...), 13, BlockSize)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&b, "kv_ns %s seed %s prefix13 %s\n", pns, kns.Seed(), k)
		kns = KVNamespace("not-hex-model", "plain tokenizer fp", pns)
		fmt.Fprintf(&b, "kv_ns_nonhex %s seed %s\n", pns, kns.Seed())
	}
	fmt.Fprintf(&b, "block_size %d\n", BlockSize)
	for _, tenant := range []string{"", "0123456789abcdef0123456789abcdef"} {
		ns, err := ChunkNamespace(goldenModelFP, goldenTokenizerFP, tenant, FusionParams(10, "bm25"))
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&b, "record_key tenant=%q n=10 sim=bm25 %s\n", tenant, NeighbourRecordKey(ns, prefix, chunk))
	}
	golden.Text(t, filepath.Join("testdata", "namespaces.golden"), b.String(), *update, "namespaces or keys changed")
}

func TestChunkNamespaceErrors(t *testing.T) {
	tests := []struct {
		name, modelFP, tokFP string
		wantErr              bool
		wantZeroTok          bool
	}{
		{"ok", goldenModelFP, goldenTokenizerFP, false, false},
		{"no tokenizer", goldenModelFP, "", false, true},
		{"model not hex", "model", goldenTokenizerFP, true, false},
		{"model short", "daba8c", goldenTokenizerFP, true, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ns, err := ChunkNamespace(tt.modelFP, tt.tokFP, "t", "p")
			if (err != nil) != tt.wantErr {
				t.Fatalf("ChunkNamespace error = %v, want error %v", err, tt.wantErr)
			}
			if err == nil && ns.Tokenizer.IsZero() != tt.wantZeroTok {
				t.Errorf("Tokenizer zero = %v, want %v", ns.Tokenizer.IsZero(), tt.wantZeroTok)
			}
		})
	}
}

func TestValidKVNamespace(t *testing.T) {
	for _, tt := range []struct {
		ns   string
		want bool
	}{
		{"beef", true}, {"BEEF", true}, {"", false}, {"abc", false}, {"zz", false},
		{strings.Repeat("ab", 64), true}, {strings.Repeat("ab", 65), false},
	} {
		if got := ValidKVNamespace(tt.ns); got != tt.want {
			t.Errorf("ValidKVNamespace(%q) = %v, want %v", tt.ns, got, tt.want)
		}
	}
}
