// Package modeltest loads the models that tests run: the real stories260K
// llama2.c model from the shared data (the test skips loudly without it) and
// synthetic Llamas of any shape. Each model is closed when its test ends.
//
// Tests of package model itself cannot use it (it imports model).
package modeltest

import (
	"context"
	"testing"

	"github.com/fusionrag/fusionrag/internal/shareddata"
	"github.com/fusionrag/fusionrag/model"
)

// Stories paths, relative to shareddata.Dir.
const (
	StoriesPath          = "models/stories260K/stories260K.bin"
	StoriesTokenizerPath = "models/stories260K/tok512.bin"
)

// Stories loads stories260K (dim 64, 5 layers, 8 heads / 4 KV heads, vocab
// 512, 512 positions) with its llama2.c tokenizer tok512.bin.
func Stories(tb testing.TB) *model.Model {
	tb.Helper()
	p := shareddata.Path(tb, StoriesPath)
	m, err := model.Load(p, model.LoadOptions{Tokenizer: shareddata.Path(tb, StoriesTokenizerPath)})
	if err != nil {
		tb.Fatalf("loading %s: %v", p, err)
	}
	tb.Cleanup(func() { m.Close() })
	return m
}

// Synthetic builds the deterministic random model of cfg's shape and seed
// (model.Synthetic; no tokenizer).
func Synthetic(tb testing.TB, cfg model.Config, seed uint64) *model.Model {
	tb.Helper()
	m, err := model.Synthetic(cfg, seed)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { m.Close() })
	return m
}

// Prefill returns the KV of ids at positions [0, len(ids)), computed by one
// full prefill with no cache: the reference every reuse is compared with.
func Prefill(tb testing.TB, m *model.Model, ids []int32) *model.Cache {
	tb.Helper()
	pos := make([]int32, len(ids))
	for i := range pos {
		pos[i] = int32(i)
	}
	res, err := m.Forward(context.Background(), nil, model.Batch{Tokens: ids, Pos: pos}, model.ForwardOptions{ReturnKV: true})
	if err != nil {
		tb.Fatal(err)
	}
	return res.KV
}
