package fusion

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// Queue runs ingest jobs in the background, one at a time (each job uses the
// Ingester's whole worker pool). Jobs are taken round-robin over the tenants
// that have jobs waiting, each tenant's in submission order, so that one
// tenant's backlog never holds another tenant's job behind it: a tenant
// submitting one job waits for at most one job of every other tenant. Each
// tenant holds at most MaxJobsPerTenant jobs queued or running
// (ErrTenantBusy beyond it). The sidecar mounts it as
//
//	POST /v1/fusion/documents       body: ParseDocuments formats -> 202 + JobStatus
//	GET  /v1/fusion/documents/{id}  -> 200 + JobStatus, 404 when unknown
//
// (HandleSubmit and HandleStatus give the status codes and bodies, so the
// proxy's fasthttp handlers stay a few lines). Neighbours are searched among
// the chunks of the same job: submit documents that belong together in one
// job. Jobs are not persisted: a restart forgets the queue, but the KV of
// finished chunks stays in the store, so resubmitting skips it.
type Queue struct {
	chunker   *Chunker
	max       int
	perTenant int
	keep      int
	run       runFunc

	mu       sync.Mutex
	wake     *sync.Cond // signalled on a new job and on Close; L is &mu
	seq      int
	jobs     map[string]*job
	order    []string          // finished jobs, oldest first (for KeepFinished)
	pending  map[string][]*job // queued jobs by tenant, oldest first
	ring     []string          // tenants with queued jobs, next to run first
	npending int               // queued jobs, all tenants
	active   map[string]int    // queued + running jobs by tenant
	meanRun  time.Duration     // moving mean of job run times (Retry-After)
	ctx      context.Context
	cancel   context.CancelFunc
	done     chan struct{}
	closed   bool
}

// runFunc ingests one job's chunks for tenant, reporting progress; the
// Ingester's Run by default (tests put a blocking fake in its place).
type runFunc func(ctx context.Context, tenant string, chunks []Chunk, progress func(Progress)) (Summary, error)

// QueueConfig configures a Queue.
type QueueConfig struct {
	// Ingester computes and stores the KV. Required. Its Progress writer
	// should be nil (no terminal).
	Ingester *Ingester
	// Chunker cuts the submitted documents. Required.
	Chunker *Chunker
	// MaxPending bounds the jobs waiting to run, all tenants together; 0
	// selects 64. Submit returns ErrQueueFull beyond it.
	MaxPending int
	// MaxJobsPerTenant bounds one tenant's jobs queued or running; 0
	// selects DefaultJobsPerTenant. Submit returns ErrTenantBusy beyond it.
	MaxJobsPerTenant int
	// KeepFinished is the number of finished jobs whose status stays
	// queryable; 0 selects 1000.
	KeepFinished int
}

// DefaultJobsPerTenant is QueueConfig.MaxJobsPerTenant's default.
const DefaultJobsPerTenant = 4

// Job states.
const (
	JobQueued    = "queued"
	JobRunning   = "running"
	JobDone      = "done"
	JobFailed    = "failed"
	JobCancelled = "cancelled"
)

// JobStatus is what Status reports about a job; it is the JSON body of the
// HTTP endpoint.
type JobStatus struct {
	ID        string    `json:"id"`
	State     string    `json:"state"`
	Documents int       `json:"documents"`
	Chunks    int       `json:"chunks"`
	Progress  Progress  `json:"progress"`
	Load      LoadStats `json:"load"`
	Summary   *Summary  `json:"summary,omitempty"`
	Error     string    `json:"error,omitempty"`
	Submitted time.Time `json:"submitted"`
	Started   time.Time `json:"started,omitzero"`
	Finished  time.Time `json:"finished,omitzero"`
}

type job struct {
	mu     sync.Mutex
	st     JobStatus
	chunks []Chunk
	tenant string
}

func (j *job) status() JobStatus {
	j.mu.Lock()
	defer j.mu.Unlock()
	s := j.st
	if s.Summary != nil {
		c := *s.Summary
		s.Summary = &c
	}
	return s
}

// Queue errors.
var (
	ErrQueueFull   = errors.New("fusion: ingest queue full")
	ErrTenantBusy  = errors.New("fusion: too many ingest jobs of this tenant queued or running")
	ErrQueueClosed = errors.New("fusion: ingest queue closed")
	ErrNoDocuments = errors.New("fusion: no documents with text")
)

// NewQueue validates cfg and starts the queue's runner.
func NewQueue(cfg QueueConfig) (*Queue, error) {
	if cfg.Ingester == nil || cfg.Chunker == nil {
		return nil, errors.New("fusion: QueueConfig needs an Ingester and a Chunker")
	}
	in := cfg.Ingester
	return newQueue(cfg, func(ctx context.Context, tenant string, chunks []Chunk, progress func(Progress)) (Summary, error) {
		r := *in // a per-job copy with the job's tenant and progress hook
		r.cfg.Tenant = tenant
		r.ns.Tenant = tenant
		r.cfg.Progress = nil
		r.cfg.OnProgress = progress
		return r.Run(ctx, chunks)
	})
}

// newQueue is NewQueue with the job runner given.
func newQueue(cfg QueueConfig, run runFunc) (*Queue, error) {
	if cfg.Chunker == nil {
		return nil, errors.New("fusion: QueueConfig needs a Chunker")
	}
	if cfg.MaxPending <= 0 {
		cfg.MaxPending = 64
	}
	if cfg.MaxJobsPerTenant <= 0 {
		cfg.MaxJobsPerTenant = DefaultJobsPerTenant
	}
	if cfg.KeepFinished <= 0 {
		cfg.KeepFinished = 1000
	}
	ctx, cancel := context.WithCancel(context.Background())
	q := &Queue{chunker: cfg.Chunker, max: cfg.MaxPending, perTenant: cfg.MaxJobsPerTenant, keep: cfg.KeepFinished, run: run,
		jobs: map[string]*job{}, pending: map[string][]*job{}, active: map[string]int{},
		ctx: ctx, cancel: cancel, done: make(chan struct{})}
	q.wake = sync.NewCond(&q.mu)
	go q.loop()
	return q, nil
}

// Submit chunks docs and queues them as one job whose KV belongs to tenant
// (the sidecar's tenant of the request: the same tenant must look the KV
// up). It returns the job's initial status (its ID for Status),
// ErrNoDocuments when nothing has text, ErrTenantBusy, ErrQueueFull or
// ErrQueueClosed.
func (q *Queue) Submit(tenant string, docs []Document) (JobStatus, error) {
	chunks, ls := ChunkDocuments(docs, q.chunker)
	if len(chunks) == 0 {
		return JobStatus{}, fmt.Errorf("%w (%d documents, %d empty, %d rejected)", ErrNoDocuments, len(docs), ls.Empty, ls.Rejected)
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	switch {
	case q.closed:
		return JobStatus{}, ErrQueueClosed
	case q.active[tenant] >= q.perTenant:
		return JobStatus{}, fmt.Errorf("%w: %d of at most %d", ErrTenantBusy, q.active[tenant], q.perTenant)
	case q.npending >= q.max:
		return JobStatus{}, fmt.Errorf("%w: %d jobs pending", ErrQueueFull, q.max)
	}
	q.seq++
	j := &job{chunks: chunks, tenant: tenant, st: JobStatus{ID: "job-" + strconv.Itoa(q.seq), State: JobQueued,
		Documents: ls.Documents, Chunks: len(chunks), Load: ls, Submitted: time.Now().UTC()}}
	if len(q.pending[tenant]) == 0 {
		q.ring = append(q.ring, tenant)
	}
	q.pending[tenant] = append(q.pending[tenant], j)
	q.npending++
	q.active[tenant]++
	q.jobs[j.st.ID] = j
	q.wake.Signal()
	return j.status(), nil
}

// RetryAfter is how long a refused submitter should wait before trying
// again: about one job's run time (the moving mean of the last jobs'),
// within [1 s, 5 min]; 5 s before any job has run.
func (q *Queue) RetryAfter() time.Duration {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.meanRun == 0 {
		return 5 * time.Second
	}
	return min(max(q.meanRun, time.Second), 5*time.Minute)
}

// Status returns a job's status; false when the id is unknown (or
// forgotten, see KeepFinished).
func (q *Queue) Status(id string) (JobStatus, bool) {
	q.mu.Lock()
	j, ok := q.jobs[id]
	q.mu.Unlock()
	if !ok {
		return JobStatus{}, false
	}
	return j.status(), true
}

// Close stops accepting jobs, cancels the running one and the queued ones
// (their state becomes cancelled; stored KV stays) and waits for the runner
// or ctx.
func (q *Queue) Close(ctx context.Context) error {
	q.mu.Lock()
	q.closed = true
	q.wake.Broadcast()
	q.mu.Unlock()
	q.cancel()
	select {
	case <-q.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// next takes the job to run: the oldest queued job of the tenant at the
// head of the ring, whose tenant then moves to the ring's tail if it has
// more. It waits for a job; nil once the queue is closed and empty.
func (q *Queue) next() *job {
	q.mu.Lock()
	defer q.mu.Unlock()
	for len(q.ring) == 0 {
		if q.closed {
			return nil
		}
		q.wake.Wait()
	}
	t := q.ring[0]
	q.ring = q.ring[1:]
	js := q.pending[t]
	j := js[0]
	js[0] = nil
	if js = js[1:]; len(js) > 0 {
		q.pending[t] = js
		q.ring = append(q.ring, t)
	} else {
		delete(q.pending, t)
	}
	q.npending--
	return j
}

func (q *Queue) loop() {
	defer close(q.done)
	for j := q.next(); j != nil; j = q.next() {
		q.runJob(j)
	}
}

func (q *Queue) runJob(j *job) {
	if q.ctx.Err() != nil {
		q.finish(j, JobCancelled, nil, q.ctx.Err(), 0)
		return
	}
	j.mu.Lock()
	j.st.State = JobRunning
	start := time.Now()
	j.st.Started = start.UTC()
	chunks := j.chunks
	j.mu.Unlock()
	sum, err := q.run(q.ctx, j.tenant, chunks, func(p Progress) {
		j.mu.Lock()
		j.st.Progress = p
		j.mu.Unlock()
	})
	state := JobDone
	switch {
	case err != nil && q.ctx.Err() != nil:
		state = JobCancelled
	case err != nil:
		state = JobFailed
	}
	q.finish(j, state, &sum, err, time.Since(start))
}

func (q *Queue) finish(j *job, state string, sum *Summary, err error, took time.Duration) {
	j.mu.Lock()
	j.st.State = state
	j.st.Summary = sum
	j.st.Finished = time.Now().UTC()
	if err != nil {
		j.st.Error = err.Error()
	}
	j.chunks = nil
	id := j.st.ID
	j.mu.Unlock()
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.active[j.tenant]--; q.active[j.tenant] <= 0 {
		delete(q.active, j.tenant)
	}
	if took > 0 {
		if q.meanRun == 0 {
			q.meanRun = took
		} else {
			q.meanRun += (took - q.meanRun) / 4
		}
	}
	q.order = append(q.order, id)
	for len(q.order) > q.keep {
		delete(q.jobs, q.order[0])
		q.order = q.order[1:]
	}
}

// ParseDocuments reads the body of a submission: a JSON array of
// Documents, an object {"documents": [...]}, or JSONL (one Document per
// line, as a corpus file; its malformed lines are an error here, naming the
// line).
func ParseDocuments(body []byte) ([]Document, error) {
	b := bytes.TrimSpace(body)
	if len(b) == 0 {
		return nil, fmt.Errorf("%w: empty body", ErrMalformed)
	}
	switch b[0] {
	case '[':
		var docs []Document
		if err := json.Unmarshal(b, &docs); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
		}
		return docs, nil
	case '{':
		var w struct {
			Documents *[]Document `json:"documents"`
		}
		if err := json.Unmarshal(b, &w); err == nil && w.Documents != nil {
			return *w.Documents, nil
		}
	}
	var docs []Document
	st, err := ReadCorpus(bytes.NewReader(b), 0, func(d Document) error {
		docs = append(docs, d)
		return nil
	})
	if err != nil {
		return nil, err
	}
	if len(st.Errors) > 0 {
		return nil, st.Errors[0]
	}
	return docs, nil
}

// HandleSubmit serves POST /v1/fusion/documents for tenant: it returns the
// HTTP status and JSON body (202 with the JobStatus; 400, 429 or 503 with
// {"error": ...}; a 429 also carries "retry_after", seconds, see
// RetryAfter).
func (q *Queue) HandleSubmit(tenant string, body []byte) (int, []byte) {
	docs, err := ParseDocuments(body)
	if err != nil {
		return errorBody(http.StatusBadRequest, err)
	}
	st, err := q.Submit(tenant, docs)
	switch {
	case errors.Is(err, ErrNoDocuments):
		return errorBody(http.StatusBadRequest, err)
	case errors.Is(err, ErrQueueFull), errors.Is(err, ErrTenantBusy):
		out, _ := json.Marshal(map[string]any{"error": err.Error(), "retry_after": int(math.Ceil(q.RetryAfter().Seconds()))})
		return http.StatusTooManyRequests, out
	case err != nil:
		return errorBody(http.StatusServiceUnavailable, err)
	}
	out, _ := json.Marshal(st)
	return http.StatusAccepted, out
}

// HandleStatus serves GET /v1/fusion/documents/{id}: 200 with the
// JobStatus, or 404.
func (q *Queue) HandleStatus(id string) (int, []byte) {
	st, ok := q.Status(id)
	if !ok {
		return errorBody(http.StatusNotFound, fmt.Errorf("fusion: no job %q", id))
	}
	out, _ := json.Marshal(st)
	return http.StatusOK, out
}

func errorBody(code int, err error) (int, []byte) {
	out, _ := json.Marshal(map[string]string{"error": err.Error()})
	return code, out
}
