package tokenizer

// symbol is one piece of a word during BPE merging: an id and the half-open
// byte span [begin, end) of the input it covers. prev/next link the live
// symbols; a merged-away symbol has id -1.
type symbol struct {
	id         int32
	begin, end int
	prev, next int
}

// pairFunc reports whether the adjacent ids (a, b) merge, into which id, and
// with which priority (lower merges first).
type pairFunc func(a, b int32) (rank float64, merged int32, ok bool)

// candidate is a possible merge of the live symbol at pos with its successor.
type candidate struct {
	rank   float64
	pos    int
	left   int32 // ids expected at pos and its successor when popped
	right  int32
	merged int32
}

// candidates is a binary min-heap ordered by (rank, pos), hand-rolled to
// avoid container/heap's boxing of every pushed candidate.
type candidates []candidate

func (h candidates) less(i, j int) bool {
	if h[i].rank != h[j].rank {
		return h[i].rank < h[j].rank
	}
	return h[i].pos < h[j].pos
}

func (h *candidates) push(c candidate) {
	*h = append(*h, c)
	q := *h
	for i := len(q) - 1; i > 0; {
		p := (i - 1) / 2
		if !q.less(i, p) {
			break
		}
		q[i], q[p] = q[p], q[i]
		i = p
	}
}

func (h *candidates) pop() candidate {
	q := *h
	top := q[0]
	last := len(q) - 1
	q[0] = q[last]
	q = q[:last]
	q.down(0)
	*h = q
	return top
}

func (h *candidates) init() {
	q := *h
	for i := len(q)/2 - 1; i >= 0; i-- {
		q.down(i)
	}
}

// down moves q[i] towards the leaves until neither child is less.
func (q candidates) down(i int) {
	for {
		l, r, m := 2*i+1, 2*i+2, i
		if l < len(q) && q.less(l, m) {
			m = l
		}
		if r < len(q) && q.less(r, m) {
			m = r
		}
		if m == i {
			return
		}
		q[i], q[m] = q[m], q[i]
		i = m
	}
}

// mergeSymbols applies merges to syms until none applies: at every step the
// adjacent pair with the lowest rank, leftmost among equal ranks. This is the
// rule of both llama2.c run.c (rank = -score, a full rescan per step) and the
// Hugging Face BPE model (rank = merge index, a heap); the heap with lazy
// invalidation picks exactly the same pair as the rescan because positions
// are the symbols' original indices, which keep their left-to-right order.
// It returns the surviving symbols in order.
func mergeSymbols(syms []symbol, pair pairFunc) []symbol {
	n := len(syms)
	if n < 2 {
		return syms
	}
	for i := range syms {
		syms[i].prev, syms[i].next = i-1, i+1
	}
	syms[n-1].next = -1
	h := make(candidates, 0, n)
	push := func(i int) {
		j := syms[i].next
		if j < 0 {
			return
		}
		if r, m, ok := pair(syms[i].id, syms[j].id); ok {
			h = append(h, candidate{rank: r, pos: i, left: syms[i].id, right: syms[j].id, merged: m})
		}
	}
	for i := 0; i < n-1; i++ {
		push(i)
	}
	h.init()
	for len(h) > 0 {
		c := h.pop()
		s := &syms[c.pos]
		if s.id != c.left || s.next < 0 || syms[s.next].id != c.right {
			continue // stale: one side was merged since
		}
		r := &syms[s.next]
		s.id, s.end, s.next = c.merged, r.end, r.next
		r.id = -1
		if s.next >= 0 {
			syms[s.next].prev = c.pos
			if r, m, ok := pair(s.id, syms[s.next].id); ok {
				h.push(candidate{rank: r, pos: c.pos, left: s.id, right: syms[s.next].id, merged: m})
			}
		}
		if s.prev >= 0 {
			p := s.prev
			if r, m, ok := pair(syms[p].id, s.id); ok {
				h.push(candidate{rank: r, pos: p, left: syms[p].id, right: s.id, merged: m})
			}
		}
	}
	out := syms[:0]
	for i := 0; i >= 0; {
		next := syms[i].next
		out = append(out, syms[i])
		i = next
	}
	return out
}
