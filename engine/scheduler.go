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

// scheduler runs admitted sequences: up to MaxBatch at once. Each running
// sequence advances one step at a time (a prefill chunk of at most
// PrefillChunk tokens, or one decode token) and must hold one of Workers
// execution tokens for the step; a sequence that finishes a step queues
// again behind the others, so the steps of all running sequences
// interleave round-robin and a long prompt or a long generation never holds
// the others back. There is no global barrier between steps: one slow step
// (a long prefill chunk) delays no one but its own sequence. A sequence
// whose context is cancelled (client gone, timeout) stops before its next
// step and frees its slot.
type scheduler struct {
	cfg  Config
	lm   LM
	tok  tokenizer.Tokenizer
	met  *metrics
	exec chan struct{} // execution tokens, cap Workers (send = acquire)
	stop chan struct{}
	wake chan struct{}
	done chan struct{}
	runs sync.WaitGroup

	mu      sync.Mutex
	waiting []*seq
	closed  bool

	running atomic.Int64
}

func newScheduler(cfg Config, lm LM, tok tokenizer.Tokenizer, met *metrics) *scheduler {
	s := &scheduler{cfg: cfg, lm: lm, tok: tok, met: met, exec: make(chan struct{}, cfg.Workers),
		stop: make(chan struct{}), wake: make(chan struct{}, 1), done: make(chan struct{})}
	go s.loop()
	return s
}

func (s *scheduler) poke() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
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
	s.poke()
	return nil
}

// close stops admitting, fails waiting and running sequences with ErrClosed
// and waits for every sequence to stop.
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

// loop admits waiting sequences, FIFO, while fewer than MaxBatch run.
func (s *scheduler) loop() {
	defer close(s.done)
	for {
		s.mu.Lock()
		if s.closed {
			for _, q := range s.waiting {
				q.end("", ErrClosed)
			}
			s.waiting = nil
			s.mu.Unlock()
			s.runs.Wait()
			return
		}
		for int(s.running.Load()) < s.cfg.MaxBatch && len(s.waiting) > 0 {
			q := s.waiting[0]
			s.waiting[0] = nil
			s.waiting = s.waiting[1:]
			s.running.Add(1)
			s.runs.Add(1)
			go s.run(q)
		}
		s.mu.Unlock()
		select {
		case <-s.wake:
		case <-s.stop:
		}
	}
}

// run steps q until it is done, then frees its slot.
func (s *scheduler) run(q *seq) {
	defer func() {
		q.s = nil // release the KV now, not when the handler is done
		s.mu.Lock()
		s.running.Add(-1)
		s.mu.Unlock()
		s.runs.Done()
		s.poke()
	}()
	q.admitted = time.Now()
	for {
		select {
		case <-s.stop:
			q.end("", ErrClosed)
			return
		case <-q.ctx.Done():
			q.end("", q.ctx.Err())
			return
		case s.exec <- struct{}{}:
		}
		s.step(q)
		<-s.exec
		q.mu.Lock()
		done := q.done
		q.mu.Unlock()
		if done {
			return
		}
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
