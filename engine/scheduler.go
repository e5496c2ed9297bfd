package engine

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fusionrag/fusionrag/model/tokenizer"
)

// Finish reasons, as OpenAI reports them.
const (
	finishStop   = "stop"
	finishLength = "length"
)

// kvLoader is the engine's view of the KV connector: it finds the longest
// prefix of prompt with published KV under ns, loads it into s, and returns
// how many tokens it loaded (0 on any miss). It never fails a request: a
// corrupt or unusable entry is a miss.
type kvLoader interface {
	Load(ctx context.Context, ns string, prompt []int32, s Sequence) int
}

// seq is one admitted request as the scheduler runs it.
type seq struct {
	ctx    context.Context
	req    *Request
	prompt []int32
	limit  int // context window: the sequence may hold at most limit tokens

	// Owned by the scheduler goroutine that steps the sequence (s may be
	// created, with loaded KV, by the handler before submission).
	s         Sequence
	maxTokens int
	stopIDs   []int32
	sampler   *sampler
	text      *textStream
	generated int
	last      int32

	// Output, guarded by mu; notify (cap 1) signals a change.
	mu       sync.Mutex
	deltas   []string
	finish   string
	err      error
	done     bool
	cached   int
	admitted time.Time
	first    time.Time
	notify   chan struct{}
}

func (q *seq) signal() {
	select {
	case q.notify <- struct{}{}:
	default:
	}
}

func (q *seq) emit(delta string) {
	if delta == "" {
		return
	}
	q.mu.Lock()
	q.deltas = append(q.deltas, delta)
	q.mu.Unlock()
	q.signal()
}

func (q *seq) end(reason string, err error) {
	q.mu.Lock()
	if !q.done {
		q.done, q.finish, q.err = true, reason, err
	}
	q.mu.Unlock()
	q.signal()
}

// out is what a handler drains from a sequence.
type out struct {
	deltas []string
	done   bool
	finish string
	err    error
}

// next waits for output (or ctx) and returns everything new.
func (q *seq) next(ctx context.Context) (out, error) {
	for {
		q.mu.Lock()
		o := out{deltas: q.deltas, done: q.done, finish: q.finish, err: q.err}
		q.deltas = nil
		q.mu.Unlock()
		if len(o.deltas) > 0 || o.done {
			return o, nil
		}
		select {
		case <-q.notify:
		case <-ctx.Done():
			return out{}, ctx.Err()
		}
	}
}

func (q *seq) usage() *Usage {
	q.mu.Lock()
	defer q.mu.Unlock()
	return &Usage{
		PromptTokens:        len(q.prompt),
		CompletionTokens:    q.generated,
		TotalTokens:         len(q.prompt) + q.generated,
		PromptTokensDetails: &TokenDetails{CachedTokens: q.cached},
	}
}

// scheduler runs admitted sequences: up to MaxBatch at once, each advanced
// by one step per iteration (a prefill chunk or one decode token), the steps
// of one iteration in parallel on Workers goroutines. A sequence whose
// context is cancelled leaves at the next iteration, freeing its slot.
type scheduler struct {
	cfg  Config
	lm   LM
	tok  tokenizer.Tokenizer
	met  *metrics
	stop chan struct{}
	wake chan struct{}
	done chan struct{}

	mu      sync.Mutex
	waiting []*seq
	closed  bool

	running atomic.Int64
}

func newScheduler(cfg Config, lm LM, tok tokenizer.Tokenizer, met *metrics) *scheduler {
	s := &scheduler{cfg: cfg, lm: lm, tok: tok, met: met,
		stop: make(chan struct{}), wake: make(chan struct{}, 1), done: make(chan struct{})}
	go s.loop()
	return s
}

// submit queues q, or fails with ErrOverloaded / ErrClosed.
func (s *scheduler) submit(q *seq) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	if len(s.waiting) >= s.cfg.MaxQueue {
		return ErrOverloaded
	}
	q.notify = make(chan struct{}, 1)
	s.waiting = append(s.waiting, q)
	select {
	case s.wake <- struct{}{}:
	default:
	}
	return nil
}

// close stops admitting, fails waiting and running sequences with ErrClosed
// and waits for the loop to exit.
func (s *scheduler) close() {
	s.mu.Lock()
	if !s.closed {
		s.closed = true
		close(s.stop)
	}
	s.mu.Unlock()
	<-s.done
}

// counts returns (running, waiting).
func (s *scheduler) counts() (int, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return int(s.running.Load()), len(s.waiting)
}

func (s *scheduler) loop() {
	defer close(s.done)
	var active []*seq
	sem := make(chan struct{}, s.cfg.Workers)
	var wg sync.WaitGroup
	for {
		s.mu.Lock()
		for len(active) < s.cfg.MaxBatch && len(s.waiting) > 0 {
			q := s.waiting[0]
			s.waiting[0] = nil
			s.waiting = s.waiting[1:]
			q.admitted = time.Now()
			active = append(active, q)
		}
		closed := s.closed
		s.running.Store(int64(len(active)))
		s.mu.Unlock()
		if closed {
			for _, q := range active {
				q.end("", ErrClosed)
			}
			s.mu.Lock()
			for _, q := range s.waiting {
				q.end("", ErrClosed)
			}
			s.waiting = nil
			s.running.Store(0)
			s.mu.Unlock()
			return
		}
		if len(active) == 0 {
			select {
			case <-s.wake:
			case <-s.stop:
			}
			continue
		}
		for _, q := range active {
			if err := q.ctx.Err(); err != nil {
				q.end("", err)
				continue
			}
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer func() { <-sem; wg.Done() }()
				s.step(q)
			}()
		}
		wg.Wait()
		active = slices.DeleteFunc(active, func(q *seq) bool {
			q.mu.Lock()
			defer q.mu.Unlock()
			if q.done {
				q.s = nil // release the KV now, not when the handler is done
			}
			return q.done
		})
	}
}

// step advances q by one prefill chunk or one decode token.
func (s *scheduler) step(q *seq) {
	if q.sampler == nil {
		if q.s == nil {
			q.s = s.lm.NewSequence()
		}
		q.sampler = newSampler(q.req.Sampling)
		q.text = newTextStream(s.tok, q.prompt, q.req.Sampling.Stop)
	}
	var (
		logits []float32
		err    error
	)
	if n := q.s.Len(); n < len(q.prompt) {
		end := min(n+s.cfg.PrefillChunk, len(q.prompt))
		logits, err = q.s.Extend(q.ctx, q.prompt[n:end])
		if err != nil {
			q.end("", err)
			return
		}
		if end < len(q.prompt) {
			return
		}
	} else {
		if logits, err = q.s.Extend(q.ctx, []int32{q.last}); err != nil {
			q.end("", err)
			return
		}
	}
	tok := q.sampler.Sample(logits)
	s.accept(q, tok)
}

// accept records one sampled token and decides whether q is finished.
func (s *scheduler) accept(q *seq, tok int32) {
	q.last = tok
	q.mu.Lock()
	q.generated++
	if q.first.IsZero() {
		q.first = time.Now()
		s.met.ttft.observe(q.first.Sub(q.admitted).Seconds())
	}
	q.mu.Unlock()
	s.met.genTokens.Add(1)
	if !q.req.Sampling.IgnoreEOS && slices.Contains(q.stopIDs, tok) {
		q.emit(q.text.Flush())
		q.end(finishStop, nil)
		return
	}
	delta, stopped := q.text.Add(tok)
	q.emit(delta)
	switch {
	case stopped:
		q.end(finishStop, nil)
	case q.generated >= q.maxTokens || q.s.Len()+1 >= q.limit:
		q.emit(q.text.Flush())
		q.end(finishLength, nil)
	}
}
