// Package tokenizer turns text into the exact token ids a model (and the
// engine serving it) sees, and back. It reads llama2.c tokenizers (tok*.bin)
// and Hugging Face tokenizer.json files, and renders chat templates.
//
// Exactness matters more than anywhere else in fusionrag: chunk KV is only
// reused for an exactly matching token span, so a tokenizer that disagrees
// with the engine's by one id turns every lookup into a miss.
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
