package bench

import (
	"fmt"
	"math/rand/v2"
	"strings"

	"github.com/fusionrag/fusionrag/model"
)

// Chunk classes of the fault harness: where a prompt's chunk KV is kept
// when a Redis fault starts (see faultStack.place).
const (
	// ClassLocal prompts have their chunks in the sidecar's own tiers
	// (memory and disk), not in Redis: a Redis outage must not touch them.
	ClassLocal = "local"
	// ClassRedis prompts have their chunks in Redis only, as when another
	// sidecar computed them: a Redis outage makes them misses.
	ClassRedis = "redis"
)

// faultPrompt is one RAG prompt of the fault harness, with its chunk
// separators (StackSeparator) written in.
type faultPrompt struct {
	text  string
	class string
}

// stripped is the prompt as the engine sees it through the fusion path.
func (p faultPrompt) stripped() string { return strings.ReplaceAll(p.text, StackSeparator, "") }

var (
	faultNames   = []string{"Lily", "Tom", "Sam", "Mia", "Ben", "Lucy", "Max", "Anna", "Tim", "Sue", "Jack", "Ella"}
	faultAnimals = []string{"dog", "cat", "bird", "frog", "bunny", "duck", "fish", "bear"}
	faultThings  = []string{"ball", "kite", "box", "hat", "toy", "cake", "book", "car", "apple", "tree"}
	faultColours = []string{"red", "blue", "green", "big", "little", "yellow", "pink", "shiny"}
	faultPlaces  = []string{"park", "garden", "house", "forest", "school", "beach", "pond", "room"}
	faultFeel    = []string{"happy", "sad", "scared", "excited", "tired", "proud"}
)

// faultChunk is a short story passage in the vocabulary of TinyStories
// (stories260K's training set), distinct for every (i, rng state).
func faultChunk(rng *rand.Rand, i int) string {
	name, animal := pick(rng, faultNames), pick(rng, faultAnimals)
	thing, colour, place := pick(rng, faultThings), pick(rng, faultColours), pick(rng, faultPlaces)
	return fmt.Sprintf("Story %d. %s had a %s %s. One day %s went to the %s with a %s. The %s was %s.",
		i, name, colour, thing, name, place, animal, animal, pick(rng, faultFeel))
}

// faultPrompts builds n prompts of passages distinct chunks each (no chunk
// shared between prompts, so a prompt's class decides where all its chunks
// are), classes alternating local, redis. Each fits m's context with room
// for answer tokens.
func faultPrompts(m *model.Model, n, passages, answer int, seed uint64) ([]faultPrompt, error) {
	rng := rand.New(rand.NewPCG(seed, 0x6661_756c))
	const prefix = "Read the stories, then answer the question."
	out := make([]faultPrompt, 0, n)
	chunk := 0
	for i := range n {
		var b strings.Builder
		b.WriteString(prefix)
		var who string
		for range passages {
			c := faultChunk(rng, chunk)
			chunk++
			if who == "" {
				who = strings.Fields(c)[2]
			}
			b.WriteString(StackSeparator)
			b.WriteString(c)
		}
		b.WriteString(StackSeparator)
		fmt.Fprintf(&b, " Question: what did %s have? Answer:", who)
		p := faultPrompt{text: b.String(), class: ClassLocal}
		if i%2 == 1 {
			p.class = ClassRedis
		}
		if m != nil && m.Tokenizer != nil {
			if n := len(m.Tokenizer.Encode(p.stripped())) + answer + 8; n > m.Config.MaxPositions {
				return nil, fmt.Errorf("bench: a fault prompt of %d passages needs %d positions, the model has %d", passages, n, m.Config.MaxPositions)
			}
		}
		out = append(out, p)
	}
	return out, nil
}
