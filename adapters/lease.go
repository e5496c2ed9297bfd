package adapters

import (
	"errors"

	"github.com/fusionrag/fusionrag/model"
)

// Publication is what the sidecar hands an engine for one fused request.
type Publication struct {
	// Namespace scopes the KV (tenant, model, fusion parameters): 1-128 hex
	// digits built by package fingerprint. Engines that key KV by token
	// prefix (native) include it in the key; engines that hold KV in a slot
	// for one request (llamacpp) may ignore it.
	Namespace string
	// Prompt is every token id the engine will run for the forwarded
	// request, in order, BOS included: exactly what the engine's own
	// tokenizer and chat template make of the body.
	Prompt []int32
	// KV is the KV of the prefix Prompt[0:KV.Len()) at positions
	// [0, KV.Len()), K before RoPE. KV.Len() < len(Prompt): the engine
	// prefills at least the last token itself, to get its logits.
	KV *model.Cache
	// Path is the request's path (e.g. "/v1/chat/completions") and Body the
	// body that will be forwarded before Lease.Rewrite (markers stripped,
	// the client's kv_transfer_params removed). An adapter may use them to
	// prove that the engine turns Body into exactly Prompt.
	Path string
	Body []byte
}

// Lease is published KV held for one forwarded request. Rewrite may be
// called more than once (the proxy may retry); Release exactly once, when
// the engine's response has ended (streamed or not) or failed, or when the
// request falls back to the original. Release must not block for long: an
// adapter that has cleanup to do over the network does it in the
// background.
type Lease interface {
	// Rewrite returns body rewritten so that the engine uses the published
	// KV (pinned to a slot, kv_transfer_params set). body is not modified.
	Rewrite(body []byte) ([]byte, error)
	// Release frees what Publish held (a slot, a pin).
	Release()
}

// ErrBusy says the engine has no capacity for published KV right now (every
// slot leased): forward the original request rather than queue behind the
// engine.
var ErrBusy = errors.New("adapters: no free engine slot for published KV")

// ErrRequest says that this request, not the engine nor the adapter, is why
// its KV cannot be published: the engine would run other token ids than
// the sidecar computed (another BOS, another chat rendering), the prompt
// exceeds a slot's context, the body has a shape the adapter cannot pin.
// The proxy forwards the original request and counts a skip, not a
// failure: a run of such requests must not open the breaker for everyone.
// Adapters wrap it in an error carrying a Reason().
var ErrRequest = errors.New("adapters: this request cannot use published KV")

// CheckPublication validates p: a non-empty prompt of non-negative ids
// and a KV of a strict prefix of it at positions [0, KV.Len()) with
// consistent per-layer arrays.
func CheckPublication(p Publication) error {
	if p.KV == nil {
		return errors.New("adapters: publication without KV")
	}
	n := p.KV.Len()
	if n >= len(p.Prompt) {
		return errors.New("adapters: published KV must cover a strict prefix of the prompt (the engine prefills at least the last token)")
	}
	return CheckKV(p.Prompt[:n], p.KV)
}
