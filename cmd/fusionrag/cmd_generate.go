package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/signal"
	"strings"

	"github.com/fusionrag/fusionrag/model"
	"github.com/fusionrag/fusionrag/model/tokenizer"
	promptpkg "github.com/fusionrag/fusionrag/prompt"
)

func init() {
	register("generate", "run the model directly on a prompt (smoke test, golden checks)", runGenerate)
}

func runGenerate(args []string) error {
	fs := newFlagSet("generate")
	modelPath := fs.String("model", "", "model to run (required): "+modelFormats)
	tokPath := fs.String("tokenizer", "", "tokenizer file (default: found beside the model)")
	prompt := fs.String("prompt", "", "prompt text (BOS is added when the tokenizer says so)")
	maxTokens := fs.Int("max-tokens", 256, "maximum number of generated tokens")
	temperature := fs.Float64("temperature", 1.0, "sampling temperature; 0 = greedy")
	topP := fs.Float64("top-p", 0.9, "nucleus sampling threshold in (0, 1), as llama2.c run.c; 0 or 1 = off")
	topK := fs.Int("top-k", 0, "sample among the k most likely ids only; 0 = all")
	seed := fs.Uint64("seed", 0, "random seed for sampling")
	backend := backendFlag(fs)
	echo := fs.Bool("echo", false, "print the prompt before the continuation")
	maxPos := fs.Int("max-positions", 0, "override the model file's context length (llama.cpp --override-kv <arch>.context_length=int:N); 0 = the file's")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *modelPath == "" {
		return fmt.Errorf("--model is required")
	}
	if *maxTokens < 0 || *temperature < 0 || *topK < 0 || *topP < 0 || *topP > 1 {
		return fmt.Errorf("--max-tokens, --temperature and --top-k must be >= 0, --top-p in [0, 1]")
	}
	m, err := model.Load(*modelPath, model.LoadOptions{Tokenizer: *tokPath, Backend: *backend, MaxPositions: *maxPos})
	if err != nil {
		return err
	}
	defer m.Close()
	tok := m.Tokenizer
	if tok == nil {
		return fmt.Errorf("no tokenizer found beside %s: pass --tokenizer", *modelPath)
	}
	// The engine's rule (package prompt): BOS once, when the tokenizer asks for it.
	ids, err := promptpkg.Tokens(tok, nil, promptpkg.Prompt{Text: *prompt})
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	w := bufio.NewWriter(os.Stdout)
	defer w.Flush()
	if *echo {
		w.WriteString(tok.Decode(ids))
	}
	out := newTextStream(tok, ids)
	_, err = m.Generate(ctx, ids, *maxTokens, model.NewSampler(model.Sampling{Temperature: *temperature, TopK: *topK, TopP: *topP, Seed: *seed}), func(id int32) bool {
		w.WriteString(out.add(id))
		w.Flush()
		return true
	})
	w.WriteString(out.flush() + "\n")
	return err
}

// textStream turns generated ids into text as it completes. It uses the
// tokenizer's streaming decoder when there is one (llama2.c), else decodes
// the whole sequence each time and prints what was appended.
type textStream struct {
	tok     tokenizer.Tokenizer
	dec     *tokenizer.Decoder
	ids     []int32
	printed string
}

func newTextStream(tok tokenizer.Tokenizer, prompt []int32) *textStream {
	s := &textStream{tok: tok, ids: append([]int32(nil), prompt...)}
	if d, ok := tok.(interface{ NewDecoder() *tokenizer.Decoder }); ok {
		s.dec = d.NewDecoder()
		for _, id := range prompt {
			s.dec.Add(id) // context only: the prompt is not printed here
		}
		s.dec.Flush()
		return s
	}
	s.printed = tok.Decode(prompt)
	return s
}

func (s *textStream) add(id int32) string {
	if s.dec != nil {
		return s.dec.Add(id)
	}
	s.ids = append(s.ids, id)
	full := s.tok.Decode(s.ids)
	if !strings.HasPrefix(full, s.printed) {
		return "" // the decoder rewrote earlier text; print nothing rather than garbage
	}
	out := full[len(s.printed):]
	s.printed = full
	return out
}

func (s *textStream) flush() string {
	if s.dec != nil {
		return s.dec.Flush()
	}
	return ""
}
