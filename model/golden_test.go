package model

import (
	"context"
	"encoding/json"
	"math"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/fusionrag/fusionrag/internal/shareddata"
)

type goldenFile struct {
	Cases []struct {
		Prompt       string      `json:"prompt"`
		PromptTokens []int32     `json:"prompt_tokens"`
		Logits       [][]float64 `json:"logits_per_prompt_position"`
		GreedyTokens []int32     `json:"greedy_tokens"`
		GreedyText   string      `json:"greedy_text"`
	} `json:"cases"`
}

func loadStories(tb testing.TB) *Model {
	tb.Helper()
	p := shareddata.Path(tb, "models/stories260K/stories260K.bin")
	m, err := Load(p, LoadOptions{})
	if err != nil {
		tb.Fatalf("Load(%s): %v", p, err)
	}
	tb.Cleanup(func() { m.Close() })
	return m
}

// greedy decodes up to steps tokens after prompt with Model.Generate and a
// greedy Sampler (prefilled in one pass, then one token per Forward with the
// cache appended), stopping at StopIDs (BOS and EOS for stories260K, as
// llama2.c run.c stops at BOS). The golden tests thereby check the one
// decoder the engine, bench and the CLI share.
func greedy(tb testing.TB, m *Model, prompt []int32, steps int) []int32 {
	tb.Helper()
	out, err := m.Generate(context.Background(), prompt, steps, Greedy(), nil)
	if err != nil {
		tb.Fatal(err)
	}
	return out
}

// TestGoldenStories260K checks the runtime against an independent fp32
// reference and llama2.c run.c: logits at every prompt position within 1e-3
// (the golden file has 5 decimals and both sides accumulate fp32 rounding
// differently), the greedy continuations token for token, and the 256-step
// BOS-only run.c output byte for byte.
func TestGoldenStories260K(t *testing.T) {
	m := loadStories(t)
	var g goldenFile
	b, err := os.ReadFile(shareddata.Path(t, "models/stories260K/golden_stories260K.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &g); err != nil {
		t.Fatal(err)
	}
	const tol = 1e-3
	for _, c := range g.Cases {
		t.Run(c.Prompt, func(t *testing.T) {
			if m.Tokenizer != nil && c.Prompt != "" {
				got := append([]int32{m.Tokenizer.BOS()}, m.Tokenizer.Encode(c.Prompt)...)
				if !slices.Equal(got, c.PromptTokens) {
					t.Errorf("tokenizer: Encode(%q) = %v, golden %v", c.Prompt, got, c.PromptTokens)
				}
			}
			n := len(c.PromptTokens)
			pos := make([]int32, n)
			rows := make([]int, n)
			for i := range n {
				pos[i], rows[i] = int32(i), i
			}
			r, err := m.Forward(context.Background(), nil, Batch{Tokens: c.PromptTokens, Pos: pos}, ForwardOptions{Logits: rows})
			if err != nil {
				t.Fatal(err)
			}
			var worst float64
			for i := range n {
				for v, want := range c.Logits[i] {
					d := math.Abs(float64(r.Logits[i][v]) - want)
					if d > worst {
						worst = d
					}
					if d > tol {
						t.Fatalf("logit[pos %d][id %d] = %.6f, golden %.5f (|diff| %.2g > %g)", i, v, r.Logits[i][v], want, d, tol)
					}
				}
			}
			t.Logf("max |logit - golden| over %d positions: %.2g", n, worst)
			got := greedy(t, m, c.PromptTokens, len(c.GreedyTokens))
			if !slices.Equal(got, c.GreedyTokens) {
				t.Errorf("greedy continuation:\n got %v\nwant %v", got, c.GreedyTokens)
			}
			if m.Tokenizer != nil {
				text := m.Tokenizer.Decode(append(append([]int32{}, c.PromptTokens...), got...))
				prompt := m.Tokenizer.Decode(c.PromptTokens)
				if cont := strings.TrimPrefix(text, prompt); cont != c.GreedyText {
					t.Errorf("greedy text:\n got %q\nwant %q", cont, c.GreedyText)
				}
			}
		})
	}
	t.Run("runc_bos_only_256", func(t *testing.T) {
		if m.Tokenizer == nil {
			t.Fatal("tok512.bin beside the checkpoint was not loaded")
		}
		want, err := os.ReadFile(shareddata.Path(t, "models/stories260K/runc_greedy_bos_only_256.txt"))
		if err != nil {
			t.Fatal(err)
		}
		got := greedy(t, m, []int32{1}, 256)
		text := m.Tokenizer.Decode(append([]int32{1}, got...))
		if text != strings.TrimSuffix(string(want), "\n") {
			t.Errorf("BOS-only greedy, %d tokens:\n got %q\nwant %q", len(got), text, want)
		}
	})
}
