package engine

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fusionrag/fusionrag/model"
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

	// Owned by the scheduler's loop once submitted (s may be created, with
	// loaded KV, by the handler before submission).
	s         Sequence
	maxTokens int
	stopIDs   []int32
	sampler   *model.Sampler
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

func (q *seq) isDone() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.done
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

// scheduler runs admitted sequences with continuous batching: one
// goroutine loops over iterations, and each iteration advances every
// running sequence (at most MaxBatch) by one step in a single model call:
// one decode token for each sequence that is generating, plus prompt chunks
// for those still prefilling (at most PrefillChunk prompt tokens in all,
// earliest admitted first, so a burst of long prompts cannot stall
// everyone's decoding for long). New requests join
// the running set, FIFO, at iteration boundaries; finished, failed and
// cancelled ones (client gone, timeout) leave it there, so a long generation
// holds no one back and a cancelled one takes no further step.
//
// With an LM that implements BatchLM (ModelLM) the iteration is one
// ExtendBatch: the model streams its weights once for all the sequences'
// rows. Other LMs get one Extend per sequence, run concurrently on up to
// Workers goroutines.
type scheduler struct {
	cfg   Config
	lm    LM
	batch BatchLM // lm, when it batches; nil otherwise
	tok   tokenizer.Tokenizer
	met   *metrics
	wake  chan struct{}
	stop  chan struct{}
	done  chan struct{}
	// ctx is cancelled by close; batched model calls run under it (a batch
	// serves many requests, so no single request's context can cancel it).
	ctx    context.Context
	cancel context.CancelFunc

	mu      sync.Mutex
	waiting []*seq
	running int // len of the loop's running set, for counts
	closed  bool
}

func newScheduler(cfg Config, lm LM, tok tokenizer.Tokenizer, met *metrics) *scheduler {
	s := &scheduler{cfg: cfg, lm: lm, tok: tok, met: met,
		stop: make(chan struct{}), wake: make(chan struct{}, 1), done: make(chan struct{})}
	s.batch, _ = lm.(BatchLM)
	s.ctx, s.cancel = context.WithCancel(context.Background())
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
// and waits for the loop to stop (after the iteration in progress).
func (s *scheduler) close() {
	s.mu.Lock()
	if !s.closed {
		s.closed = true
		close(s.stop)
		s.cancel()
	}
	s.mu.Unlock()
	<-s.done
}

// counts returns (running, waiting).
func (s *scheduler) counts() (int, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.running, len(s.waiting)
}

// loop admits waiting sequences, FIFO, while fewer than MaxBatch run, and
// steps the running ones together until they leave.
func (s *scheduler) loop() {
	defer close(s.done)
	var running []*seq
	for {
		s.mu.Lock()
		if s.closed {
			for _, q := range s.waiting {
				q.end("", ErrClosed)
			}
			s.waiting = nil
			for _, q := range running {
				q.end("", ErrClosed)
				q.s = nil
			}
			s.running = 0
			s.mu.Unlock()
			return
		}
		for len(running) < s.cfg.MaxBatch && len(s.waiting) > 0 {
			q := s.waiting[0]
			s.waiting[0] = nil
			s.waiting = s.waiting[1:]
			q.admitted = time.Now()
			running = append(running, q)
		}
		s.running = len(running)
		s.mu.Unlock()

		if len(running) == 0 {
			select {
			case <-s.wake:
			case <-s.stop:
			}
			continue
		}
		s.iterate(running)
		// Finished, failed and cancelled sequences leave the batch; their KV
		// is released now, not when their handler is done.
		kept := running[:0]
		for _, q := range running {
			if err := q.ctx.Err(); err != nil {
				q.end("", err)
			}
			if q.isDone() {
				q.s = nil
				continue
			}
			kept = append(kept, q)
		}
		clear(running[len(kept):])
		running = kept
		s.mu.Lock()
		s.running = len(running)
		s.mu.Unlock()
	}
}

// work is one sequence's part of an iteration.
type work struct {
	q       *seq
	tokens  []int32
	prefill bool // tokens are prompt tokens; more may follow
	logits  []float32
	err     error
}

// iterate advances the running sequences by one step each: a prompt chunk
// within the prefill budget, or one decode token.
func (s *scheduler) iterate(running []*seq) {
	budget := s.cfg.PrefillChunk
	ws := make([]work, 0, len(running))
	for _, q := range running {
		if q.ctx.Err() != nil {
			continue // leaves after this iteration
		}
		if q.sampler == nil {
			if q.s == nil {
				q.s = s.lm.NewSequence()
			}
			q.sampler = newSampler(q.req.Sampling)
			q.text = newTextStream(s.tok, q.prompt, q.req.Sampling.Stop)
		}
		n := q.s.Len()
		if n >= len(q.prompt) {
			ws = append(ws, work{q: q, tokens: []int32{q.last}})
			continue
		}
		if budget == 0 {
			continue // prefills on a later iteration
		}
		end := min(n+budget, len(q.prompt))
		budget -= end - n
		ws = append(ws, work{q: q, tokens: q.prompt[n:end], prefill: true})
	}
	if len(ws) == 0 {
		return
	}
	s.extend(ws)
	for i := range ws {
		w := &ws[i]
		q := w.q
		if w.err != nil {
			if s.ctx.Err() != nil {
				return // closing: the loop fails everyone with ErrClosed
			}
			q.end("", w.err)
			continue
		}
		if w.prefill && q.s.Len() < len(q.prompt) {
			continue
		}
		s.accept(q, q.sampler.Sample(w.logits))
	}
}

// extend runs the iteration's model call(s), filling logits and err.
func (s *scheduler) extend(ws []work) {
	if s.batch != nil {
		seqs := make([]Sequence, len(ws))
		toks := make([][]int32, len(ws))
		for i, w := range ws {
			seqs[i], toks[i] = w.q.s, w.tokens
		}
		logits, errs := s.batch.ExtendBatch(s.ctx, seqs, toks)
		for i := range ws {
			ws[i].logits, ws[i].err = logits[i], errs[i]
		}
		return
	}
	// One Extend per sequence under its own request's context, at most
	// Workers at once.
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(s.cfg.Workers, len(ws)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= len(ws) {
					return
				}
				w := &ws[i]
				w.logits, w.err = w.q.s.Extend(w.q.ctx, w.tokens)
			}
		}()
	}
	wg.Wait()
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
