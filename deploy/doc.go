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
package deploy
