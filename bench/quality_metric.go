package bench

import (
	"strings"
	"unicode"
)

// asciiPunct is Python's string.punctuation, which LongBench's
// normalize_answer strips (non-ASCII punctuation is kept, as there).
const asciiPunct = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"

// isWordRune is Python's Unicode \w (str.isalnum() or the underscore):
// letters (L*) and numbers (N*).
func isWordRune(r rune) bool {
	return r == '_' || unicode.IsLetter(r) || unicode.IsNumber(r)
}

// NormalizeAnswer is LongBench's (and SQuAD's) normalize_answer: lowercase,
// remove ASCII punctuation, replace the articles a, an, the (whole words,
// Unicode word boundaries as Python's re) by a space, and collapse
// whitespace.
func NormalizeAnswer(s string) string {
	s = strings.ToLower(s)
	s = strings.Map(func(r rune) rune {
		if r < 128 && strings.ContainsRune(asciiPunct, r) {
			return -1
		}
		return r
	}, s)
	// re.sub(r'\b(a|an|the)\b', ' ', text): replace every maximal run of
	// word runes that is exactly an article.
	var b strings.Builder
	rs := []rune(s)
	for i := 0; i < len(rs); {
		if !isWordRune(rs[i]) {
			b.WriteRune(rs[i])
			i++
			continue
		}
		j := i
		for j < len(rs) && isWordRune(rs[j]) {
			j++
		}
		switch w := string(rs[i:j]); w {
		case "a", "an", "the":
			b.WriteByte(' ')
		default:
			b.WriteString(w)
		}
		i = j
	}
	return strings.Join(strings.Fields(b.String()), " ")
}

// TokenF1 is LongBench's qa_f1_score of one prediction against one gold
// answer: the F1 of the multiset overlap of their normalised tokens (0 when
// nothing overlaps, including when either is empty).
func TokenF1(prediction, gold string) float64 {
	p := strings.Fields(NormalizeAnswer(prediction))
	g := strings.Fields(NormalizeAnswer(gold))
	if len(p) == 0 || len(g) == 0 {
		return 0
	}
	counts := make(map[string]int, len(g))
	for _, t := range g {
		counts[t]++
	}
	same := 0
	for _, t := range p {
		if counts[t] > 0 {
			counts[t]--
			same++
		}
	}
	if same == 0 {
		return 0
	}
	prec := float64(same) / float64(len(p))
	rec := float64(same) / float64(len(g))
	return 2 * prec * rec / (prec + rec)
}

// ExactMatch reports whether prediction and gold normalise to the same text.
func ExactMatch(prediction, gold string) bool {
	return NormalizeAnswer(prediction) == NormalizeAnswer(gold)
}

// BestF1 is the maximum TokenF1 over the gold answers (LongBench scores an
// example by its best-matching answer).
func BestF1(prediction string, golds []string) float64 {
	best := 0.0
	for _, g := range golds {
		best = max(best, TokenF1(prediction, g))
	}
	return best
}

// AnyExact reports whether prediction exactly matches some gold answer.
func AnyExact(prediction string, golds []string) bool {
	for _, g := range golds {
		if ExactMatch(prediction, g) {
			return true
		}
	}
	return false
}

// FirstLine is the answer part of a generation, as CacheBlend scores it:
// leading newlines dropped, then everything before the next newline.
func FirstLine(s string) string {
	s = strings.TrimLeft(s, "\n")
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	return strings.TrimSpace(s)
}
