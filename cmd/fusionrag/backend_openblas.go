//go:build openblas

package main

// Built with -tags openblas, the binary registers the "openblas" backend
// (cgo, links libopenblas): --backend openblas then selects it wherever a
// model is loaded.
import _ "github.com/fusionrag/fusionrag/model/openblas"
