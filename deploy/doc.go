// Package deploy holds the checks of the deployment files at the repository
// root: docker-compose.yml (loaded with compose-go, the library Docker
// Compose itself uses), the Dockerfile and .dockerignore. No Docker engine
// runs in CI, so these tests are what keeps the files honest: every service
// has an image or a build, healthchecks exist where a dependency waits for
// them, ports are bound where they should be, the sidecar's environment
// is a configuration the sidecar accepts, and the published sidecar trusts
// no tenant header (only the gateway override of docs/deploy.md makes it).
// The Grafana dashboard grafana/fusionrag.json is checked against the
// metric names a running sidecar exposes (docs/observability.md).
//
// The package has no code of its own; docs/deploy.md describes the stack.
//
// # Why deploy is not its own module
//
// compose-go is the only reason for 9 of the 243 modules in the main
// module's graph (go list -m all; compose-go, distribution/reference,
// docker/go-connections, docker/go-units, go-shellwords, go-digest,
// jsonschema/v6, go.yaml.in/yaml/v4, gotest.tools/v3), 10 lines of go.mod
// and 22 of go.sum's 423, about 5.7 MB in the module cache, and 29 of the 519
// non-standard packages a cold `go test ./...` compiles (7.6 s of the 2-core
// machine, once per build cache). None of it is linked into the fusionrag
// binary (go version -m lists none of those modules). Measured by deleting
// compose_test.go and running go mod tidy (issue 17).
//
// A deploy/go.mod would not make that cost go away, it would move it and add
// more: these tests import proxy and adapters (grafana_test.go runs a real
// sidecar), so deploy/go.mod would need a require plus a replace to ../, and
// its go.sum would carry all of the main module's sums as well as
// compose-go's: two go.mod/go.sum pairs to tidy and bump together, and a
// root `go test ./...` that silently skips the nested module, so CI would
// need a second command to keep running these checks. Revisit if compose-go
// starts pulling the Docker engine API (github.com/docker/docker) or raises
// its go directive (go 1.24 at v2.16.2) past the main module's.
package deploy
