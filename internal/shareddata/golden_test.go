package shareddata

import "testing"

// TestLoadStoriesGolden: every case of the golden file is complete: one
// logits row per prompt token, all rows of one vocabulary size.
func TestLoadStoriesGolden(t *testing.T) {
	g := LoadStoriesGolden(t)
	vocab := -1
	for i, c := range g.Cases {
		if len(c.PromptTokens) == 0 || len(c.GreedyTokens) == 0 || c.GreedyText == "" {
			t.Errorf("case %d (%q): empty field: %d prompt tokens, %d greedy tokens, text %q",
				i, c.Prompt, len(c.PromptTokens), len(c.GreedyTokens), c.GreedyText)
		}
		if len(c.Logits) != len(c.PromptTokens) {
			t.Errorf("case %d: %d logits rows for %d prompt tokens", i, len(c.Logits), len(c.PromptTokens))
		}
		for _, row := range c.Logits {
			if vocab < 0 {
				vocab = len(row)
			}
			if len(row) != vocab || vocab == 0 {
				t.Fatalf("case %d: logits row of %d, want %d", i, len(row), vocab)
			}
		}
	}
}
