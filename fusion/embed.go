package fusion

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"strings"
	"time"
)

// Embeddings ranks chunks by the inner product of their embeddings (the
// paper's BGE-M3 setting), fetched from an OpenAI-compatible
// POST /v1/embeddings endpoint. Ties break by chunk index.
type Embeddings struct {
	// URL is the endpoint: a URL ending in /embeddings is used as is,
	// anything else gets /v1/embeddings appended. Required.
	URL string
	// Model is the "model" field of the requests; may be empty for servers
	// that serve one model.
	Model string
	// APIKey, when set, is sent as a Bearer token.
	APIKey string
	// BatchSize is the number of texts per request; 0 selects 64.
	BatchSize int
	// Client is the HTTP client; nil uses one with a 60 s timeout.
	Client *http.Client
	// Template renders the text that is embedded; zero value: the chunk's
	// title and text joined by a newline.
	Template Template
}

// Name implements Neighbourer.
func (e *Embeddings) Name() string { return "emb:" + e.Model }

// ErrEmbeddings wraps every failure of the embeddings endpoint.
var ErrEmbeddings = errors.New("fusion: embeddings endpoint")

func (e *Embeddings) endpoint() string {
	u := strings.TrimRight(e.URL, "/")
	if strings.HasSuffix(u, "/embeddings") {
		return u
	}
	return u + "/v1/embeddings"
}

// Embed returns one vector per text, all of the same length.
func (e *Embeddings) Embed(ctx context.Context, texts []string) ([][]float32, error) {
	if e.URL == "" {
		return nil, fmt.Errorf("%w: no URL", ErrEmbeddings)
	}
	bs := e.BatchSize
	if bs <= 0 {
		bs = 64
	}
	cl := e.Client
	if cl == nil {
		cl = &http.Client{Timeout: 60 * time.Second}
	}
	out := make([][]float32, 0, len(texts))
	for i := 0; i < len(texts); i += bs {
		batch := texts[i:min(i+bs, len(texts))]
		vs, err := e.embedBatch(ctx, cl, batch)
		if err != nil {
			return nil, fmt.Errorf("texts [%d, %d): %w", i, i+len(batch), err)
		}
		if len(out) > 0 && len(vs[0]) != len(out[0]) {
			return nil, fmt.Errorf("%w: dimension changed from %d to %d", ErrEmbeddings, len(out[0]), len(vs[0]))
		}
		out = append(out, vs...)
	}
	return out, nil
}

type embedRequest struct {
	Model string   `json:"model,omitempty"`
	Input []string `json:"input"`
}

type embedResponse struct {
	Data []struct {
		Index     int       `json:"index"`
		Embedding []float32 `json:"embedding"`
	} `json:"data"`
}

func (e *Embeddings) embedBatch(ctx context.Context, cl *http.Client, texts []string) ([][]float32, error) {
	body, _ := json.Marshal(embedRequest{Model: e.Model, Input: texts})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, e.endpoint(), bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrEmbeddings, err)
	}
	req.Header.Set("Content-Type", "application/json")
	if e.APIKey != "" {
		req.Header.Set("Authorization", "Bearer "+e.APIKey)
	}
	resp, err := cl.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrEmbeddings, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 1<<30))
	if err != nil {
		return nil, fmt.Errorf("%w: reading the response: %v", ErrEmbeddings, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%w: HTTP %d: %s", ErrEmbeddings, resp.StatusCode, truncate(string(raw), 200))
	}
	var er embedResponse
	if err := json.Unmarshal(raw, &er); err != nil {
		return nil, fmt.Errorf("%w: bad JSON: %v", ErrEmbeddings, err)
	}
	if len(er.Data) != len(texts) {
		return nil, fmt.Errorf("%w: %d embeddings for %d inputs", ErrEmbeddings, len(er.Data), len(texts))
	}
	out := make([][]float32, len(texts))
	for _, d := range er.Data {
		if d.Index < 0 || d.Index >= len(texts) || out[d.Index] != nil {
			return nil, fmt.Errorf("%w: bad or repeated index %d", ErrEmbeddings, d.Index)
		}
		if len(d.Embedding) == 0 || (len(out[0]) > 0 && len(d.Embedding) != len(out[0])) {
			return nil, fmt.Errorf("%w: embedding %d has %d dimensions", ErrEmbeddings, d.Index, len(d.Embedding))
		}
		for _, x := range d.Embedding {
			if math.IsNaN(float64(x)) || math.IsInf(float64(x), 0) {
				return nil, fmt.Errorf("%w: embedding %d is not finite", ErrEmbeddings, d.Index)
			}
		}
		out[d.Index] = d.Embedding
	}
	dim := len(out[0])
	for i, v := range out {
		if len(v) != dim {
			return nil, fmt.Errorf("%w: embedding %d has %d dimensions, want %d", ErrEmbeddings, i, len(v), dim)
		}
	}
	return out, nil
}

// Neighbours implements Neighbourer: exact inner-product search over all
// pairs (O(N² × dim)), positive and negative similarities alike.
func (e *Embeddings) Neighbours(ctx context.Context, chunks []Chunk, n int) ([][]int, error) {
	if n < 0 {
		return nil, fmt.Errorf("fusion: %d neighbours", n)
	}
	texts := make([]string, len(chunks))
	for i, c := range chunks {
		if e.Template != (Template{}) {
			texts[i] = e.Template.Render(c.Title, c.Text)
		} else if c.Title != "" {
			texts[i] = c.Title + "\n" + c.Text
		} else {
			texts[i] = c.Text
		}
	}
	vs, err := e.Embed(ctx, texts)
	if err != nil {
		return nil, err
	}
	out := make([][]int, len(chunks))
	for q := range vs {
		if q%64 == 0 {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
		}
		r := newRanking(n)
		for d := range vs {
			if d == q || n == 0 {
				continue
			}
			var s float32
			for k, x := range vs[q] {
				s += x * vs[d][k]
			}
			r.offer(scored{d, s})
		}
		out[q] = r.docs()
	}
	return out, nil
}
