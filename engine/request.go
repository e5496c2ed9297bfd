package engine

import "github.com/fusionrag/fusionrag/prompt"

// The request types are package prompt's: the engine runs exactly the ids
// prompt.Tokens gives for a prompt.ParseRequest result, the same function
// the sidecar segments on.
type (
	// Request is a parsed and validated completions or chat body.
	Request = prompt.Request
	// Prompt is a request's input before tokenization.
	Prompt = prompt.Prompt
	// Sampling holds the decoding parameters of one request.
	Sampling = prompt.Sampling
	// ChatTemplate renders chat messages into the prompt text.
	ChatTemplate = prompt.ChatTemplate
)
