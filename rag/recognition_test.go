package rag

import (
	"context"
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fusionrag/fusionrag/internal/proxytest"
	"github.com/fusionrag/fusionrag/proxy"
)

// Recognition of chunks in prompts built the way RAG frameworks build them
// (issue 19): no markers, no content parts, no "Document:" headers; the
// passages are found as blank-line blocks (convention d), missed once,
// stored by the warm-up, and hit the second time.

// The frameworks' default RAG prompts, as published.
const (
	// LangChain hub rlm/rag-prompt (a user message; context = the
	// documents' page_content joined by "\n\n").
	langchainRAG = "You are an assistant for question-answering tasks. Use the following pieces of retrieved context to answer the question. If you don't know the answer, just say that you don't know. Use three sentences maximum and keep the answer concise.\nQuestion: {question} \nContext: {context} \nAnswer:"
	// LlamaIndex DEFAULT_TEXT_QA_PROMPT_TMPL (context_str = the nodes'
	// metadata and text, joined by "\n\n").
	llamaindexQA = "Context information is below.\n---------------------\n{context_str}\n---------------------\nGiven the context information and not prior knowledge, answer the query.\nQuery: {query_str}\nAnswer: "
)

var ragDocs = []string{
	"Lily had a red ball. Every day Lily went to the park to play with it. One day the ball rolled into the pond and Lily was sad until a duck pushed it back to her.",
	"Tom had a big dog named Max. The dog liked to run in the garden with Tom. When it rained, Max and Tom stayed inside and played with blocks near the warm fire.",
	"Sue found a little bird that could not fly. She gave it water and seeds every morning. After many days the bird was strong again and it flew up to the tall tree.",
}

func langchainPrompt(question string, docs []string) string {
	return strings.NewReplacer("{question}", question, "{context}", strings.Join(docs, "\n\n")).Replace(langchainRAG)
}

func llamaindexPrompt(query string, docs []string) string {
	nodes := make([]string, len(docs))
	for i, d := range docs {
		nodes[i] = "file_path: docs/story" + string(rune('a'+i)) + ".txt\n\n" + d
	}
	return strings.NewReplacer("{context_str}", strings.Join(nodes, "\n\n"), "{query_str}", query).Replace(llamaindexQA)
}

func chatBodyOf(system, user string) string {
	var msgs []string
	if system != "" {
		msgs = append(msgs, `{"role":"system","content":`+jsonString(system)+`}`)
	}
	msgs = append(msgs, `{"role":"user","content":`+jsonString(user)+`}`)
	return `{"messages":[` + strings.Join(msgs, ",") + `],"max_tokens":8,"temperature":0}`
}

// fuseOutcome is what the Fuser did for one request through the proxy.
type fuseOutcome struct {
	how    string // segmentation convention
	chunks int
	stats  proxy.Stats
	skip   string
	err    error
}

// recognitionEnv is the real proxy in front of the real engine, with a
// real Fuser (default max_missing_fraction) whose outcomes are logged.
type recognitionEnv struct {
	fe   *fuserEnv
	base string
	mu   sync.Mutex
	log  []fuseOutcome
}

func newRecognitionEnv(t *testing.T, mod func(*proxy.Config)) *recognitionEnv {
	t.Helper()
	re := &recognitionEnv{}
	re.fe = newFuserEnv(t, func(c *proxy.Config) {
		c.Fusion.MaxMissingFraction = proxy.DefaultConfig().Fusion.MaxMissingFraction
		if mod != nil {
			mod(c)
		}
	})
	cfg := upstreamConfig(re.fe.engine)
	cfg.Fusion = re.fe.f.cfg.Fusion
	_, re.base = proxytest.Start(t, cfg, proxy.WithFuser(proxy.FuserFunc(func(ctx context.Context, req *proxy.Request) (*proxy.Plan, error) {
		var o fuseOutcome
		if sg, err := re.fe.f.segment(req); err == nil {
			o.how, o.chunks = sg.how, len(sg.seg.Chunks)
		}
		p, err := re.fe.f.Fuse(ctx, req)
		o.err, o.skip = err, skipReason(err)
		if p != nil {
			o.stats = p.Stats
		}
		re.mu.Lock()
		re.log = append(re.log, o)
		re.mu.Unlock()
		return p, err
	})))
	return re
}

// send posts body through the proxy and returns the answer text and what
// the fuser did, after any warm-up it started has finished.
func (re *recognitionEnv) send(t *testing.T, path, body string, hdr ...string) (string, fuseOutcome) {
	t.Helper()
	re.mu.Lock()
	n := len(re.log)
	re.mu.Unlock()
	code, out := post(t, re.base+path, body, hdr...)
	if code != 200 {
		t.Fatalf("%s: %d %s", path, code, out)
	}
	re.waitWarm(t)
	re.mu.Lock()
	defer re.mu.Unlock()
	if len(re.log) != n+1 {
		t.Fatalf("the fuser ran %d times for one request", len(re.log)-n)
	}
	return answerText(t, out), re.log[n]
}

// waitWarm waits for the fuser's background warm-up, if any, to finish.
func (re *recognitionEnv) waitWarm(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for len(re.fe.f.warming) > 0 {
		if time.Now().After(deadline) {
			t.Fatal("warm-up still running after a minute")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func answerText(t *testing.T, body string) string {
	t.Helper()
	var out struct {
		Choices []struct {
			Text    string
			Message struct{ Content string }
		}
	}
	if err := json.Unmarshal([]byte(body), &out); err != nil || len(out.Choices) == 0 {
		t.Fatalf("answer %s: %v", body, err)
	}
	return out.Choices[0].Text + out.Choices[0].Message.Content
}

// missThenHit sends body twice: the first time every passage is new (a
// computed miss: too many missing, so the request is forwarded and the
// warm-up stores them), the second time every chunk hits. A third send at
// ratio 1.0 answers exactly as the engine does on the body directly.
func (re *recognitionEnv) missThenHit(t *testing.T, path, body string, minChunks int) fuseOutcome {
	t.Helper()
	_, first := re.send(t, path, body)
	if first.skip != proxy.SkipTooManyMissing || first.chunks < minChunks {
		t.Fatalf("first: %+v, want %s with at least %d chunks", first, proxy.SkipTooManyMissing, minChunks)
	}
	_, second := re.send(t, path, body)
	if second.err != nil || second.stats.Chunks != first.chunks || second.stats.Hits != second.stats.Chunks || second.stats.Misses != 0 {
		t.Fatalf("second: %+v, want %d chunks all hits (first %+v)", second, first.chunks, first)
	}
	got, third := re.send(t, path, body, proxy.HeaderRatio, "1")
	want, _, _ := re.fe.engineAnswer(t, path, []byte(body))
	if third.err != nil || got != want {
		t.Errorf("at ratio 1.0: %q (%+v), the engine alone %q", got, third, want)
	}
	t.Logf("%s: %d chunks by %q; second: %+v", path, second.stats.Chunks, second.how, second.stats)
	return second
}

// TestRecognitionLangChain: rlm/rag-prompt in the user message of a chat
// without a system message, sent twice: the second hits every chunk. The
// same documents under another question: a computed miss, stored, a hit on
// repeat.
func TestRecognitionLangChain(t *testing.T) {
	re := newRecognitionEnv(t, nil)
	body := chatBodyOf("", langchainPrompt("Where did the ball go?", ragDocs))
	second := re.missThenHit(t, "/v1/chat/completions", body, len(ragDocs))
	if second.how != "paragraphs" && second.how != "index+paragraphs" && second.how != "index" {
		t.Errorf("segmented by %q", second.how)
	}

	// The question comes before the documents: another question is another
	// S for the documents known from the first prompt, a computed miss,
	// stored, and a hit on repeat.
	other := chatBodyOf("", langchainPrompt("What did Sue find?", ragDocs))
	re.missThenHit(t, "/v1/chat/completions", other, 2)
}

// TestRecognitionLlamaIndex: the text QA template with file_path metadata
// before each node, under a system message, sent twice: the second hits
// every node. Another system text is another S: a computed miss, stored,
// and a hit on repeat, never a permanent miss.
func TestRecognitionLlamaIndex(t *testing.T) {
	re := newRecognitionEnv(t, nil)
	user := llamaindexPrompt("Who flew up to the tall tree?", ragDocs)
	body := chatBodyOf("You are a helpful assistant.", user)
	re.missThenHit(t, "/v1/chat/completions", body, len(ragDocs))

	other := chatBodyOf("You are an expert Q&A system.", user)
	re.missThenHit(t, "/v1/chat/completions", other, len(ragDocs))

	// The same prompt as a completions text prompt.
	re.missThenHit(t, "/v1/completions", `{"prompt":`+jsonString(user)+`,"max_tokens":8,"temperature":0}`, len(ragDocs))
}

// TestRecognitionLongDocument: one document longer than a chunk, presented
// whole, is cut into windows on the prompt's own ids; all of them hit the
// second time.
func TestRecognitionLongDocument(t *testing.T) {
	re := newRecognitionEnv(t, func(c *proxy.Config) { c.Fusion.ParagraphMaxTokens = 64 })
	doc := strings.Join(ragDocs, " ") + " " + strings.Join(ragDocs[:2], " ")
	body := chatBodyOf("", "Read the story and answer.\n\n"+doc+"\n\nQuestion: who had a dog?\nAnswer:")
	second := re.missThenHit(t, "/v1/chat/completions", body, 3)
	if second.stats.Chunks < 3 {
		t.Errorf("%d chunks, want the document in 3 windows or more", second.stats.Chunks)
	}
}

// TestRecognitionNoPassages: a prompt with no block long enough is still
// no_chunks, and nothing is stored.
func TestRecognitionNoPassages(t *testing.T) {
	re := newRecognitionEnv(t, nil)
	for _, body := range []string{
		chatBodyOf("", "Once upon a time"),
		chatBodyOf("You tell stories.", "Tell me about a cat.\n\nMake it short."),
	} {
		_, o := re.send(t, "/v1/chat/completions", body)
		if o.skip != proxy.SkipNoChunks {
			t.Errorf("%s: %+v, want %s", body, o, proxy.SkipNoChunks)
		}
	}
	if st := re.fe.store.Stats()[0]; st.Puts != 0 || st.Entries != 0 {
		t.Errorf("store: %d puts, %d entries, want none", st.Puts, st.Entries)
	}
}

// TestRecognitionOff: fusion.no_paragraphs turns convention (d) off.
func TestRecognitionOff(t *testing.T) {
	re := newRecognitionEnv(t, func(c *proxy.Config) { c.Fusion.NoParagraphs = true })
	_, o := re.send(t, "/v1/chat/completions", chatBodyOf("", langchainPrompt("Where did the ball go?", ragDocs)))
	if o.skip != proxy.SkipNoChunks {
		t.Errorf("%+v, want %s", o, proxy.SkipNoChunks)
	}
}

// BenchmarkSegmentParagraphs measures segment() on the LangChain prompt with
// convention (d) on and off (off: known chunks only, which finds none
// here), and reports on over off measured in the same run: the price of
// rendering and encoding the prompt a second time with offsets.
func BenchmarkSegmentParagraphs(b *testing.B) {
	fe := newFuserEnv(b, nil)
	r := fe.request(b, proxy.RouteChat, chatBodyOf("", langchainPrompt("Where did the ball go?", ragDocs)), "bench")
	per := map[bool]time.Duration{}
	for _, off := range []bool{true, false} {
		name := map[bool]string{true: "off", false: "on"}[off]
		b.Run(name, func(b *testing.B) {
			fe.f.cfg.Fusion.NoParagraphs = off
			start := time.Now()
			for range b.N {
				_, _ = fe.f.segment(r)
			}
			per[off] = time.Since(start) / time.Duration(b.N)
			if base := per[true]; !off && base > 0 {
				b.ReportMetric(float64(per[false])/float64(base), "x_off")
			}
		})
	}
}
