package fingerprint

import (
	"errors"
	"flag"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fusionrag/fusionrag/internal/golden"
	"github.com/google/go-cmp/cmp"
)

var update = flag.Bool("update", false, "rewrite golden files under testdata/")

func testNS() Namespace {
	return Namespace{
		Model:     ModelFingerprint([]byte(`{"dim":64}`), []WeightFile{{Name: "w.bin", Size: 1024, Digest: []byte{1, 2, 3}}}),
		Tokenizer: TokenizerFingerprint([]byte("tok512")),
		Tenant:    "acme",
		Variant:   VariantFused,
		Params:    Params(map[string]string{"n": "10", "sim": "bm25"}),
	}
}

func seq(n int, start int32) []int32 {
	t := make([]int32, n)
	for i := range t {
		t[i] = start + int32(i)*7919%32000
	}
	return t
}

// TestGolden pins the key derivation: stored caches survive upgrades only
// while these values do not change. Run with -update after an intended change
// (and bump the domain tags' version).
func TestGolden(t *testing.T) {
	ns := testNS()
	toks := seq(37, 1)
	var b strings.Builder
	fmt.Fprintf(&b, "seed %s\n", ns.Seed())
	fmt.Fprintf(&b, "chunk %s\n", ChunkKey(ns, toks))
	bk, err := BlockKeys(ns, toks, 16)
	if err != nil {
		t.Fatal(err)
	}
	for i, k := range bk {
		fmt.Fprintf(&b, "block[%d] %s\n", i, k)
	}
	for _, n := range []int{1, 16, 37} {
		k, err := PrefixKey(ns, toks, n, 16)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&b, "prefix[%d] %s\n", n, k)
	}
	fmt.Fprintf(&b, "check %s\n", CheckOf(toks))
	golden.Text(t, filepath.Join("testdata", "keys.golden"), b.String(), *update, "keys changed")
}

// TestNamespaceIsolation: changing any namespace field changes every key.
func TestNamespaceIsolation(t *testing.T) {
	base := testNS()
	toks := seq(40, 3)
	tests := []struct {
		name   string
		modify func(*Namespace)
	}{
		{"model", func(ns *Namespace) { ns.Model[0] ^= 1 }},
		{"tokenizer", func(ns *Namespace) { ns.Tokenizer[15] ^= 1 }},
		{"tenant", func(ns *Namespace) { ns.Tenant = "other" }},
		{"empty tenant", func(ns *Namespace) { ns.Tenant = "" }},
		{"variant", func(ns *Namespace) { ns.Variant = VariantRaw }},
		{"params", func(ns *Namespace) { ns.Params = "n=9;sim=bm25" }},
		// Length prefixes keep field boundaries fixed.
		{"shift tenant into params", func(ns *Namespace) { ns.Tenant, ns.Params = "acmen", "=10;sim=bm25" }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ns := base
			tc.modify(&ns)
			if ns.Seed() == base.Seed() {
				t.Errorf("seed unchanged")
			}
			if ChunkKey(ns, toks) == ChunkKey(base, toks) {
				t.Errorf("chunk key unchanged")
			}
			a, _ := BlockKeys(ns, toks, 8)
			b, _ := BlockKeys(base, toks, 8)
			for i := range a {
				if a[i] == b[i] {
					t.Errorf("block key %d unchanged", i)
				}
			}
		})
	}
}

func TestValidate(t *testing.T) {
	if err := testNS().Validate(); err != nil {
		t.Fatal(err)
	}
	ns := testNS()
	ns.Model = Key{}
	if err := ns.Validate(); !errors.Is(err, ErrNoModel) {
		t.Errorf("no model: got %v", err)
	}
	ns = testNS()
	ns.Variant = 0
	if err := ns.Validate(); !errors.Is(err, ErrNoVariant) {
		t.Errorf("no variant: got %v", err)
	}
}

// TestBlockChain: block key i depends on exactly the prefix [0, (i+1)*B).
func TestBlockChain(t *testing.T) {
	ns := testNS()
	const B = 8
	toks := seq(5*B+3, 11)
	base, err := BlockKeys(ns, toks, B)
	if err != nil {
		t.Fatal(err)
	}
	if len(base) != 5 {
		t.Fatalf("got %d block keys, want 5", len(base))
	}
	// A longer sequence with the same prefix shares the prefix's keys.
	longer, _ := BlockKeys(ns, append(append([]int32{}, toks...), seq(20, 99)...), B)
	if diff := cmp.Diff(base, longer[:len(base)]); diff != "" {
		t.Errorf("prefix keys differ (-short +long):\n%s", diff)
	}
	for j := range toks {
		mod := append([]int32{}, toks...)
		mod[j]++
		got, _ := BlockKeys(ns, mod, B)
		for i := range got {
			changed := got[i] != base[i]
			if want := i >= j/B; changed != want {
				t.Errorf("token %d changed: block %d changed=%v, want %v", j, i, changed, want)
			}
		}
	}
	if _, err := BlockKeys(ns, toks, 0); !errors.Is(err, ErrBlockSize) {
		t.Errorf("block size 0: got %v", err)
	}
}

func TestPrefixKey(t *testing.T) {
	ns := testNS()
	const B = 4
	toks := seq(13, 5)
	blocks, _ := BlockKeys(ns, toks, B)
	seen := map[Key]int{}
	for n := 1; n <= len(toks); n++ {
		k, err := PrefixKey(ns, toks, n, B)
		if err != nil {
			t.Fatal(err)
		}
		if m, dup := seen[k]; dup {
			t.Errorf("prefix %d and %d share key", n, m)
		}
		seen[k] = n
		for i, bk := range blocks {
			if k == bk {
				t.Errorf("prefix %d equals block key %d", n, i)
			}
		}
		// The key depends only on [0, n): extra tokens do not change it.
		k2, _ := PrefixKey(ns, append(append([]int32{}, toks[:n]...), 1, 2, 3), n, B)
		if k2 != k {
			t.Errorf("prefix %d depends on tokens past n", n)
		}
	}
	for _, n := range []int{0, -1, len(toks) + 1} {
		if _, err := PrefixKey(ns, toks, n, B); !errors.Is(err, ErrPrefixLength) {
			t.Errorf("n=%d: got %v, want ErrPrefixLength", n, err)
		}
	}
	if _, err := PrefixKey(ns, toks, 3, 0); !errors.Is(err, ErrBlockSize) {
		t.Errorf("block size 0: got %v", err)
	}
}

// TestLookup: the probes are the protocol's order and agree with PrefixKey,
// BlockKeys and CheckOf computed independently.
func TestLookup(t *testing.T) {
	ns := testNS()
	tests := []struct {
		L, B    int
		wantLen []int
	}{
		{L: 10, B: 4, wantLen: []int{10, 9, 8, 4}},
		{L: 9, B: 4, wantLen: []int{9, 8, 8, 4}},
		{L: 8, B: 4, wantLen: []int{8, 7, 8, 4}},
		{L: 3, B: 4, wantLen: []int{3, 2}},
		{L: 1, B: 4, wantLen: []int{1}},
		{L: 5, B: 1, wantLen: []int{5, 4, 5, 4, 3, 2, 1}},
		{L: 0, B: 4, wantLen: nil},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprintf("L%d_B%d", tc.L, tc.B), func(t *testing.T) {
			toks := seq(tc.L, 2)
			probes, err := Lookup(ns, toks, tc.B)
			if err != nil {
				t.Fatal(err)
			}
			var lens []int
			for _, p := range probes {
				lens = append(lens, p.Len)
			}
			if diff := cmp.Diff(tc.wantLen, lens); diff != "" {
				t.Fatalf("probe lengths (-want +got):\n%s", diff)
			}
			blocks, _ := BlockKeys(ns, toks, tc.B)
			for _, p := range probes {
				var want Key
				if p.Exact {
					want, _ = PrefixKey(ns, toks, p.Len, tc.B)
				} else {
					want = blocks[p.Len/tc.B-1]
				}
				if p.Key != want {
					t.Errorf("probe len %d exact=%v: key %s, want %s", p.Len, p.Exact, p.Key, want)
				}
				if wc := CheckOf(toks[:p.Len]); p.Check != wc {
					t.Errorf("probe len %d: check %s, want %s", p.Len, p.Check, wc)
				}
			}
		})
	}
}

func TestCheckAndVerify(t *testing.T) {
	a := seq(20, 1)
	b := append([]int32{}, a...)
	b[19] = -1 // negative ids hash as their uint32 bit pattern
	ca, cb := CheckOf(a), CheckOf(b)
	if ca == cb {
		t.Fatal("checks of different tokens agree")
	}
	if CheckOf(a[:19]).Tokens != 19 {
		t.Error("token count wrong")
	}
	k := ChunkKey(testNS(), a)
	if err := Verify(k, ca, ca); err != nil {
		t.Errorf("match: %v", err)
	}
	err := Verify(k, ca, cb)
	var ce *CollisionError
	if !errors.As(err, &ce) || ce.Key != k || ce.Stored != ca || ce.Want != cb {
		t.Errorf("mismatch: got %v", err)
	}
	// FNV-1a reference value of the empty input is the offset basis.
	if got := CheckOf(nil); got != (Check{0, fnvOffset}) {
		t.Errorf("empty check %v", got)
	}
}

func TestModelFingerprint(t *testing.T) {
	w := []WeightFile{{"a", 1, []byte{1}}, {"b", 2, []byte{2}}}
	rev := []WeightFile{w[1], w[0]}
	if ModelFingerprint([]byte("c"), w) != ModelFingerprint([]byte("c"), rev) {
		t.Error("manifest order changes the fingerprint")
	}
	variants := map[string]Key{
		"base":   ModelFingerprint([]byte("c"), w),
		"config": ModelFingerprint([]byte("d"), w),
		"size":   ModelFingerprint([]byte("c"), []WeightFile{{"a", 3, []byte{1}}, w[1]}),
		"digest": ModelFingerprint([]byte("c"), []WeightFile{{"a", 1, []byte{9}}, w[1]}),
		"name":   ModelFingerprint([]byte("c"), []WeightFile{{"a2", 1, []byte{1}}, w[1]}),
		"fewer":  ModelFingerprint([]byte("c"), w[:1]),
		"tok":    TokenizerFingerprint([]byte("c")),
	}
	seen := map[Key]string{}
	for name, k := range variants {
		if other, dup := seen[k]; dup {
			t.Errorf("%s and %s share a fingerprint", name, other)
		}
		seen[k] = name
	}
}

func TestParseKeyAndVariant(t *testing.T) {
	k := ChunkKey(testNS(), seq(3, 1))
	got, err := ParseKey(k.String())
	if err != nil || got != k {
		t.Errorf("round trip: %v %v", got, err)
	}
	for _, bad := range []string{"", "abc", strings.Repeat("g", 32), strings.Repeat("0", 33)} {
		if _, err := ParseKey(bad); !errors.Is(err, ErrBadKey) {
			t.Errorf("ParseKey(%q): got %v", bad, err)
		}
	}
	for _, v := range []Variant{VariantRaw, VariantFused, VariantPrompt} {
		got, err := ParseVariant(v.String())
		if err != nil || got != v {
			t.Errorf("variant %v: %v %v", v, got, err)
		}
	}
	if _, err := ParseVariant("blend"); err == nil {
		t.Error("unknown variant accepted")
	}
}

func FuzzParseKey(f *testing.F) {
	f.Add("00112233445566778899aabbccddeeff")
	f.Add("")
	f.Add("zz")
	f.Fuzz(func(t *testing.T, s string) {
		k, err := ParseKey(s)
		if err != nil {
			return
		}
		if !strings.EqualFold(k.String(), s) {
			t.Fatalf("ParseKey(%q).String() = %q", s, k.String())
		}
	})
}

func BenchmarkLookup(b *testing.B) {
	ns := testNS()
	toks := seq(8192, 1)
	b.SetBytes(int64(4 * len(toks)))
	for b.Loop() {
		if _, err := Lookup(ns, toks, 16); err != nil {
			b.Fatal(err)
		}
	}
}
