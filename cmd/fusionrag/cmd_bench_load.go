package main

import (
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/fusionrag/fusionrag/bench"
)

func init() {
	registerBench("load", "the sidecar under concurrency against the engine directly: throughput, p50/p99 TTFT, errors", benchLoad)
	registerBench("e2e", "end-to-end TTFT over HTTP per context size: engine directly against through the sidecar", benchE2E)
}

// targetsFlag collects repeated --target name=URL flags.
type targetsFlag []bench.LoadTarget

func (t *targetsFlag) String() string { return fmt.Sprint(*t) }

func (t *targetsFlag) Set(s string) error {
	name, url, ok := strings.Cut(s, "=")
	if !ok || name == "" || !strings.HasPrefix(url, "http") {
		return fmt.Errorf("want name=http://host:port, got %q", s)
	}
	*t = append(*t, bench.LoadTarget{Name: name, URL: url})
	return nil
}

// loadSetup is what load and e2e share: the model and prompt flags, and the
// targets (given, or an in-process engine and sidecars).
type loadSetup struct {
	bf        benchFlags
	targets   targetsFlag
	datasets  *string
	separator *string
	quiet     *bool
}

func (l *loadSetup) register(fs *flag.FlagSet) {
	l.bf.register(fs, `model of the in-process engine: "stories260K" (default), "synthetic", or a model path`)
	fs.Var(&l.targets, "target", "name=URL of an OpenAI-compatible endpoint, repeatable; the first is the baseline (default: an in-process "+
		"engine, \"direct\", the sidecar in front of it, \"passthrough\", and a sidecar with the fusion path, \"fusion\")")
	l.datasets = fs.String("datasets", "musique", "where the RAG prompts come from (see bench quality)")
	l.separator = fs.String("separator", "", "with --target: the chunk separator of the sidecar's fusion path, written into the prompts of targets named fusion*")
	l.quiet = fs.Bool("quiet", false, "no progress bar")
}

// start returns the targets (fusion targets marked Separated), a prompt
// config (the model's tokenizer cuts the passages; the separator set), the
// model name and a cleanup.
func (l *loadSetup) start(examples int) ([]bench.LoadTarget, bench.QualityConfig, string, func(), error) {
	dss, err := loadDatasets(*l.datasets, examples, 4)
	if err != nil {
		return nil, bench.QualityConfig{}, "", nil, err
	}
	qc := bench.QualityConfig{Datasets: dss, Passages: 4, Separator: *l.separator}
	targets := append([]bench.LoadTarget(nil), l.targets...)
	for i := range targets {
		targets[i].Separated = qc.Separator != "" && strings.HasPrefix(targets[i].Name, "fusion")
	}
	if len(targets) > 0 && l.bf.model == "" {
		qc.Endpoint = "x" // text prompts without a local tokenizer
		return targets, qc, "", func() {}, nil
	}
	m, name, closeModel, err := benchModel(l.bf.model, l.bf.backend, 0)
	if err != nil {
		return nil, qc, "", nil, err
	}
	qc.Model = m
	if len(targets) > 0 {
		return targets, qc, name, closeModel, nil
	}
	st, err := bench.StartStack(bench.StackConfig{Model: m, Fusion: true})
	if err != nil {
		closeModel()
		return nil, qc, "", nil, err
	}
	qc.Separator = bench.StackSeparator
	return []bench.LoadTarget{{Name: "direct", URL: st.EngineURL}, {Name: "passthrough", URL: st.SidecarURL},
			{Name: "fusion", URL: st.FusionURL, Separated: true}}, qc, name,
		func() { st.Close(); closeModel() }, nil
}

// stackNote describes the in-process targets.
func stackNote(name string) string {
	return fmt.Sprintf("Targets: this project's engine serving %s in process (direct); the sidecar in front of it without a fuser "+
		"(passthrough); and a sidecar with the fusion path (fusion): chunks found at the separator %q (stripped, so the engine gets the "+
		"same text), chunk KV raw, computed on the first pass and then read from a memory store, the prompt's KV recomputed with the "+
		"strategy (default fusionrag at 15%%) and pushed to the engine, which loads it and prefills the last token only. Client, sidecars and "+
		"engine share this machine's CPUs. On a model this small a prefill costs little, so the fusion path's fixed work (tokenising, "+
		"segmenting, recomputing, pushing KV over HTTP) weighs heavily: these figures measure the path and its overheads on CPU, not the "+
		"speedup a large model on a GPU gets.", name, bench.StackSeparator)
}

func benchLoad(args []string) error {
	fs := newFlagSet("bench load")
	var l loadSetup
	l.register(fs)
	conc := fs.String("concurrency", "1,4,16", "closed-loop client counts (--quick: 1,4)")
	requests := fs.Int("requests", 48, "requests per target and concurrency (--quick: 8)")
	maxTokens := fs.Int("max-tokens", 16, "completion tokens per request")
	passageTokens := fs.Int("passage-tokens", 64, "each of the 4 passages of a prompt cut to N tokens")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if l.bf.quick {
		if !flagSet(fs, "concurrency") {
			*conc = "1,4"
		}
		if !flagSet(fs, "requests") {
			*requests = 8
		}
	}
	levels, err := parseInts(*conc)
	if err != nil {
		return err
	}
	targets, qc, name, cleanup, err := l.start(32)
	if err != nil {
		return err
	}
	defer cleanup()
	// Room for the completion and for the separators: a request the fusion
	// path gives up on is forwarded as sent, separators included.
	qc.PassageTokens, qc.AnswerTokens = *passageTokens, *maxTokens+48
	prompts, err := bench.PromptTexts(qc, 32)
	if err != nil {
		return err
	}
	ctx, stop := benchContext()
	defer stop()
	start := time.Now()
	rows, err := bench.RunLoad(ctx, bench.LoadConfig{Targets: targets, Prompts: prompts, Separator: qc.Separator, Concurrency: levels, Requests: *requests,
		MaxTokens: *maxTokens, Progress: os.Stderr, Quiet: *l.quiet})
	if err != nil {
		return err
	}
	var notes []string
	if len(l.targets) == 0 {
		notes = append(notes, stackNote(name), fmt.Sprintf("Prompts: %d MuSiQue RAG prompts (4 passages of %d tokens, CacheBlend template), "+
			"sent round-robin; greedy, %d tokens each.", len(prompts), *passageTokens, *maxTokens))
	}
	return l.bf.write("load", name, []bench.Table{bench.LoadTable(rows, time.Since(start))}, rows, bench.LoadPlots(rows), notes...)
}

func benchE2E(args []string) error {
	fs := newFlagSet("bench e2e")
	var l loadSetup
	l.register(fs)
	contexts := fs.String("contexts", "32,64,128,192", "context sizes (chunk tokens, 4 passages; stories260K's 512 positions hold S, Q and about 200 more) (--quick: 64,128)")
	prompts := fs.Int("prompts", 4, "prompts per size (--quick: 2)")
	repeats := fs.Int("repeats", 3, "requests per prompt and target (--quick: 1)")
	ratios := fs.String("ratios", "5,15,30", "in-process stack: fusionrag ratios of the fusion targets, percent (--quick: 15)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if l.bf.quick {
		if !flagSet(fs, "contexts") {
			*contexts = "64,128"
		}
		if !flagSet(fs, "prompts") {
			*prompts = 2
		}
		if !flagSet(fs, "repeats") {
			*repeats = 1
		}
		if !flagSet(fs, "ratios") {
			*ratios = "15"
		}
	}
	rs, err := parsePercents(*ratios)
	if err != nil {
		return err
	}
	sizes, err := parseInts(*contexts)
	if err != nil {
		return err
	}
	targets, qc, name, cleanup, err := l.start(*prompts * 4)
	if err != nil {
		return err
	}
	defer cleanup()
	if len(l.targets) == 0 { // the fusion sidecar once per strategy × ratio
		fusion := targets[2]
		targets = targets[:2]
		targets = append(targets, bench.LoadTarget{Name: "fusion reuse", URL: fusion.URL, Separated: true,
			Headers: map[string]string{"X-Fusionrag-Strategy": "reuse"}})
		for _, r := range rs {
			targets = append(targets, bench.LoadTarget{Name: fmt.Sprintf("fusion fusionrag %g%%", r*100), URL: fusion.URL, Separated: true,
				Headers: map[string]string{"X-Fusionrag-Strategy": "fusionrag", "X-Fusionrag-Ratio": fmt.Sprint(r)}})
		}
	}
	var e2e []bench.E2EPrompts
	for _, n := range sizes {
		qc.PassageTokens, qc.AnswerTokens = max(1, n/4), 48 // completion and separators (see benchLoad)
		ps, err := bench.PromptTexts(qc, *prompts)
		if err != nil {
			return err
		}
		if len(ps) == 0 {
			return fmt.Errorf("no prompt of context %d fits the model", n)
		}
		e2e = append(e2e, bench.E2EPrompts{ContextTokens: n, Prompts: ps})
	}
	ctx, stop := benchContext()
	defer stop()
	start := time.Now()
	rows, err := bench.RunE2E(ctx, bench.E2EConfig{Targets: targets, Sizes: e2e, Separator: qc.Separator, Repeats: *repeats,
		Progress: os.Stderr, Quiet: *l.quiet})
	if err != nil {
		return err
	}
	var notes []string
	if len(l.targets) == 0 {
		notes = append(notes, stackNote(name), "Prompts: MuSiQue, CacheBlend template, 4 passages each cut to context/4 tokens "+
			"(prompt tokens as the engine counted them); 4 completion tokens.")
	}
	return l.bf.write("e2e", name, []bench.Table{bench.E2ETable(rows, time.Since(start))}, rows, bench.E2EPlots(rows), notes...)
}
