package shareddata

import (
	"encoding/json"
	"os"
	"testing"
)

// StoriesGoldenPath is the golden file of the stories260K model, relative
// to Dir.
const StoriesGoldenPath = "models/stories260K/golden_stories260K.json"

// StoriesGolden is the content of StoriesGoldenPath: reference outputs of
// the stories260K model from an independent fp32 implementation,
// cross-checked with llama2.c run.c.
type StoriesGolden struct {
	Cases []StoriesCase `json:"cases"`
}

// StoriesCase is one prompt of StoriesGolden.
type StoriesCase struct {
	Prompt string `json:"prompt"`
	// PromptTokens are the prompt's ids, BOS first.
	PromptTokens []int32 `json:"prompt_tokens"`
	// Logits are the reference logits at every prompt position,
	// [len(PromptTokens)][vocab], rounded to 5 decimals.
	Logits [][]float64 `json:"logits_per_prompt_position"`
	// GreedyTokens and GreedyText are the greedy continuation after the
	// prompt.
	GreedyTokens []int32 `json:"greedy_tokens"`
	GreedyText   string  `json:"greedy_text"`
}

// LoadStoriesGolden reads StoriesGoldenPath, skipping the test loudly when
// it is absent (see Path). An unreadable file, or one without cases, fails
// the test.
func LoadStoriesGolden(tb testing.TB) StoriesGolden {
	tb.Helper()
	p := Path(tb, StoriesGoldenPath)
	raw, err := os.ReadFile(p)
	if err != nil {
		tb.Fatal(err)
	}
	var g StoriesGolden
	if err := json.Unmarshal(raw, &g); err != nil {
		tb.Fatalf("%s: %v", p, err)
	}
	if len(g.Cases) == 0 {
		tb.Fatalf("%s: golden file has no cases", p)
	}
	return g
}
