// Package fusion is FusionRAG's offline stage: it turns a corpus into
// position-free chunk KV that already carries cross-chunk information, so
// that reusing it online loses less than reusing KV computed in isolation.
//
// The pipeline:
//
//  1. Corpus: JSONL documents ({id, text, title?}, pre-chunked {id,
//     chunks}, or the ctxs of a RAG evaluation set) are read line by line;
//     bad lines are reported with their line number and skipped (ReadCorpus).
//  2. Chunks: each document is cut into windows of Chunker.Size tokens
//     (Overlap shared) and presented with a Template, the same one the
//     sidecar uses to write chunks into prompts; a chunk's ids are
//     Template.Tokens (see EncodeSegment for the exact contract).
//  3. Neighbours: for every chunk its n most similar other chunks (BM25 in
//     pure Go by default, or inner product of embeddings from an
//     OpenAI-compatible /v1/embeddings endpoint).
//  4. KV (Builder): raw KV = prefill of S + C keeping C; fused KV = C
//     prefilled on top of S and its neighbours' raw KV laid out back to back
//     (placed by RoPE), keeping C. Both are stored position-free (K before
//     RoPE, as if C started right after S) under fingerprint.ChunkKeyAfter with
//     the variant, S and the fusion parameters (fingerprint.FusionParams)
//     in the key.
//  5. Ingest (Ingester): a worker pool over batches of chunks with a
//     progress bar, resumable (stored chunks are skipped), deterministic,
//     ending with a Summary. Queue runs ingest jobs submitted over HTTP by
//     the sidecar (POST /v1/fusion/documents).
//
// What the serving side must do to hit the stored KV: build prompts as
// EncodePrefix(S) + Template.Tokens(chunk)... + EncodeSegment(question),
// and look chunks up with fingerprint.ChunkKeyAfter(
// fingerprint.ChunkNamespace(model, tokenizer, tenant,
// fingerprint.FusionParams(n, similarity)), variant, S, chunk ids).
package fusion

import (
	"errors"
	"fmt"
	"io"
)

// LoadStats are ReadStats plus what chunking rejected.
type LoadStats struct {
	ReadStats
	// Chunks is the number of chunks produced.
	Chunks int `json:"chunks"`
	// Rejected chunks did not fit the model (Chunker.MaxTokens); Rejections
	// keeps the first MaxErrors messages.
	Rejected   int      `json:"rejected"`
	Rejections []string `json:"-"`
}

// split appends the chunks of d to out; a chunk that does not fit counts as
// rejected, its message kept among the first MaxErrors.
func (st *LoadStats) split(out []Chunk, ch *Chunker, d Document) []Chunk {
	cs, err := ch.Split(d)
	out = append(out, cs...)
	if err != nil {
		st.Rejected++
		if len(st.Rejections) < MaxErrors {
			st.Rejections = append(st.Rejections, err.Error())
		}
	}
	return out
}

var errLimit = errors.New("limit reached")

// LoadChunks reads a JSONL corpus (see ReadCorpus) and chunks it. limit > 0
// stops after that many documents. Lines over maxLine bytes (0: the default)
// are skipped.
func LoadChunks(r io.Reader, ch *Chunker, limit, maxLine int) ([]Chunk, LoadStats, error) {
	var st LoadStats
	var out []Chunk
	docs := 0
	rs, err := ReadCorpus(r, maxLine, func(d Document) error {
		if limit > 0 && docs >= limit {
			return errLimit
		}
		docs++
		out = st.split(out, ch, d)
		return nil
	})
	st.ReadStats = rs
	if errors.Is(err, errLimit) {
		st.Documents = docs
		err = nil
	}
	st.Chunks = len(out)
	if err != nil {
		return out, st, fmt.Errorf("fusion: reading the corpus: %w", err)
	}
	return out, st, nil
}

// ChunkDocuments chunks documents already in memory (the HTTP endpoint's).
func ChunkDocuments(docs []Document, ch *Chunker) ([]Chunk, LoadStats) {
	var st LoadStats
	var out []Chunk
	for _, d := range docs {
		if d.empty() {
			st.Empty++
			continue
		}
		st.Documents++
		out = st.split(out, ch, d)
	}
	st.Chunks = len(out)
	return out, st
}
