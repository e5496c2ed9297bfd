package fusion

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"testing"
	"time"
)

// blockingRun is a job runner that reports each job's tenant on started and
// runs until a value arrives on gate (or the queue closes).
func blockingRun(started chan<- string, gate <-chan struct{}) runFunc {
	return func(ctx context.Context, tenant string, chunks []Chunk, _ func(Progress)) (Summary, error) {
		started <- tenant
		select {
		case <-gate:
			return Summary{Chunks: len(chunks)}, nil
		case <-ctx.Done():
			return Summary{Interrupted: true}, ctx.Err()
		}
	}
}

func recv(t *testing.T, c <-chan string) string {
	t.Helper()
	select {
	case s := <-c:
		return s
	case <-time.After(10 * time.Second):
		t.Fatal("no job started in 10 s")
		return ""
	}
}

// TestQueueFairAcrossTenants (issue 18 finding 3: one tenant's backlog held
// later tenants' jobs behind it): tenant A queues its whole quota, tenant B
// one job afterwards; B's job runs second after A's running one, before
// A's backlog is drained. On the FIFO queue B ran last.
func TestQueueFairAcrossTenants(t *testing.T) {
	m := synthModel(t, tinyConfig(2048))
	ch, _ := NewChunker(Chunker{Tokenizer: m.Tokenizer, Size: 16})
	started, gate := make(chan string, 16), make(chan struct{})
	q, err := newQueue(QueueConfig{Chunker: ch, MaxJobsPerTenant: 4}, blockingRun(started, gate))
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close(context.Background())
	docs := storyDocs()[:1]
	if _, err := q.Submit("A", docs); err != nil {
		t.Fatal(err)
	}
	if got := recv(t, started); got != "A" {
		t.Fatalf("first job of tenant %q, want A", got)
	}
	for range 3 {
		if _, err := q.Submit("A", docs); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := q.Submit("B", docs); err != nil {
		t.Fatal(err)
	}
	order := []string{"A"}
	for range 4 {
		gate <- struct{}{}
		order = append(order, recv(t, started))
	}
	gate <- struct{}{}
	want := []string{"A", "A", "B", "A", "A"}
	if !slices.Equal(order, want) {
		t.Errorf("jobs ran in tenant order %v, want %v (round-robin: B before A's backlog)", order, want)
	}
}

// TestQueueTenantQuota: a tenant holds at most MaxJobsPerTenant jobs queued
// or running; beyond it 429 with retry_after, and other tenants are not
// affected. A finished job frees its place.
func TestQueueTenantQuota(t *testing.T) {
	m := synthModel(t, tinyConfig(2048))
	ch, _ := NewChunker(Chunker{Tokenizer: m.Tokenizer, Size: 16})
	started, gate := make(chan string, 16), make(chan struct{})
	q, err := newQueue(QueueConfig{Chunker: ch, MaxJobsPerTenant: 2, MaxPending: 8}, blockingRun(started, gate))
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close(context.Background())
	docs := storyDocs()[:1]
	body, _ := json.Marshal(docs)
	for i := range 2 {
		if code, out := q.HandleSubmit("A", body); code != http.StatusAccepted {
			t.Fatalf("A's job %d: %d %s", i, code, out)
		}
	}
	recv(t, started)
	code, out := q.HandleSubmit("A", body)
	var e struct {
		Error      string `json:"error"`
		RetryAfter int    `json:"retry_after"`
	}
	if err := json.Unmarshal(out, &e); err != nil || code != http.StatusTooManyRequests || e.RetryAfter < 1 || e.Error == "" {
		t.Errorf("A's third job: %d %s, want 429 with error and retry_after >= 1", code, out)
	}
	if _, err := q.Submit("A", docs); !errors.Is(err, ErrTenantBusy) {
		t.Errorf("Submit over the quota: %v, want ErrTenantBusy", err)
	}
	if code, out := q.HandleSubmit("B", body); code != http.StatusAccepted {
		t.Errorf("B's job while A is at its quota: %d %s", code, out)
	}
	gate <- struct{}{} // A's first job finishes
	recv(t, started)
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := q.Submit("A", docs)
		if err == nil {
			break
		}
		if !errors.Is(err, ErrTenantBusy) || time.Now().After(deadline) {
			t.Fatalf("A after a job finished: %v", err)
		}
		time.Sleep(time.Millisecond)
	}
	close(gate)
}
