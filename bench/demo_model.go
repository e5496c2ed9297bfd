package bench

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/fusionrag/fusionrag/model"
)

// demoModelSeed is the seed of the built-in synthetic model's weights.
const demoModelSeed = 2601

// demoModelConfig is the demo's built-in model: a 4.3M-parameter synthetic
// Llama (dim 256, 4 layers, 4 heads of 64, 4096-token vocabulary and
// context), large enough that a 1-2K-token prefill clearly costs more than reusing chunk KV
// on two cores, small enough that the whole demo runs in about a minute.
// Its weights are random (model.Synthetic): it exercises every code path of
// a Llama but answers nothing, so quality is measured as fidelity to full
// prefill, not as accuracy.
func demoModelConfig() model.Config {
	return model.Config{Arch: model.ArchLlama, Dim: 256, HiddenDim: 704, Layers: 4, Heads: 4, KVHeads: 4, HeadDim: 64,
		Vocab: 4096, MaxPositions: 4096, RopeTheta: 10000, NormEps: 1e-5, TiedEmbeddings: true, BOS: 1, EOS: []int32{2}}
}

// WriteDemoModel writes the demo's built-in synthetic model (4.3M parameters,
// random weights; see demoModelConfig) into dir as a Hugging Face directory
// with config.json, model.safetensors and a llama2.c-format tokenizer.bin.
// A directory that already holds a loadable model is left as it is, so a
// container can call it on every start (`fusionrag demo --write-model`).
func WriteDemoModel(dir string) error {
	if dir == "" {
		return errors.New("demo: no model directory given")
	}
	if _, err := os.Stat(filepath.Join(dir, "config.json")); err == nil {
		m, err := model.Load(dir, model.LoadOptions{})
		if err == nil {
			m.Close()
			return nil
		}
		return fmt.Errorf("demo: %s holds a model that does not load (remove it to write the built-in one): %w", dir, err)
	}
	// Write beside the target and rename, so a reader never sees a half
	// written model.
	if err := os.MkdirAll(filepath.Dir(filepath.Clean(dir)), 0o755); err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	tmp, err := os.MkdirTemp(filepath.Dir(filepath.Clean(dir)), ".fusionrag-model-")
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	defer os.RemoveAll(tmp)
	if err := model.WriteSynthetic(tmp, demoModelConfig(), demoModelSeed, model.SaveOptions{}); err != nil {
		return err
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	if err := os.Rename(tmp, dir); err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	return nil
}
