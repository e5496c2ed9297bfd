package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/fusionrag/fusionrag/bench"
	"github.com/fusionrag/fusionrag/internal/shareddata"
	"github.com/fusionrag/fusionrag/model"
)

func init() {
	registerBench("quality", "QA F1 / exact match / normalised F1 and fidelity to full per strategy × ratio (MuSiQue, NQ-open, LongBench JSONL)", benchQuality)
}

// storiesNote is what a 260K-parameter model can and cannot tell.
const storiesNote = "stories260K is a 260K-parameter model trained on children's stories with a 512-token context: it cannot " +
	"answer questions, so its F1 and EM against the gold answers are near zero for every strategy and normalised F1 is " +
	"undefined or noise. What it does measure is how far each strategy's output is from full prefill's: the answer's F1 " +
	"against full's own answer, the share of identical answers, and the KL / top-1 agreement of the next-token distributions."

// benchModel resolves --model for the harnesses that need a tokenizer:
// "" or "stories260K" = the shared stories260K; "synthetic" = a synthetic
// Llama (random weights, byte-level tokenizer) written to a temporary
// directory with maxPositions positions; otherwise a model path.
func benchModel(spec, backend string, maxPositions int) (*model.Model, string, func(), error) {
	switch spec {
	case "", "stories260K":
		dir, err := shareddata.MustDir()
		if err != nil {
			return nil, "", nil, err
		}
		m, err := model.Load(filepath.Join(dir, "models", "stories260K", "stories260K.bin"), model.LoadOptions{Backend: backend})
		if err != nil {
			return nil, "", nil, err
		}
		return m, "stories260K", func() { m.Close() }, nil
	case "synthetic":
		cfg := bench.SyntheticFidelityModel()
		cfg.MaxPositions = max(cfg.MaxPositions, maxPositions)
		dir, err := os.MkdirTemp("", "fusionrag-bench-model-")
		if err != nil {
			return nil, "", nil, err
		}
		if err := model.WriteSynthetic(dir, cfg, 7, model.SaveOptions{}); err != nil {
			os.RemoveAll(dir)
			return nil, "", nil, err
		}
		m, err := model.Load(dir, model.LoadOptions{Backend: backend})
		if err != nil {
			os.RemoveAll(dir)
			return nil, "", nil, err
		}
		return m, fmt.Sprintf("synthetic-%dL-%dd", cfg.Layers, cfg.Dim), func() { m.Close(); os.RemoveAll(dir) }, nil
	default:
		m, err := model.Load(spec, model.LoadOptions{Backend: backend})
		if err != nil {
			return nil, "", nil, err
		}
		return m, filepath.Base(spec), func() { m.Close() }, nil
	}
}

// loadDatasets resolves --datasets: "musique" (the CacheBlend MuSiQue set),
// "nq" (NQ-open oracle, given k-1 distractor passages from the other
// questions), or paths to JSON / JSONL(.gz) files.
func loadDatasets(spec string, examples, k int) ([]*bench.Dataset, error) {
	var out []*bench.Dataset
	for _, name := range strings.Split(spec, ",") {
		name = strings.TrimSpace(name)
		var path string
		switch name {
		case "":
			continue
		case "musique", "nq":
			dir, err := shareddata.MustDir()
			if err != nil {
				return nil, err
			}
			path = filepath.Join(dir, "rag", map[string]string{"musique": "cacheblend_musique_s.json", "nq": "nq-open-oracle.jsonl.gz"}[name])
		default:
			path = name
		}
		ds, err := bench.LoadDataset(path)
		if err != nil {
			return nil, err
		}
		ds.Limit(examples)
		ds.AddDistractors(k, 1)
		out = append(out, ds)
	}
	if len(out) == 0 {
		return nil, errors.New("no dataset given")
	}
	return out, nil
}

func benchQuality(args []string) error {
	fs := newFlagSet("bench quality")
	var bf benchFlags
	bf.register(fs, `model answering in process: "stories260K" (default), "synthetic", or a model path`)
	datasets := fs.String("datasets", "musique,nq", `comma-separated: "musique", "nq", or JSON / JSONL(.gz) files of {question, answers, ctxs}`)
	examples := fs.Int("examples", 100, "examples per dataset, the first ones (0: all; --quick: 3)")
	passages := fs.Int("passages", 10, "k: the first k passages of each example are the chunks")
	passageTokens := fs.Int("passage-tokens", 0, "cut each passage to N tokens (0: no cut; in process chunks are also cut to fit the model)")
	passageChars := fs.Int("passage-chars", 0, "endpoint without a local tokenizer: cut each passage to N bytes at a word boundary")
	answerTokens := fs.Int("answer-tokens", 16, "most tokens per answer")
	strategies := fs.String("strategies", "fusionrag,cacheblend,epic", "strategies besides full and reuse")
	ratios := fs.String("ratios", "5,15,30", "ratios in percent")
	endpoint := fs.String("endpoint", "", "answer through an OpenAI-compatible endpoint (e.g. the sidecar) instead of in process")
	endpointModel := fs.String("endpoint-model", "", `"model" field of the endpoint's requests`)
	separator := fs.String("separator", "", "with --endpoint: chunk separator written before every passage and the question (the sidecar's fusion.separator)")
	results := fs.String("results", "", "resumable per-example results file (JSON lines); default <out>/quality-results.jsonl with --out")
	quiet := fs.Bool("quiet", false, "no progress bar")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	rs, err := parsePercents(*ratios)
	if err != nil {
		return err
	}
	if bf.quick && !flagSet(fs, "examples") {
		*examples = 3
	}
	if *results == "" && bf.out != "" {
		if err := os.MkdirAll(bf.out, 0o755); err != nil {
			return err
		}
		*results = filepath.Join(bf.out, "quality-results.jsonl")
	}
	dss, err := loadDatasets(*datasets, *examples, *passages)
	if err != nil {
		return err
	}
	cfg := bench.QualityConfig{Datasets: dss, Passages: *passages, PassageTokens: *passageTokens, PassageChars: *passageChars,
		AnswerTokens: *answerTokens, Strategies: strings.Split(*strategies, ","), Ratios: rs, Endpoint: *endpoint,
		EndpointModel: *endpointModel, Separator: *separator, ResultsFile: *results, Progress: os.Stderr, Quiet: *quiet}
	name := *endpoint
	if *endpoint == "" || bf.model != "" {
		m, mname, closeModel, err := benchModel(bf.model, bf.backend, 0)
		if err != nil {
			return err
		}
		defer closeModel()
		cfg.Model, name = m, mname
	}
	cfg.Name = name
	ctx, stop := benchContext()
	defer stop()
	start := time.Now()
	rows, _, err := bench.RunQuality(ctx, cfg)
	if err != nil {
		return err
	}
	notes := []string{fmt.Sprintf("Prompt: CacheBlend's MuSiQue template (instruction prefix as S after BOS, each passage "+
		"\"<title>\\n\\n<text>\\n\\n\" as one chunk, then the query prompt, the question and \"\\nAnswer:\"); the first %d passages of each "+
		"example; each passage cut to %s; answers greedy, at most %d tokens, scored on their first line. NQ-open (oracle: one gold passage) "+
		"gets k-1 distractors, gold passages of other questions, the gold at a seeded position. Chunk KV is raw KV (prefill of S + C): "+
		"the fusionrag strategy here is FusionRAG's online selection over raw chunk KV.", *passages, cutNote(*passageTokens, cfg.Model != nil && *endpoint == ""), *answerTokens)}
	if name == "stories260K" || strings.HasPrefix(name, "synthetic") {
		notes = append(notes, storiesNote)
	}
	return bf.write("quality", name, bench.QualityTables(rows, time.Since(start)), rows, bench.QualityPlots(rows), notes...)
}

func cutNote(tokens int, inProcess bool) string {
	s := "no fixed length"
	if tokens > 0 {
		s = fmt.Sprintf("its first %d tokens", tokens)
	}
	if inProcess {
		s += ", and further to an equal share of the positions that S, Q and the answer leave in the model's context"
	}
	return s
}
