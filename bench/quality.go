package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/fusionrag/fusionrag/chunkkv"
	"github.com/fusionrag/fusionrag/fusion"
	"github.com/fusionrag/fusionrag/kvstore"
	"github.com/fusionrag/fusionrag/model"
	"github.com/fusionrag/fusionrag/recompute"
)

// Template is a RAG QA prompt: S = BOS + Prefix, one chunk per passage,
// Q = Query + the question + Answer.
type Template struct {
	// Prefix is the instruction, S after BOS.
	Prefix string
	// Query goes between the last passage and the question.
	Query string
	// Answer follows the question.
	Answer string
}

// CacheBlendTemplate is the prompt of CacheBlend's MuSiQue evaluation
// (blend_musique.py): the instruction prefix, each passage as
// "<title>\n\n<text>\n\n", then the query prompt, the question (a "?"
// appended when missing, its first letter lower-cased) and "\nAnswer:".
var CacheBlendTemplate = Template{
	Prefix: "You will be asked a question after reading several passages. Please directly answer the question based on the given passages. Do NOT repeat the question. The answer should be within 5 words..\nPassages:\n",
	Query:  "\n\nAnswer the question directly based on the given passages. Do NOT repeat the question. The answer should be within 5 words. \nQuestion:",
	Answer: "\nAnswer:",
}

// PassageText is one passage as a chunk's text.
func (Template) PassageText(p Passage) string { return p.Title + "\n\n" + p.Text + "\n\n" }

// QuestionText is Q's text for a question.
func (t Template) QuestionText(q string) string {
	q = strings.TrimSpace(q)
	if !strings.HasSuffix(q, "?") {
		q += "?"
	}
	if r := []rune(q); len(r) > 0 {
		q = strings.ToLower(string(r[0])) + string(r[1:])
	}
	return t.Query + q + t.Answer
}

// QualityConfig configures RunQuality, which fills zero fields with the
// defaults documented here.
type QualityConfig struct {
	// Model answers in process (with its tokenizer) and gives the fidelity
	// figures. With Endpoint set it is optional: its tokenizer, when given,
	// only cuts passages to PassageTokens.
	Model *model.Model
	// Endpoint, when set, is the base URL of an OpenAI-compatible server
	// (the sidecar or an engine): answers come from POST
	// Endpoint/v1/completions with the strategy and ratio in the
	// X-Fusionrag-Strategy / X-Fusionrag-Ratio headers. No fidelity figures
	// then (the API returns no full distributions).
	Endpoint string
	// EndpointModel is the request's "model" field.
	EndpointModel string
	// Client does the endpoint's requests; default a client with a 5 minute
	// timeout.
	Client *http.Client
	// Name labels the model in the report.
	Name string
	// Datasets are measured one after the other. Required.
	Datasets []*Dataset
	// Template is the prompt; default CacheBlendTemplate.
	Template *Template
	// Passages is k, the first k passages of each example used as chunks;
	// default 10.
	Passages int
	// PassageTokens cuts each passage to its first N tokens (0: no cut).
	// In process, chunks are further cut to an equal share of the positions
	// left by S, Q and the answer, so the prompt always fits the model.
	PassageTokens int
	// PassageChars cuts each passage's text to N bytes at a word boundary
	// when no tokenizer is available (endpoint mode); 0: no cut.
	PassageChars int
	// AnswerTokens is the most tokens decoded per answer; default 16.
	AnswerTokens int
	// Separator, when set, is written before every chunk and before Q in
	// text prompts (endpoint mode, PromptTexts): the LMCache convention
	// S sep C_1 sep ... sep Q by which the sidecar's fusion path finds the
	// chunks (its fusion.separator).
	Separator string
	// Strategies measured besides full and reuse; default fusionrag,
	// cacheblend, epic.
	Strategies []string
	// Ratios of each strategy; default 5, 15, 30 %.
	Ratios []float64
	// ResultsFile, when set, is the resumable per-example results file (JSON
	// lines, one QualityResult per example × method): results already there
	// for the same run settings are not measured again.
	ResultsFile string
	// Progress receives the progress bar (see NewProgress); Quiet silences it.
	Progress io.Writer
	Quiet    bool
}

func (c *QualityConfig) fill() error {
	if c.Model == nil && c.Endpoint == "" {
		return errors.New("bench: QualityConfig needs a Model or an Endpoint")
	}
	if c.Endpoint == "" && c.Model.Tokenizer == nil {
		return errors.New("bench: quality in process needs a model with a tokenizer")
	}
	if len(c.Datasets) == 0 {
		return errors.New("bench: QualityConfig.Datasets is empty")
	}
	if c.Template == nil {
		t := CacheBlendTemplate
		c.Template = &t
	}
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&c.Passages, 10)
	def(&c.AnswerTokens, 16)
	if c.Strategies == nil {
		c.Strategies = []string{"fusionrag", "cacheblend", "epic"}
	}
	if c.Ratios == nil {
		c.Ratios = []float64{0.05, 0.15, 0.30}
	}
	for _, r := range c.Ratios {
		if !(r >= 0 && r <= 1) {
			return fmt.Errorf("bench: ratio %v outside [0, 1]", r)
		}
	}
	if c.Name == "" {
		c.Name = "model"
	}
	if c.Client == nil {
		c.Client = &http.Client{Timeout: 5 * time.Minute}
	}
	return nil
}

// runKey identifies the settings results depend on; results of another run
// key in the results file are ignored.
func (c *QualityConfig) runKey() string {
	src := "in-process"
	if c.Endpoint != "" {
		src = "endpoint " + c.Endpoint
	}
	return fmt.Sprintf("%s|%s|k=%d|tok=%d|chars=%d|ans=%d|tmpl=%d|sep=%q", c.Name, src, c.Passages, c.PassageTokens, c.PassageChars,
		c.AnswerTokens, len(c.Template.Prefix)+len(c.Template.Query)+len(c.Template.Answer), c.Separator)
}

// QualityResult is one example answered by one method.
type QualityResult struct {
	// Run is the settings key (see QualityConfig); Key "<example>|<strategy>|<ratio>".
	Run        string  `json:"run"`
	Key        string  `json:"key"`
	Dataset    string  `json:"dataset"`
	Example    string  `json:"example"`
	Strategy   string  `json:"strategy"`
	Ratio      float64 `json:"ratio"`
	Answer     string  `json:"answer"`
	F1         float64 `json:"f1"`
	EM         bool    `json:"em"`
	F1ToFull   float64 `json:"f1_to_full"`
	SameAsFull bool    `json:"same_as_full"`
	// KL is the mean KL(full || method) over the next-token distributions
	// of full's answer, teacher-forced; Top1 the fraction of them whose
	// argmax agrees. Absent in endpoint mode.
	KL    *float64 `json:"kl,omitempty"`
	Top1  *float64 `json:"top1,omitempty"`
	Steps int      `json:"steps,omitempty"`
	// Prompt shape: tokens of the prompt and of its chunks; recomputed
	// context tokens; FLOPs / full's FLOPs.
	PromptTokens  int     `json:"prompt_tokens,omitempty"`
	ContextTokens int     `json:"context_tokens,omitempty"`
	Recomputed    int     `json:"recomputed,omitempty"`
	CostRatio     float64 `json:"cost_ratio,omitempty"`
	Millis        float64 `json:"ms"`
}

// QualityRow aggregates one dataset × strategy × ratio. Scores are in
// percent. Fields that cannot be defined are null: NormalizedF1 when
// F1_full = F1_reuse, the fidelity figures in endpoint mode.
type QualityRow struct {
	Dataset  string  `json:"dataset"`
	Model    string  `json:"model"`
	Source   string  `json:"source"`
	Strategy string  `json:"strategy"`
	Ratio    float64 `json:"ratio"`
	Examples int     `json:"examples"`
	F1       float64 `json:"f1"`
	EM       float64 `json:"em"`
	// NormalizedF1 = 100 × (F1 − F1_reuse) / (F1_full − F1_reuse).
	NormalizedF1 *float64 `json:"normalized_f1"`
	// F1ToFull scores the answer against full's answer as the gold one;
	// SameAsFull is the share of answers identical to full's (normalised).
	F1ToFull   float64  `json:"f1_to_full"`
	SameAsFull float64  `json:"same_as_full"`
	KL         *float64 `json:"kl"`
	Top1       *float64 `json:"top1"`
	// NormalizedFidelity = 100 × (KL_reuse − KL) / KL_reuse, reuse of raw
	// chunk KV (the paper's baseline): reuse exactly 0, full exactly 100.
	NormalizedFidelity *float64 `json:"normalized_fidelity"`
	// Mean prompt and context tokens, recomputed share, FLOPs vs full.
	PromptTokens  float64 `json:"prompt_tokens"`
	ContextTokens float64 `json:"context_tokens"`
	Recomputed    float64 `json:"recomputed"`
	CostRatio     float64 `json:"cost_ratio"`
}

// qualityMethod is one strategy at one ratio.
type qualityMethod struct {
	strategy string
	ratio    float64
}

func (c *QualityConfig) methods() []qualityMethod {
	ms := []qualityMethod{{"full", 1}, {"reuse", 0}}
	for _, s := range c.Strategies {
		if s == "full" || s == "reuse" {
			continue
		}
		for _, r := range c.Ratios {
			ms = append(ms, qualityMethod{s, r})
		}
	}
	return ms
}

func resultKey(example string, m qualityMethod) string {
	return example + "|" + m.strategy + "|" + strconv.FormatFloat(m.ratio, 'g', -1, 64)
}

// readResults loads the results file's records of run; a torn last line
// (a crash mid-write) and other runs' lines are skipped.
func readResults(path, run string) (map[string]QualityResult, error) {
	out := map[string]QualityResult{}
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return out, nil
	}
	if err != nil {
		return nil, err
	}
	for _, line := range bytes.Split(b, []byte("\n")) {
		var r QualityResult
		if len(bytes.TrimSpace(line)) == 0 || json.Unmarshal(line, &r) != nil || r.Run != run || r.Key == "" {
			continue
		}
		out[r.Key] = r
	}
	return out, nil
}

// qualityPrompt is one example laid out for the model.
type qualityPrompt struct {
	req  recompute.Request // in process
	text string            // endpoint
}

// cutWords cuts s to at most n bytes at a word boundary (n <= 0: no cut).
func cutWords(s string, n int) string {
	if n <= 0 || len(s) <= n {
		return s
	}
	s = s[:n]
	if i := strings.LastIndexAny(s, " \n\t"); i > n/2 {
		s = s[:i]
	}
	return strings.ToValidUTF8(s, "")
}

// ErrPromptTooLong is returned (wrapped) for an example whose S and Q alone
// leave no room for its passages in the model's positions.
var ErrPromptTooLong = errors.New("bench: prompt does not fit the model")

// layout builds the prompt of e: S = fusion.EncodePrefix(prefix), the first k passages as
// chunks (each cut to PassageTokens, then to an equal share of the positions
// left), Q = query + question + answer.
func (c *QualityConfig) layout(e Example) (qualityPrompt, error) {
	t := c.Template
	ps := e.Passages[:min(len(e.Passages), c.Passages)]
	var tok interface {
		Encode(string) []int32
		Decode([]int32) string
	}
	if c.Model != nil && c.Model.Tokenizer != nil {
		tok = c.Model.Tokenizer
	}
	if tok == nil { // endpoint without a tokenizer: cut text
		var b strings.Builder
		b.WriteString(t.Prefix)
		for _, p := range ps {
			b.WriteString(c.Separator)
			b.WriteString(t.PassageText(Passage{Title: p.Title, Text: cutWords(p.Text, c.PassageChars)}))
		}
		b.WriteString(c.Separator)
		b.WriteString(t.QuestionText(e.Question))
		return qualityPrompt{text: b.String()}, nil
	}
	cfg := c.Model.Config
	// S as the ingest and the sidecar build it: BOS by prompt's rule.
	prefix := fusion.EncodePrefix(c.Model.Tokenizer, t.Prefix)
	q := tok.Encode(t.QuestionText(e.Question))
	cap := c.PassageTokens
	if c.Endpoint == "" {
		left := cfg.MaxPositions - len(prefix) - len(q) - c.AnswerTokens
		share := left / max(1, len(ps))
		if share < 1 {
			return qualityPrompt{}, fmt.Errorf("%w: %s: S %d + Q %d + answer %d tokens leave %d positions for %d passages",
				ErrPromptTooLong, e.ID, len(prefix), len(q), c.AnswerTokens, left, len(ps))
		}
		if cap <= 0 || cap > share {
			cap = share
		}
	}
	req := recompute.Request{Prefix: prefix, Question: q}
	var text strings.Builder
	text.WriteString(t.Prefix)
	for _, p := range ps {
		ids := tok.Encode(t.PassageText(p))
		if cap > 0 && len(ids) > cap {
			ids = ids[:cap]
		}
		if len(ids) == 0 {
			continue
		}
		req.Chunks = append(req.Chunks, ids)
		text.WriteString(c.Separator)
		text.WriteString(tok.Decode(ids))
	}
	text.WriteString(c.Separator)
	text.WriteString(t.QuestionText(e.Question))
	return qualityPrompt{req: req, text: text.String()}, nil
}

// answerOf decodes greedily up to n tokens on kv (not modified) with
// Model.Decode, stopping at the model's StopIDs or after a newline that
// follows some text. It returns the ids and the text.
func answerOf(ctx context.Context, m *model.Model, kv *model.Cache, last []float32, n int) ([]int32, string, error) {
	var so []int32 // the answer so far
	ids, err := m.Decode(ctx, kv.Clone(), last, n, model.Greedy(), m.StopIDs(), func(id int32) bool {
		so = append(so, id)
		return !strings.Contains(strings.TrimLeft(m.Tokenizer.Decode(so), "\n"), "\n")
	})
	if err != nil {
		return nil, "", err
	}
	return ids, m.Tokenizer.Decode(ids), nil
}

// completion asks the endpoint for the answer with one method.
func (c *QualityConfig) completion(ctx context.Context, prompt string, me qualityMethod) (string, error) {
	body, err := json.Marshal(map[string]any{"model": c.EndpointModel, "prompt": prompt, "max_tokens": c.AnswerTokens,
		"temperature": 0})
	if err != nil {
		return "", err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimRight(c.Endpoint, "/")+"/v1/completions", bytes.NewReader(body))
	if err != nil {
		return "", err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Fusionrag-Strategy", me.strategy)
	req.Header.Set("X-Fusionrag-Ratio", strconv.FormatFloat(me.ratio, 'g', -1, 64))
	resp, err := c.Client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("bench: endpoint: %s: %s", resp.Status, bytes.TrimSpace(b[:min(len(b), 300)]))
	}
	var out struct {
		Choices []struct {
			Text string `json:"text"`
		} `json:"choices"`
	}
	if err := json.Unmarshal(b, &out); err != nil || len(out.Choices) == 0 {
		return "", fmt.Errorf("bench: endpoint: no completion in %q", b[:min(len(b), 300)])
	}
	return out.Choices[0].Text, nil
}

// RunQuality answers every example of every dataset with full, reuse and
// each strategy × ratio, and scores the answers (LongBench qa_f1, exact
// match, agreement with full) and, in process, the next-token distributions
// against full's. Chunk KV is raw KV (prefill of S + C), computed once per
// chunk into a memory store and shared by every method. Results are appended
// to ResultsFile as they come, so an interrupted run resumes where it
// stopped. It returns the aggregated rows and every per-example result.
func RunQuality(ctx context.Context, c QualityConfig) ([]QualityRow, []QualityResult, error) {
	if err := c.fill(); err != nil {
		return nil, nil, err
	}
	run := c.runKey()
	done := map[string]QualityResult{}
	var sink *os.File
	if c.ResultsFile != "" {
		var err error
		if done, err = readResults(c.ResultsFile, run); err != nil {
			return nil, nil, err
		}
		if sink, err = os.OpenFile(c.ResultsFile, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644); err != nil {
			return nil, nil, err
		}
		defer sink.Close()
	}
	var rep *recompute.Reprocessor
	if c.Endpoint == "" {
		store, err := kvstore.Open("mem://?max=2GiB")
		if err != nil {
			return nil, nil, err
		}
		defer store.Close()
		if rep, err = recompute.New(recompute.Config{Model: c.Model, Source: &chunkkv.Store{Store: store}}); err != nil {
			return nil, nil, err
		}
	}
	methods := c.methods()
	total := 0
	for _, ds := range c.Datasets {
		total += len(ds.Examples) * len(methods)
	}
	bar := NewProgress(c.Progress, "quality "+c.Name, total, c.Quiet)
	defer bar.Done()
	var results []QualityResult
	w := bufio.NewWriter(io.Discard)
	if sink != nil {
		w = bufio.NewWriter(sink)
	}
	emit := func(r QualityResult) error {
		results = append(results, r)
		b, err := json.Marshal(r)
		if err != nil {
			return err
		}
		w.Write(append(b, '\n'))
		return w.Flush()
	}
	for _, ds := range c.Datasets {
		for _, e := range ds.Examples {
			if err := ctx.Err(); err != nil {
				return nil, nil, err
			}
			var todo []qualityMethod
			for _, me := range methods {
				if r, ok := done[resultKey(e.ID, me)]; ok {
					results = append(results, r)
					bar.Add(1)
				} else {
					todo = append(todo, me)
				}
			}
			if len(todo) == 0 {
				continue
			}
			p, err := c.layout(e)
			if errors.Is(err, ErrPromptTooLong) {
				bar.Add(len(todo))
				continue
			}
			if err != nil {
				return nil, nil, err
			}
			var rs []QualityResult
			if c.Endpoint != "" {
				rs, err = c.answerEndpoint(ctx, ds.Name, e, p, methods, done, bar)
			} else {
				rs, err = c.answerInProcess(ctx, rep, ds.Name, e, p, methods, done, bar)
			}
			if err != nil {
				return nil, nil, err
			}
			for _, r := range rs {
				r.Run = run
				if err := emit(r); err != nil {
					return nil, nil, err
				}
			}
		}
	}
	return AggregateQuality(results, c.Name, c.source()), results, nil
}

func (c *QualityConfig) source() string {
	if c.Endpoint != "" {
		return "endpoint"
	}
	return "in-process"
}

func scoreAnswer(r *QualityResult, answer, fullAnswer string, golds []string) {
	r.Answer = FirstLine(answer)
	r.F1 = BestF1(r.Answer, golds)
	r.EM = AnyExact(r.Answer, golds)
	full := FirstLine(fullAnswer)
	if NormalizeAnswer(full) == "" {
		// Both empty agree; TokenF1 is 0 on empty text.
		r.SameAsFull = NormalizeAnswer(r.Answer) == ""
		r.F1ToFull = map[bool]float64{true: 1}[r.SameAsFull]
	} else {
		r.SameAsFull = ExactMatch(r.Answer, full)
		r.F1ToFull = TokenF1(r.Answer, full)
	}
}

// answerInProcess runs the methods not yet done on one example. full always
// runs (its answer and distributions are the reference) but is emitted only
// when not done.
func (c *QualityConfig) answerInProcess(ctx context.Context, rep *recompute.Reprocessor, dataset string, e Example, p qualityPrompt,
	methods []qualityMethod, done map[string]QualityResult, bar *Progress) ([]QualityResult, error) {
	m := c.Model
	req := p.req
	req.Strategy, req.Ratio = "full", 1
	t0 := time.Now()
	full, err := rep.Run(ctx, req)
	if err != nil {
		return nil, fmt.Errorf("bench: %s full: %w", e.ID, err)
	}
	fullIDs, fullText, err := answerOf(ctx, m, full.Cache, full.LastLogits, c.AnswerTokens)
	if err != nil {
		return nil, err
	}
	fullMs := ms(time.Since(t0))
	ref, err := teacherForce(ctx, m, full.Cache, full.LastLogits, fullIDs)
	if err != nil {
		return nil, err
	}
	// Warm the store (raw chunk KV and S) so that no method pays for it.
	req.Strategy, req.Ratio = "reuse", 0
	if _, err := rep.Run(ctx, req); err != nil {
		return nil, fmt.Errorf("bench: %s reuse: %w", e.ID, err)
	}
	var out []QualityResult
	for _, me := range methods {
		key := resultKey(e.ID, me)
		if _, ok := done[key]; ok {
			continue
		}
		r := QualityResult{Key: key, Dataset: dataset, Example: e.ID, Strategy: me.strategy, Ratio: me.ratio}
		res, text, elapsed := full, fullText, fullMs
		if me.strategy != "full" {
			req.Strategy, req.Ratio = me.strategy, me.ratio
			t0 := time.Now()
			if res, err = rep.Run(ctx, req); err != nil {
				return nil, fmt.Errorf("bench: %s %s@%v: %w", e.ID, me.strategy, me.ratio, err)
			}
			if _, text, err = answerOf(ctx, m, res.Cache, res.LastLogits, c.AnswerTokens); err != nil {
				return nil, err
			}
			elapsed = ms(time.Since(t0))
		}
		got, err := teacherForce(ctx, m, res.Cache, res.LastLogits, fullIDs)
		if err != nil {
			return nil, err
		}
		var kl, top1 float64
		for i := range ref {
			kl += KL(ref[i], got[i])
			if model.Argmax(ref[i]) == model.Argmax(got[i]) {
				top1++
			}
		}
		kl /= float64(len(ref))
		top1 /= float64(len(ref))
		r.KL, r.Top1, r.Steps = &kl, &top1, len(ref)
		scoreAnswer(&r, text, fullText, e.Answers)
		r.PromptTokens, r.ContextTokens = res.Record.PromptTokens, res.Record.ContextTokens
		r.Recomputed = res.Record.Recomputed
		r.CostRatio = res.Record.Cost.Total() / full.Record.Cost.Total()
		r.Millis = elapsed
		out = append(out, r)
		bar.Add(1)
	}
	return out, nil
}

// answerEndpoint asks the endpoint with every method not yet done; full's
// answer comes from the results file when it is done already.
func (c *QualityConfig) answerEndpoint(ctx context.Context, dataset string, e Example, p qualityPrompt,
	methods []qualityMethod, done map[string]QualityResult, bar *Progress) ([]QualityResult, error) {
	var fullText string
	var out []QualityResult
	if r, ok := done[resultKey(e.ID, methods[0])]; ok {
		fullText = r.Answer
	}
	for _, me := range methods {
		key := resultKey(e.ID, me)
		if _, ok := done[key]; ok {
			continue
		}
		t0 := time.Now()
		text, err := c.completion(ctx, p.text, me)
		if err != nil {
			return nil, fmt.Errorf("bench: %s %s@%v: %w", e.ID, me.strategy, me.ratio, err)
		}
		if me.strategy == "full" {
			fullText = text
		}
		r := QualityResult{Key: key, Dataset: dataset, Example: e.ID, Strategy: me.strategy, Ratio: me.ratio, Millis: ms(time.Since(t0))}
		scoreAnswer(&r, text, fullText, e.Answers)
		out = append(out, r)
		bar.Add(1)
	}
	return out, nil
}

// AggregateQuality averages results per dataset × strategy × ratio, in the
// order they first appear, and derives the normalised scores from the full
// and reuse rows of each dataset.
func AggregateQuality(results []QualityResult, modelName, source string) []QualityRow {
	type acc struct {
		row                  QualityRow
		f1, em, f1f, same    float64
		kl, top1             float64
		fid                  int
		prompt, context, rec float64
		cost                 float64
	}
	var order []string
	accs := map[string]*acc{}
	for _, r := range results {
		k := r.Dataset + "|" + r.Strategy + "|" + strconv.FormatFloat(r.Ratio, 'g', -1, 64)
		a, ok := accs[k]
		if !ok {
			a = &acc{row: QualityRow{Dataset: r.Dataset, Model: modelName, Source: source, Strategy: r.Strategy, Ratio: r.Ratio}}
			accs[k] = a
			order = append(order, k)
		}
		a.row.Examples++
		a.f1 += r.F1
		if r.EM {
			a.em++
		}
		a.f1f += r.F1ToFull
		if r.SameAsFull {
			a.same++
		}
		if r.KL != nil && r.Top1 != nil {
			a.kl += *r.KL
			a.top1 += *r.Top1
			a.fid++
		}
		a.prompt += float64(r.PromptTokens)
		a.context += float64(r.ContextTokens)
		if r.ContextTokens > 0 {
			a.rec += float64(r.Recomputed) / float64(r.ContextTokens)
		}
		a.cost += r.CostRatio
	}
	rows := make([]QualityRow, 0, len(order))
	for _, k := range order {
		a := accs[k]
		n := float64(a.row.Examples)
		row := a.row
		row.F1, row.EM = 100*a.f1/n, 100*a.em/n
		row.F1ToFull, row.SameAsFull = 100*a.f1f/n, 100*a.same/n
		if a.fid > 0 {
			kl, top1 := a.kl/float64(a.fid), 100*a.top1/float64(a.fid)
			row.KL, row.Top1 = &kl, &top1
		}
		row.PromptTokens, row.ContextTokens = a.prompt/n, a.context/n
		row.Recomputed, row.CostRatio = a.rec/n, a.cost/n
		rows = append(rows, row)
	}
	// Normalised scores against each dataset's full and reuse rows.
	for i := range rows {
		var full, reuse *QualityRow
		for j := range rows {
			if rows[j].Dataset != rows[i].Dataset {
				continue
			}
			switch rows[j].Strategy {
			case "full":
				full = &rows[j]
			case "reuse":
				reuse = &rows[j]
			}
		}
		if full == nil || reuse == nil {
			continue
		}
		// F1 is an average of fractions of 1/len(tokens): a spread below
		// 1e-9 percent points is rounding, and the ratio undefined.
		if d := full.F1 - reuse.F1; math.Abs(d) > 1e-9 {
			v := 100 * ((rows[i].F1 - reuse.F1) / d) // d/d is exactly 1: full is exactly 100
			rows[i].NormalizedF1 = &v
		}
		if rows[i].KL != nil && reuse.KL != nil {
			v := normalizedLoss(*rows[i].KL, *reuse.KL) // exactly 0 for reuse, 100 for full
			rows[i].NormalizedFidelity = &v
		}
	}
	return rows
}

// optF formats an optional value ("n/a" when absent).
func optF(v *float64, decimals int) string {
	if v == nil {
		return "n/a"
	}
	return f(*v, decimals)
}

// QualityTables renders rows as one Markdown table per dataset.
func QualityTables(rows []QualityRow, elapsed time.Duration) []Table {
	var tables []Table
	var datasets []string
	for _, r := range rows {
		if !slices.Contains(datasets, r.Dataset) {
			datasets = append(datasets, r.Dataset)
		}
	}
	for _, ds := range datasets {
		t := Table{Header: []string{"strategy", "ratio", "F1", "EM", "normalised F1", "F1 to full's answer", "same answer as full",
			"KL(full‖method)", "top-1 agree", "normalised fidelity", "recomputed", "FLOPs vs full"}}
		for _, r := range rows {
			if r.Dataset != ds {
				continue
			}
			if t.Title == "" {
				t.Title = fmt.Sprintf("Quality on %s: %s, %s, %d examples, %.0f prompt tokens on average (%.0f in chunks)",
					ds, r.Model, r.Source, r.Examples, r.PromptTokens, r.ContextTokens)
			}
			kl := "n/a"
			if r.KL != nil {
				kl = fmt.Sprintf("%.3g", *r.KL)
			}
			t.Rows = append(t.Rows, []string{r.Strategy, pct(r.Ratio), f(r.F1, 1), f(r.EM, 1), optF(r.NormalizedF1, 1),
				f(r.F1ToFull, 1), f(r.SameAsFull, 1) + "%", kl, optF(r.Top1, 1) + map[bool]string{true: "%"}[r.Top1 != nil],
				optF(r.NormalizedFidelity, 1), pct(r.Recomputed), f(r.CostRatio, 3)})
		}
		t.Notes = []string{
			"F1 and EM: LongBench qa_f1 normalisation (lower case, ASCII punctuation and articles removed, whitespace collapsed), " +
				"best over the gold answers, on the first line of the answer; percent. Normalised F1 = 100 × (F1 − F1_reuse) / (F1_full − F1_reuse), " +
				"n/a when full and reuse score the same. F1 to full's answer and same answer as full score each method against full's own answer.",
			"KL and top-1 compare each method's next-token distributions with full's over full's greedy answer (teacher-forced); " +
				"normalised fidelity = 100 × (KL_reuse − KL) / KL_reuse, reuse of raw chunk KV as in the paper (reuse = 0, full = 100).",
			fmt.Sprintf("Measured in %s.", elapsed.Round(time.Millisecond)),
		}
		tables = append(tables, t)
	}
	return tables
}

// QualityPlots draws, per dataset, normalised fidelity (in process) or F1
// against full's answer (endpoint) versus ratio, one line per strategy, with
// reuse and full as references.
func QualityPlots(rows []QualityRow) []Plot {
	var plots []Plot
	var datasets []string
	for _, r := range rows {
		if !slices.Contains(datasets, r.Dataset) {
			datasets = append(datasets, r.Dataset)
		}
	}
	for _, ds := range datasets {
		fid := Plot{File: "quality-" + fileSafe(ds) + "-fidelity.png", Title: "Normalised fidelity on " + ds + " (full = 100, reuse = 0)",
			XLabel: "recompute ratio (%)", YLabel: "normalised fidelity"}
		agree := Plot{File: "quality-" + fileSafe(ds) + "-f1-to-full.png", Title: "Answer F1 against full's answer on " + ds,
			XLabel: "recompute ratio (%)", YLabel: "F1 to full (%)"}
		series := map[string]*[2]Series{}
		var names []string
		var xmax float64
		var reuseFid, reuseF1 *float64
		for _, r := range rows {
			if r.Dataset != ds {
				continue
			}
			switch r.Strategy {
			case "full":
				continue
			case "reuse":
				reuseFid = r.NormalizedFidelity
				v := r.F1ToFull
				reuseF1 = &v
				continue
			}
			xmax = max(xmax, r.Ratio*100)
			s, ok := series[r.Strategy]
			if !ok {
				s = &[2]Series{{Name: r.Strategy}, {Name: r.Strategy}}
				series[r.Strategy] = s
				names = append(names, r.Strategy)
			}
			if r.NormalizedFidelity != nil {
				s[0].X, s[0].Y = append(s[0].X, r.Ratio*100), append(s[0].Y, *r.NormalizedFidelity)
			}
			s[1].X, s[1].Y = append(s[1].X, r.Ratio*100), append(s[1].Y, r.F1ToFull)
		}
		for _, n := range names {
			fid.Series = append(fid.Series, series[n][0])
			agree.Series = append(agree.Series, series[n][1])
		}
		if reuseFid != nil {
			fid.Series = append(fid.Series, Series{Name: "reuse", X: []float64{0, xmax}, Y: []float64{*reuseFid, *reuseFid}},
				Series{Name: "full", X: []float64{0, xmax}, Y: []float64{100, 100}})
		}
		if reuseF1 != nil {
			agree.Series = append(agree.Series, Series{Name: "reuse", X: []float64{0, xmax}, Y: []float64{*reuseF1, *reuseF1}})
		}
		plots = append(plots, fid, agree)
	}
	return plots
}

// fileSafe keeps letters, digits, '-' and '_' of s (others become '-').
func fileSafe(s string) string {
	return strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' {
			return r
		}
		return '-'
	}, s)
}

// PromptTexts returns the prompt texts of the first n examples of the
// config's datasets (all when n <= 0), laid out as RunQuality lays them out
// (the chunks cut in tokens are decoded back to text): the RAG prompts of
// the load and end-to-end benchmarks. Examples that do not fit are skipped.
func PromptTexts(c QualityConfig, n int) ([]string, error) {
	if err := c.fill(); err != nil {
		return nil, err
	}
	var out []string
	for _, ds := range c.Datasets {
		for _, e := range ds.Examples {
			if n > 0 && len(out) == n {
				return out, nil
			}
			p, err := c.layout(e)
			if errors.Is(err, ErrPromptTooLong) {
				continue
			}
			if err != nil {
				return nil, err
			}
			out = append(out, p.text)
		}
	}
	return out, nil
}
