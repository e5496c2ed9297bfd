package bench

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"strings"

	"github.com/fusionrag/fusionrag/fusion"
	"github.com/fusionrag/fusionrag/model/tokenizer"
)

// demoNQFile is the NQ-open set inside the reference data directory.
const demoNQFile = "rag/nq-open-oracle.jsonl.gz"

// demoQuery is one RAG request of the demo: a question and the chunks retrieved
// for it, in prompt order.
type demoQuery struct {
	ID       string   `json:"id"`
	Question string   `json:"question"`
	Answers  []string `json:"answers,omitempty"`
	// Chunks are indices into demoCorpus.Chunks.
	Chunks []int `json:"chunks"`
}

// demoCorpus is what the demo ingests and asks about: the chunks (each is one
// unit of stored KV) and the queries over them.
type demoCorpus struct {
	// Source says where the text comes from ("nq-open: <path>" or
	// "generated").
	Source  string         `json:"source"`
	Chunks  []fusion.Chunk `json:"-"`
	Queries []demoQuery    `json:"queries"`
}

// demoPassage is a titled text before chunking.
type demoPassage struct{ title, text string }

// demoQuestion is a question whose gold passage is passages[gold].
type demoQuestion struct {
	text    string
	answers []string
	gold    int
}

// errDemoCorpus is returned when no usable demo corpus can be built.
var errDemoCorpus = errors.New("demo: corpus")

// buildDemoCorpus chunks the passages and draws, for each question, k chunks:
// the gold passage's chunks first (at most half of k), then chunks of other
// passages drawn with seed, all shuffled with seed. Only chunks some query
// uses are kept (they are what gets ingested).
func buildDemoCorpus(source string, ps []demoPassage, qs []demoQuestion, ch *fusion.Chunker, k int, seed uint64) (*demoCorpus, error) {
	per := make([][]fusion.Chunk, len(ps))
	for i, p := range ps {
		cs, err := ch.Split(fusion.Document{ID: fmt.Sprintf("p%d", i), Title: p.title, Text: p.text})
		if err != nil {
			return nil, fmt.Errorf("%w: passage %d: %v", errDemoCorpus, i, err)
		}
		per[i] = cs
	}
	rng := rand.New(rand.NewPCG(seed, 0x6465_6d6f))
	c := &demoCorpus{Source: source}
	index := map[string]int{} // chunk id -> index in c.Chunks
	use := func(pi, ci int) int {
		ck := per[pi][ci]
		if i, ok := index[ck.ID]; ok {
			return i
		}
		index[ck.ID] = len(c.Chunks)
		c.Chunks = append(c.Chunks, ck)
		return len(c.Chunks) - 1
	}
	for qi, q := range qs {
		type ref struct{ p, c int }
		var picked []ref
		seen := map[ref]bool{}
		for ci := range per[q.gold] {
			if len(picked) >= max(1, k/2) {
				break
			}
			r := ref{q.gold, ci}
			picked, seen[r] = append(picked, r), true
		}
		// Distractors: random chunks of other passages.
		for tries := 0; len(picked) < k && tries < 64*k; tries++ {
			pi := rng.IntN(len(ps))
			if pi == q.gold || len(per[pi]) == 0 {
				continue
			}
			r := ref{pi, rng.IntN(len(per[pi]))}
			if seen[r] {
				continue
			}
			picked, seen[r] = append(picked, r), true
		}
		if len(picked) < k {
			return nil, fmt.Errorf("%w: only %d chunks for question %d, want %d (too few passages)", errDemoCorpus, len(picked), qi, k)
		}
		rng.Shuffle(len(picked), func(i, j int) { picked[i], picked[j] = picked[j], picked[i] })
		query := demoQuery{ID: fmt.Sprintf("q%d", qi), Question: q.text, Answers: q.answers}
		for _, r := range picked {
			query.Chunks = append(query.Chunks, use(r.p, r.c))
		}
		c.Queries = append(c.Queries, query)
	}
	return c, nil
}

// nqDemoCorpus builds the corpus from NQ-open (the "Lost in the Middle" oracle
// set): the first nq questions, and as passages the gold passages of the
// first pool examples (the set pooled into a retrieval corpus, as that paper
// does).
func nqDemoCorpus(dataDir string, ch *fusion.Chunker, nq, k, pool int, seed uint64) (*demoCorpus, error) {
	path := filepath.Join(dataDir, demoNQFile)
	ds, err := LoadDataset(path)
	if err != nil {
		return nil, err
	}
	if len(ds.Examples) < max(nq, pool) {
		return nil, fmt.Errorf("%w: %s has %d examples, want %d", errDemoCorpus, path, len(ds.Examples), max(nq, pool))
	}
	var ps []demoPassage
	var qs []demoQuestion
	for i, ex := range ds.Examples[:max(nq, pool)] {
		gold := ex.Passages[0]
		for _, p := range ex.Passages {
			if p.Gold {
				gold = p
				break
			}
		}
		ps = append(ps, demoPassage{gold.Title, gold.Text})
		if i < nq {
			qs = append(qs, demoQuestion{text: ex.Question, answers: ex.Answers, gold: i})
		}
	}
	return buildDemoCorpus("nq-open: "+path, ps, qs, ch, k, seed)
}

// generatedDemoCorpus builds a deterministic corpus of encyclopedia-like
// passages about invented towns, and one question per town whose answer is
// in its passage. It stands in for NQ-open when the reference data is absent.
func generatedDemoCorpus(ch *fusion.Chunker, nq, k, pool int, seed uint64) (*demoCorpus, error) {
	rng := rand.New(rand.NewPCG(seed, 0x636f_7270))
	n := max(nq, pool)
	var ps []demoPassage
	var qs []demoQuestion
	used := map[string]bool{}
	for i := range n {
		name := townName(rng)
		for used[name] {
			name = townName(rng)
		}
		used[name] = true
		river := pick(rng, rivers)
		trade := pick(rng, trades)
		founder := townName(rng) + " " + townName(rng)
		year := 1100 + rng.IntN(800)
		people := 2000 + rng.IntN(400000)
		festival := pick(rng, festivals)
		var b strings.Builder
		fmt.Fprintf(&b, "%s is a town on the river %s, founded in %d by %s. ", name, river, year, founder)
		fmt.Fprintf(&b, "It has about %d inhabitants, most of whom work in %s. ", people, trade)
		fmt.Fprintf(&b, "Every spring the town holds the %s festival, which draws visitors from the whole valley. ", festival)
		fmt.Fprintf(&b, "The old bridge over the %s was rebuilt in %d after a flood destroyed it. ", river, year+150+rng.IntN(300))
		fmt.Fprintf(&b, "%s is twinned with %s, and its market square is known for its %s. ", name, townName(rng), pick(rng, sights))
		fmt.Fprintf(&b, "The local dialect has kept many words from the %s period, and the school teaches them.", pick(rng, periods))
		ps = append(ps, demoPassage{name, b.String()})
		if i < nq {
			switch rng.IntN(3) {
			case 0:
				qs = append(qs, demoQuestion{text: "which river flows through " + name, answers: []string{river}, gold: i})
			case 1:
				qs = append(qs, demoQuestion{text: "who founded " + name, answers: []string{founder}, gold: i})
			default:
				qs = append(qs, demoQuestion{text: "what festival does " + name + " hold in spring", answers: []string{festival}, gold: i})
			}
		}
	}
	return buildDemoCorpus("generated", ps, qs, ch, k, seed)
}

var (
	syllables = []string{"ar", "vel", "tor", "mi", "sa", "den", "ko", "lun", "bre", "ta", "ol", "win", "gar", "ris", "an", "fel", "do", "mar", "sil", "en"}
	rivers    = []string{"Tesk", "Orla", "Verin", "Sume", "Halden", "Brisk", "Anwe", "Corra", "Lisk", "Mera"}
	trades    = []string{"weaving", "fishing", "glassmaking", "timber", "salt mining", "printing", "clockmaking", "brewing"}
	festivals = []string{"Lantern", "Blossom", "River", "Harvest", "Bell", "Kite", "Bread", "Candle"}
	sights    = []string{"clock tower", "stone fountain", "painted houses", "covered market", "old granary", "linden trees"}
	periods   = []string{"river trade", "guild", "kingdom", "salt road", "monastery", "merchant"}
)

func pick(rng *rand.Rand, s []string) string { return s[rng.IntN(len(s))] }

func townName(rng *rand.Rand) string {
	n := 2 + rng.IntN(2)
	var b strings.Builder
	for range n {
		b.WriteString(pick(rng, syllables))
	}
	s := b.String()
	return strings.ToUpper(s[:1]) + s[1:]
}

// demoPrompt is a query laid out as the sidecar and the engine see it: the ids of
// S, of each chunk (its Template.Tokens, exactly the ingested ids) and of the
// question, concatenated in that order. Text is the same prompt as text.
type demoPrompt struct {
	Prefix   []int32
	Chunks   [][]int32
	Question []int32
	Text     string
}

// Tokens returns the whole prompt S + C_1..C_k + Q.
func (p demoPrompt) Tokens() []int32 {
	n := len(p.Prefix) + len(p.Question)
	for _, c := range p.Chunks {
		n += len(c)
	}
	out := make([]int32, 0, n)
	out = append(out, p.Prefix...)
	for _, c := range p.Chunks {
		out = append(out, c...)
	}
	return append(out, p.Question...)
}

// demoQuestionText renders the question segment that follows the chunks.
func demoQuestionText(q string) string { return "\n\nQuestion: " + q + "\nAnswer:" }

// prompt lays q out after S (system).
func (c *demoCorpus) prompt(tok tokenizer.Tokenizer, tmpl fusion.Template, system string, q demoQuery) demoPrompt {
	p := demoPrompt{Prefix: fusion.EncodePrefix(tok, system), Question: fusion.EncodeSegment(tok, demoQuestionText(q.Question))}
	var b strings.Builder
	b.WriteString(system)
	for _, i := range q.Chunks {
		ck := c.Chunks[i]
		p.Chunks = append(p.Chunks, ck.Tokens)
		b.WriteString(tmpl.Render(ck.Title, ck.Text))
	}
	b.WriteString(demoQuestionText(q.Question))
	p.Text = b.String()
	return p
}
