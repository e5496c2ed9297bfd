// Package tokenizer turns text into the exact token ids a model (and the
// engine serving it) sees, and back. It reads llama2.c tokenizers (tok*.bin)
// and Hugging Face tokenizer.json files, and renders chat templates.
//
// Exactness matters more than anywhere else in fusionrag: chunk KV is only
// reused for an exactly matching token span, so a tokenizer that disagrees
// with the engine's by one id turns every lookup into a miss.
//
//   - Llama2c (LoadLlama2c) encodes exactly as llama2.c run.c.
//   - HF (LoadHF) implements the BPE model of tokenizer.json with the
//     normalizers, pre-tokenizers, decoders and post-processors that
//     Llama-2/Mistral (SentencePiece-style, byte fallback) and
//     Llama-3/Qwen2/Qwen2.5/Qwen3 (byte-level) use; anything else fails to
//     load with ErrUnsupported rather than tokenizing differently.
//   - ChatTemplate renders OpenAI-shaped messages with the model's Jinja
//     chat template, or a plain default; RenderSpans says where each content
//     part landed, and TokenRange maps that to token indices (not always
//     exactly: see TokenRange and TestPartTokenRanges).
//   - Decoder streams text without splitting UTF-8 characters.
//
// Encodings are checked against references in the tests: golden ids and chat
// renderings in testdata/golden come from transformers.js and
// @huggingface/jinja (scripts/tokenizer-golden/regen.sh), run on the real
// tokenizer.json files, which are not committed: the tests read them from
// $FUSIONRAG_TOKENIZERS/tokenizers/<name>/ (default .cache/tokenizer-golden
// at the repository root, filled by regen.sh) and skip loudly without them.
package tokenizer

// Span is the half-open byte range [Begin, End) of the input a token came from.
type Span struct{ Begin, End int }

// Tokenizer encodes and decodes text. Implementations are safe for concurrent use.
type Tokenizer interface {
	// Encode returns the ids of text. It never adds BOS/EOS: callers add
	// BOS() when AddBOS() says the model expects it. Special tokens written in
	// the text are matched as special tokens.
	Encode(text string) []int32
	// EncodeOffsets is Encode plus, for every id, the byte span of text it came from.
	EncodeOffsets(text string) ([]int32, []Span)
	// Decode returns the text of ids (special tokens included verbatim, BOS dropped).
	Decode(ids []int32) string
	// Token returns the vocabulary string of one id ("" when out of range).
	Token(id int32) string
	// VocabSize is the number of ids, added tokens included.
	VocabSize() int
	// BOS is the beginning-of-sequence id, or -1 when the model has none.
	BOS() int32
	// EOS lists the ids that end generation.
	EOS() []int32
	// AddBOS reports whether prompts start with BOS.
	AddBOS() bool
	// Fingerprint identifies the vocabulary and rules (hex), for cache keys.
	Fingerprint() string
}
