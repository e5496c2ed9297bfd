package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/fusionrag/fusionrag/fingerprint"

	"github.com/fusionrag/fusionrag/fusion"
	"github.com/fusionrag/fusionrag/kvstore"
	"github.com/fusionrag/fusionrag/model"
)

func init() {
	register("ingest", "offline fusion of a corpus: raw and fused chunk KV into the store", runIngest)
}

func defaultStoreURL() string {
	d, err := os.UserCacheDir()
	if err != nil {
		d = os.TempDir()
	}
	return "disk://" + filepath.Join(d, "fusionrag", "kv")
}

func runIngest(args []string) error {
	fs := newFlagSet("ingest")
	modelPath := fs.String("model", "", "model that computes the KV (required): "+modelFormats)
	tok := fs.String("tokenizer", "", "tokenizer file (default: found beside the model)")
	corpus := fs.String("corpus", "", "JSONL corpus ({id,text,title?}, {id,chunks}, or RAG {ctxs}); .gz accepted")
	store := fs.String("store", defaultStoreURL(), "KV store URL(s), comma-separated tiers")
	neighbours := fs.Int("neighbours", fusion.DefaultNeighbours, "neighbours fused into each chunk")
	chunkTokens := fs.Int("chunk-tokens", fusion.DefaultChunkTokens, "document tokens per chunk (with --template passage: the sidecar's fusion.paragraph_max_tokens, 256 by default)")
	template := fs.String("template", "document", "how prompts present the documents: document (\"Document: title\" header per chunk) or passage (the text whole after a blank line, as LangChain/LlamaIndex do; see docs/recognition.md)")
	overlap := fs.Int("chunk-overlap", 0, "tokens shared by consecutive chunks")
	workers := fs.Int("workers", 0, "chunks computed at once (0: GOMAXPROCS)")
	batch := fs.Int("batch", 8, "chunks a worker takes at a time")
	embURL := fs.String("embeddings-url", "", "OpenAI-compatible embeddings endpoint (default: BM25)")
	embModel := fs.String("embeddings-model", "", "model name sent to the embeddings endpoint")
	rawOnly := fs.Bool("raw-only", false, "store raw KV only (no neighbours, no fused KV)")
	limit := fs.Int("limit", 0, "ingest only the first N documents (0: all)")
	system := fs.String("system", "", "system text S every prompt starts with (after BOS); part of every key")
	tenant := fs.String("tenant", "", "tenant the KV belongs to: the value a trusted gateway sets in the tenant header the sidecar is configured to trust (tenant.header; none by default); default: requests with no API key (anonymous)")
	apiKey := fs.String("api-key", "", "tenant given as the API key its requests send (only its hash is used); exclusive with --tenant")
	dtype := fs.String("dtype", "f32", "stored KV element type: f32, f16 or bf16")
	backend := backendFlag(fs)
	jsonOut := fs.String("json", "", "also write the summary as JSON to this file")
	quiet := fs.Bool("quiet", false, "no progress bar")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *modelPath == "" || *corpus == "" {
		return errors.New("--model and --corpus are required")
	}
	tmpl, err := fusion.TemplateNamed(*template)
	if err != nil {
		return err
	}
	dt, err := kvstore.ParseDType(*dtype)
	if err != nil {
		return err
	}
	m, err := model.Load(*modelPath, model.LoadOptions{Tokenizer: *tok, Backend: *backend})
	if err != nil {
		return err
	}
	defer m.Close()
	if m.Tokenizer == nil {
		return errors.New("the model has no tokenizer: give --tokenizer")
	}
	st, err := kvstore.Open(*store)
	if err != nil {
		return err
	}
	defer st.Close()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var progress io.Writer = os.Stderr
	if *quiet {
		progress = nil
	}
	tenantID := fingerprint.Tenant(fingerprint.TenantAnonymous, "")
	switch {
	case *tenant != "" && *apiKey != "":
		return errors.New("--tenant and --api-key are exclusive")
	case *tenant != "":
		tenantID = fingerprint.Tenant(fingerprint.TenantFromHeader, *tenant)
	case *apiKey != "":
		tenantID = fingerprint.Tenant(fingerprint.TenantFromAPIKey, *apiKey)
	}
	cfg := fusion.Config{Model: m, Store: st, Tenant: tenantID, Prefix: fusion.EncodePrefix(m.Tokenizer, *system),
		Neighbours: *neighbours, RawOnly: *rawOnly, Workers: *workers, BatchSize: *batch, DType: dt, Progress: progress}
	if *embURL != "" {
		cfg.Similarity = &fusion.Embeddings{URL: *embURL, Model: *embModel, APIKey: os.Getenv("FUSIONRAG_EMBEDDINGS_KEY")}
	}
	in, err := fusion.NewIngester(ctx, cfg)
	if err != nil {
		return err
	}
	ch, err := fusion.NewChunker(fusion.Chunker{Tokenizer: m.Tokenizer, Template: tmpl, Size: *chunkTokens, Overlap: *overlap,
		MaxTokens: m.Config.MaxPositions - len(cfg.Prefix)})
	if err != nil {
		return err
	}
	f, err := fusion.OpenCorpus(*corpus)
	if err != nil {
		return err
	}
	t := time.Now()
	chunks, ls, err := fusion.LoadChunks(f, ch, *limit, 0)
	f.Close()
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "corpus %s: %d lines, %d documents, %d chunks (%d malformed lines, %d empty documents, %d rejected chunks) in %s\n",
		*corpus, ls.Lines, ls.Documents, ls.Chunks, ls.Malformed, ls.Empty, ls.Rejected, time.Since(t).Round(time.Millisecond))
	for _, e := range ls.Errors {
		fmt.Fprintf(os.Stderr, "  skipped %v\n", e)
	}
	for _, e := range ls.Rejections {
		fmt.Fprintf(os.Stderr, "  rejected %s\n", e)
	}
	sum, runErr := in.Run(ctx, chunks)
	fmt.Fprintf(os.Stderr, "%s\n", sum)
	if *jsonOut != "" {
		b, _ := json.MarshalIndent(struct {
			Corpus  fusion.LoadStats `json:"corpus"`
			Summary fusion.Summary   `json:"summary"`
			PerMin  float64          `json:"chunks_per_min"`
		}{ls, sum, sum.ChunksPerMin()}, "", "  ")
		if err := os.WriteFile(*jsonOut, append(b, '\n'), 0o644); err != nil {
			return err
		}
	}
	if runErr != nil {
		if sum.Interrupted {
			return fmt.Errorf("interrupted (%w); stored work is kept, run again to resume", runErr)
		}
		return runErr
	}
	return nil
}
