package deploy

// The adapters cmd/fusionrag registers (its cmd_serve.go imports): the
// sidecar's configuration accepts only registered fusion.adapter names, so
// the compose environments are validated against the same set.
import (
	_ "github.com/fusionrag/fusionrag/adapters/llamacpp"
	_ "github.com/fusionrag/fusionrag/adapters/native"
	_ "github.com/fusionrag/fusionrag/adapters/passthrough"
)
