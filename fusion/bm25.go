package fusion

import (
	"context"
	"errors"
	"fmt"
	"math"
	"runtime"
	"slices"
	"strings"
	"sync"
	"unicode"
)

// Neighbourer finds, for every chunk, its most similar other chunks.
type Neighbourer interface {
	// Name identifies the similarity in keys ("bm25", "emb:<model>"): fused
	// KV computed with another similarity is another entry.
	Name() string
	// Neighbours returns, for each chunk i, up to n indices of other chunks,
	// most similar first, never i itself. Chunks that share nothing with i
	// (similarity 0 for BM25) are not neighbours: the list may be shorter.
	// The result must be deterministic for the same chunks.
	Neighbours(ctx context.Context, chunks []Chunk, n int) ([][]int, error)
}

// BM25 ranks chunks by Okapi BM25 of one chunk's words (as the query) against
// the others', in pure Go. Words are maximal runs of Unicode letters and
// digits, lowercased; English stop words are dropped unless KeepStopWords.
// The title is part of a chunk's words. Scores tie-break by chunk index
// (lower first), and accumulation runs in a fixed order, so the result is
// deterministic.
type BM25 struct {
	// K1 is the term-frequency saturation; 0 selects 1.2.
	K1 float64
	// B is the length normalisation; 0 selects 0.75 (use a tiny positive
	// value for none).
	B float64
	// KeepStopWords keeps the English stop words.
	KeepStopWords bool
	// Workers bounds the goroutines scoring queries; 0: GOMAXPROCS.
	Workers int
}

// Name implements Neighbourer.
func (b *BM25) Name() string { return "bm25" }

// Words splits text into BM25 terms: lowercase runs of letters and digits,
// stop words dropped unless keepStop.
func Words(text string, keepStop bool) []string {
	f := strings.FieldsFunc(text, func(r rune) bool { return !unicode.IsLetter(r) && !unicode.IsNumber(r) })
	out := f[:0]
	for _, w := range f {
		w = strings.ToLower(w)
		if !keepStop && stopWords[w] {
			continue
		}
		out = append(out, w)
	}
	return out
}

type posting struct {
	doc int32
	w   float32 // idf × saturated tf of the term in doc
}

// Neighbours implements Neighbourer.
func (b *BM25) Neighbours(ctx context.Context, chunks []Chunk, n int) ([][]int, error) {
	if n < 0 {
		return nil, fmt.Errorf("fusion: %d neighbours", n)
	}
	k1, bb := b.K1, b.B
	if k1 == 0 {
		k1 = 1.2
	}
	if bb == 0 {
		bb = 0.75
	}
	if k1 < 0 || bb < 0 || bb > 1 || math.IsNaN(k1) || math.IsNaN(bb) {
		return nil, errors.New("fusion: BM25 needs K1 >= 0 and B in [0, 1]")
	}
	N := len(chunks)
	// Term ids in first-seen order; per-chunk term frequencies.
	ids := map[string]int32{}
	type tf struct {
		term  int32
		count int32
	}
	docs := make([][]tf, N)
	lens := make([]int, N)
	total := 0
	for i, c := range chunks {
		words := Words(c.Title+" "+c.Text, b.KeepStopWords)
		lens[i] = len(words)
		total += len(words)
		counts := map[int32]int32{}
		for _, w := range words {
			id, ok := ids[w]
			if !ok {
				id = int32(len(ids))
				ids[w] = id
			}
			counts[id]++
		}
		d := make([]tf, 0, len(counts))
		for t, c := range counts {
			d = append(d, tf{t, c})
		}
		slices.SortFunc(d, func(a, b tf) int { return int(a.term - b.term) })
		docs[i] = d
	}
	if N == 0 {
		return nil, nil
	}
	avg := float64(total) / float64(N)
	if avg == 0 {
		avg = 1
	}
	df := make([]int, len(ids))
	for _, d := range docs {
		for _, t := range d {
			df[t.term]++
		}
	}
	post := make([][]posting, len(ids))
	for i, d := range docs {
		norm := k1 * (1 - bb + bb*float64(lens[i])/avg)
		for _, t := range d {
			idf := math.Log(1 + (float64(N)-float64(df[t.term])+0.5)/(float64(df[t.term])+0.5))
			c := float64(t.count)
			post[t.term] = append(post[t.term], posting{doc: int32(i), w: float32(idf * c * (k1 + 1) / (c + norm))})
		}
	}
	out := make([][]int, N)
	workers := b.Workers
	if workers <= 0 {
		workers = runtime.GOMAXPROCS(0)
	}
	var wg sync.WaitGroup
	next := make(chan int)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			acc := make([]float32, N)
			touched := make([]int32, 0, 256)
			for q := range next {
				touched = touched[:0]
				for _, t := range docs[q] { // ascending term ids: fixed order
					for _, p := range post[t.term] {
						if acc[p.doc] == 0 {
							touched = append(touched, p.doc)
						}
						acc[p.doc] += p.w
					}
				}
				out[q] = topN(acc, touched, q, n)
				for _, d := range touched {
					acc[d] = 0
				}
			}
		}()
	}
	var err error
	for q := range N {
		if err = ctx.Err(); err != nil {
			break
		}
		next <- q
	}
	close(next)
	wg.Wait()
	if err != nil {
		return nil, err
	}
	return out, nil
}

type scored struct {
	doc   int
	score float32
}

// better orders by score descending, then index ascending.
func better(a, b scored) bool {
	return a.score > b.score || (a.score == b.score && a.doc < b.doc)
}

// topN returns the n best of the touched docs by acc (positive scores only),
// excluding self.
func topN(acc []float32, touched []int32, self, n int) []int {
	r := newRanking(n)
	for _, d := range touched {
		s := acc[d]
		if int(d) == self || !(s > 0) {
			continue
		}
		r.offer(scored{int(d), s})
	}
	return r.docs()
}

// ranking keeps the n best docs offered so far in the order of better.
type ranking struct {
	n    int
	best []scored // sorted, len <= n
}

func newRanking(n int) ranking { return ranking{n: n, best: make([]scored, 0, n+1)} }

// offer keeps c if it is among the n best so far.
func (r *ranking) offer(c scored) {
	n := r.n
	if len(r.best) == n && (n == 0 || !better(c, r.best[n-1])) {
		return
	}
	// Insertion into the sorted list (n is small).
	i := len(r.best)
	if len(r.best) < n {
		r.best = append(r.best, c)
	} else {
		i = n - 1
		r.best[i] = c
	}
	for ; i > 0 && better(r.best[i], r.best[i-1]); i-- {
		r.best[i], r.best[i-1] = r.best[i-1], r.best[i]
	}
}

// docs returns the kept docs, best first.
func (r *ranking) docs() []int {
	res := make([]int, len(r.best))
	for i, s := range r.best {
		res[i] = s.doc
	}
	return res
}

// stopWords is a common English stop word list.
var stopWords = func() map[string]bool {
	m := map[string]bool{}
	for _, w := range strings.Fields(`a about above after again against all am an and any are as at be because been
	before being below between both but by can could did do does doing down during each few for from further had has
	have having he her here hers herself him himself his how i if in into is it its itself just me more most my myself
	no nor not now of off on once only or other our ours ourselves out over own same she should so some such than that
	the their theirs them themselves then there these they this those through to too under until up very was we were
	what when where which while who whom why will with would you your yours yourself yourselves`) {
		m[w] = true
	}
	return m
}()
