package main

import (
	"fmt"

	"github.com/fusionrag/fusionrag/model"
)

func init() {
	register("convert", "write any loadable model as GGUF (F32/F16) for llama.cpp", runConvert)
}

func runConvert(args []string) error {
	fs := newFlagSet("convert")
	modelPath := fs.String("model", "", "model to convert (required): "+modelFormats)
	tokPath := fs.String("tokenizer", "", "tokenizer file (default: found beside the model, or the GGUF's own)")
	out := fs.String("out", "", "GGUF file to write (required)")
	dtype := fs.String("dtype", "F32", "weight type of the matrices: F32 or F16 (norms and biases stay F32)")
	align := fs.Int("alignment", 0, "tensor data alignment (general.alignment), a power of two; 0 = 32")
	maxPos := fs.Int("max-positions", 0, "context length to record (0: the model's own)")
	name := fs.String("name", "", "general.name (default \"fusionrag\")")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *modelPath == "" || *out == "" {
		return fmt.Errorf("--model and --out are required")
	}
	m, err := model.Load(*modelPath, model.LoadOptions{Tokenizer: *tokPath, MaxPositions: *maxPos})
	if err != nil {
		return err
	}
	defer m.Close()
	if err := m.WriteGGUF(*out, model.GGUFOptions{DType: *dtype, Alignment: *align, Name: *name}); err != nil {
		return err
	}
	c := m.Config
	fmt.Printf("wrote %s: %s, %d layers, dim %d, vocab %d, %d positions, %s, tokenizer %v\n",
		*out, c.Arch, c.Layers, c.Dim, c.Vocab, c.MaxPositions, *dtype, m.Tokenizer != nil)
	return nil
}
