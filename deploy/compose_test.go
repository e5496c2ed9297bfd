package deploy

import (
	"context"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"
	"github.com/google/go-cmp/cmp"

	"github.com/fusionrag/fusionrag/adapters"
	"github.com/fusionrag/fusionrag/proxy"
)

// root is the repository root, where the deployment files live.
const root = ".."

// loadProject loads docker-compose.yml as `docker compose` would, with the
// given profiles and only the given variables for interpolation (never the
// test process's environment, so the result does not depend on the machine).
func loadProject(t *testing.T, profiles []string, env ...string) *types.Project {
	t.Helper()
	return loadProjectFiles(t, nil, profiles, env...)
}

// loadProjectFiles is loadProject with override files applied over
// docker-compose.yml, in order, as `docker compose -f ... -f ...` would.
func loadProjectFiles(t *testing.T, overrides []string, profiles []string, env ...string) *types.Project {
	t.Helper()
	opts, err := cli.NewProjectOptions(append([]string{filepath.Join(root, "docker-compose.yml")}, overrides...),
		cli.WithWorkingDirectory(root),
		cli.WithEnv(env),
		cli.WithProfiles(profiles),
	)
	if err != nil {
		t.Fatal(err)
	}
	p, err := opts.LoadProject(context.Background())
	if err != nil {
		t.Fatalf("docker-compose.yml does not load: %v", err)
	}
	return p
}

func names(s types.Services) []string {
	var out []string
	for n := range s {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

func TestComposeServicesAndProfiles(t *testing.T) {
	tests := []struct {
		profiles []string
		enabled  []string
	}{
		{nil, []string{"engine", "jaeger", "model", "redis", "sidecar"}},
		{[]string{"gpu"}, []string{"engine", "jaeger", "model", "redis", "sidecar", "sidecar-vllm", "vllm"}},
		{[]string{"llamacpp"}, []string{"engine", "jaeger", "llama-server", "model", "redis", "sidecar", "sidecar-llamacpp", "slots-init"}},
	}
	for _, tt := range tests {
		p := loadProject(t, tt.profiles)
		if p.Name != "fusionrag" {
			t.Errorf("project name %q, want fusionrag", p.Name)
		}
		if diff := cmp.Diff(tt.enabled, names(p.Services)); diff != "" {
			t.Errorf("profiles %v: enabled services (-want +got):\n%s", tt.profiles, diff)
		}
	}
}

// dep is one depends_on entry as the test expects it.
type dep struct{ Service, Condition string }

func deps(s types.ServiceConfig) []dep {
	var out []dep
	for n, d := range s.DependsOn {
		out = append(out, dep{n, d.Condition})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Service < out[j].Service })
	return out
}

// port is one published port: host address, host port, container port.
type port struct {
	HostIP    string
	Published string
	Target    uint32
}

func ports(s types.ServiceConfig) []port {
	var out []port
	for _, p := range s.Ports {
		out = append(out, port{p.HostIP, p.Published, p.Target})
	}
	return out
}

// allProfiles enables every service.
var allProfiles = []string{"gpu", "llamacpp"}

func TestComposeServices(t *testing.T) {
	p := loadProject(t, allProfiles)
	tests := []struct {
		service     string
		image       string // exact image; "" with build
		build       bool   // built from the Dockerfile at the root
		health      string // a substring of the healthcheck test; "" for none
		deps        []dep
		ports       []port
		profiles    []string
		commandHead string // first argument of the command
	}{
		{service: "redis", image: "redis:7.4-alpine", health: "redis-cli ping", commandHead: "redis-server"},
		{service: "model", build: true, commandHead: "demo"},
		{service: "engine", build: true, health: "http://127.0.0.1:8000/health", commandHead: "engine",
			deps: []dep{{"model", types.ServiceConditionCompletedSuccessfully}, {"redis", types.ServiceConditionHealthy}}},
		{service: "sidecar", build: true, health: "http://127.0.0.1:8080/healthz", commandHead: "serve",
			deps:  []dep{{"engine", types.ServiceConditionHealthy}, {"jaeger", types.ServiceConditionStarted}, {"redis", types.ServiceConditionHealthy}},
			ports: []port{{"", "8080", 8080}}},
		{service: "jaeger", image: "jaegertracing/all-in-one:1.62.0",
			ports: []port{{"127.0.0.1", "16686", 16686}}},
		{service: "vllm", image: "vllm/vllm-openai:v0.8.5", health: "http://127.0.0.1:8000/health", profiles: []string{"gpu"},
			commandHead: "--model"},
		{service: "sidecar-vllm", build: true, health: "http://127.0.0.1:8080/healthz", profiles: []string{"gpu"}, commandHead: "serve",
			deps:  []dep{{"jaeger", types.ServiceConditionStarted}, {"vllm", types.ServiceConditionHealthy}},
			ports: []port{{"", "8081", 8080}}},
		{service: "slots-init", image: "ghcr.io/ggml-org/llama.cpp:server-b10573", profiles: []string{"llamacpp"}},
		{service: "llama-server", image: "ghcr.io/ggml-org/llama.cpp:server-b10573", health: "http://127.0.0.1:8080/health",
			profiles: []string{"llamacpp"}, commandHead: "-m",
			deps: []dep{{"slots-init", types.ServiceConditionCompletedSuccessfully}}},
		{service: "sidecar-llamacpp", build: true, health: "http://127.0.0.1:8080/healthz", profiles: []string{"llamacpp"}, commandHead: "serve",
			deps: []dep{{"jaeger", types.ServiceConditionStarted}, {"llama-server", types.ServiceConditionHealthy},
				{"redis", types.ServiceConditionHealthy}},
			ports: []port{{"", "8082", 8080}}},
	}
	for _, tt := range tests {
		t.Run(tt.service, func(t *testing.T) {
			s, ok := p.Services[tt.service]
			if !ok {
				t.Fatalf("no service %q", tt.service)
			}
			if tt.build {
				if s.Build == nil {
					t.Fatalf("no build section")
				}
				ctx := s.Build.Context
				if abs, _ := filepath.Abs(root); ctx != abs {
					t.Errorf("build context %q, want the repository root %q", ctx, abs)
				}
				if s.Build.Dockerfile != "Dockerfile" {
					t.Errorf("build dockerfile %q, want Dockerfile", s.Build.Dockerfile)
				}
				if s.Image != "fusionrag:local" {
					t.Errorf("image %q, want fusionrag:local (the tag the build gives)", s.Image)
				}
				if !s.ReadOnly {
					t.Errorf("fusionrag containers should run with a read-only root filesystem")
				}
			} else if s.Image != tt.image {
				t.Errorf("image %q, want %q", s.Image, tt.image)
			}
			switch {
			case tt.health == "" && s.HealthCheck != nil && !s.HealthCheck.Disable:
				t.Errorf("unexpected healthcheck %q", s.HealthCheck.Test)
			case tt.health != "":
				if s.HealthCheck == nil || s.HealthCheck.Disable {
					t.Fatalf("no healthcheck")
				}
				if s.HealthCheck.Test[0] != "CMD" {
					t.Errorf("healthcheck %q should be exec form (CMD): the images have no shell guarantees", s.HealthCheck.Test)
				}
				if got := strings.Join(s.HealthCheck.Test, " "); !strings.Contains(got, tt.health) {
					t.Errorf("healthcheck %q does not check %q", got, tt.health)
				}
				if s.HealthCheck.Interval == nil || s.HealthCheck.Retries == nil {
					t.Errorf("healthcheck without interval or retries")
				}
			}
			if diff := cmp.Diff(tt.deps, deps(s)); diff != "" {
				t.Errorf("depends_on (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.ports, ports(s)); diff != "" {
				t.Errorf("ports (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.profiles, s.Profiles); diff != "" {
				t.Errorf("profiles (-want +got):\n%s", diff)
			}
			if tt.commandHead != "" && (len(s.Command) == 0 || s.Command[0] != tt.commandHead) {
				t.Errorf("command %q, want it to start with %q", s.Command, tt.commandHead)
			}
		})
	}
}

// TestComposeDependenciesHaveHealthchecks: a dependency that waits for
// service_healthy on a service without a healthcheck would never start.
func TestComposeDependenciesHaveHealthchecks(t *testing.T) {
	p := loadProject(t, allProfiles)
	for _, name := range names(p.Services) {
		for dn, d := range p.Services[name].DependsOn {
			ds, ok := p.Services[dn]
			if !ok {
				t.Errorf("%s depends on unknown service %s", name, dn)
				continue
			}
			if d.Condition == types.ServiceConditionHealthy && (ds.HealthCheck == nil || ds.HealthCheck.Disable) {
				t.Errorf("%s waits for %s to be healthy, but %s has no healthcheck", name, dn, dn)
			}
			if d.Condition == types.ServiceConditionCompletedSuccessfully && ds.Restart != "no" {
				t.Errorf("%s waits for %s to complete, but %s restarts (%q)", name, dn, dn, ds.Restart)
			}
		}
	}
}

func env(s types.ServiceConfig) map[string]string {
	out := map[string]string{}
	for k, v := range s.Environment {
		if v != nil {
			out[k] = *v
		}
	}
	return out
}

// flagValue returns the value after flag in a command, "" when absent.
func flagValue(cmd []string, flag string) string {
	i := slices.Index(cmd, flag)
	if i < 0 || i+1 >= len(cmd) {
		return ""
	}
	return cmd[i+1]
}

func hostPort(t *testing.T, raw string) (scheme, host, port string) {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatalf("bad URL %q: %v", raw, err)
	}
	return u.Scheme, u.Hostname(), u.Port()
}

// TestComposeWiring checks that the addresses the services give each other
// agree: the sidecar's upstream is where the engine listens, both use the
// Redis service, the OTLP endpoint is Jaeger's gRPC port, and the sidecar's
// environment is a configuration the sidecar itself accepts.
func TestComposeWiring(t *testing.T) {
	p := loadProject(t, []string{"gpu"})
	engine, sidecar, jaeger := p.Services["engine"], p.Services["sidecar"], p.Services["jaeger"]
	se := env(sidecar)

	// The sidecar's environment through the sidecar's own config loader.
	cfg, err := proxy.LoadConfig("", func(k string) (string, bool) { v, ok := se[k]; return v, ok }, nil)
	if err != nil {
		t.Fatalf("the sidecar refuses its compose environment: %v", err)
	}
	_, host, prt := hostPort(t, cfg.Upstream)
	listen := flagValue(engine.Command, "--listen")
	if host != "engine" || !strings.HasSuffix(listen, ":"+prt) || !strings.HasPrefix(listen, "0.0.0.0:") {
		t.Errorf("sidecar upstream %q does not reach the engine listening on %q", cfg.Upstream, listen)
	}
	if !slices.Contains([]string(engine.Expose), prt) {
		t.Errorf("engine exposes %v, not its listen port %s", engine.Expose, prt)
	}
	if !strings.HasSuffix(cfg.Listen, ":8080") || !strings.HasPrefix(cfg.Listen, "0.0.0.0:") {
		t.Errorf("sidecar listens on %q: want 0.0.0.0:8080 (the published container port)", cfg.Listen)
	}
	if cfg.Fusion.System == "" {
		t.Errorf("sidecar fusion.system is empty: unmarked text prompts would never hit documents ingested through the sidecar")
	}
	if cfg.Fusion.Transport != "store" {
		t.Errorf("sidecar fusion.transport %q: the compose stack shares Redis, want store", cfg.Fusion.Transport)
	}
	if cfg.Store != flagValue(engine.Command, "--store") {
		t.Errorf("sidecar store %q and engine store %q differ: the engine would never see published KV",
			cfg.Store, flagValue(engine.Command, "--store"))
	}
	if sc, h, pt := hostPort(t, cfg.Store); sc != "redis" || h != "redis" || pt != "6379" {
		t.Errorf("store %q is not the redis service", cfg.Store)
	}
	if cfg.Model != flagValue(engine.Command, "--model") || cfg.Model == "" {
		t.Errorf("sidecar model %q and engine model %q differ: KV computed for one is useless to the other",
			cfg.Model, flagValue(engine.Command, "--model"))
	}

	// Traces: OTLP over gRPC to Jaeger.
	for _, name := range []string{"sidecar", "sidecar-vllm"} {
		e := env(p.Services[name])
		_, h, pt := hostPort(t, e["OTEL_EXPORTER_OTLP_ENDPOINT"])
		if h != "jaeger" || pt != "4317" {
			t.Errorf("%s: OTEL_EXPORTER_OTLP_ENDPOINT %q is not Jaeger's OTLP gRPC port", name, e["OTEL_EXPORTER_OTLP_ENDPOINT"])
		}
		if e["OTEL_SERVICE_NAME"] == "" {
			t.Errorf("%s: no OTEL_SERVICE_NAME", name)
		}
		tel, err := proxy.NewTelemetry(context.Background(), func(k string) (string, bool) { v, ok := e[k]; return v, ok })
		if err != nil {
			t.Errorf("%s: the sidecar refuses its telemetry environment: %v", name, err)
			continue
		}
		// Nothing was recorded, so shutting down sends nothing (no Jaeger here).
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_ = tel.Shutdown(ctx)
		cancel()
	}
	if !slices.Contains([]string(jaeger.Expose), "4317") || env(jaeger)["COLLECTOR_OTLP_ENABLED"] != "true" {
		t.Errorf("jaeger does not receive OTLP on 4317 (expose %v, env %v)", jaeger.Expose, env(jaeger))
	}

	// The vLLM sidecar is pass-through: no model, upstream vllm.
	sv := env(p.Services["sidecar-vllm"])
	vcfg, err := proxy.LoadConfig("", func(k string) (string, bool) { v, ok := sv[k]; return v, ok }, nil)
	if err != nil {
		t.Fatalf("sidecar-vllm refuses its environment: %v", err)
	}
	if _, h, _ := hostPort(t, vcfg.Upstream); h != "vllm" || vcfg.Model != "" {
		t.Errorf("sidecar-vllm: upstream %q model %q; want vllm, pass-through (no model)", vcfg.Upstream, vcfg.Model)
	}
	if d := p.Services["vllm"].Deploy; d == nil || d.Resources.Reservations == nil || len(d.Resources.Reservations.Devices) == 0 {
		t.Errorf("vllm reserves no GPU")
	}
}

// TestComposeModelOverride: FUSIONRAG_MODEL changes the model of the engine
// and the sidecar together.
func TestComposeModelOverride(t *testing.T) {
	p := loadProject(t, nil, "FUSIONRAG_MODEL=/models/mine", "FUSIONRAG_PORT=9090")
	if got := flagValue(p.Services["engine"].Command, "--model"); got != "/models/mine" {
		t.Errorf("engine --model %q, want /models/mine", got)
	}
	if got := env(p.Services["sidecar"])["FUSIONRAG_MODEL"]; got != "/models/mine" {
		t.Errorf("sidecar FUSIONRAG_MODEL %q, want /models/mine", got)
	}
	if diff := cmp.Diff([]port{{"", "9090", 8080}}, ports(p.Services["sidecar"])); diff != "" {
		t.Errorf("sidecar ports with FUSIONRAG_PORT=9090 (-want +got):\n%s", diff)
	}
}

// TestComposeTrustsNoTenantHeader: the compose sidecars are published with
// no gateway in front, so they must not take the tenant from a header any
// client can send; a variable in the caller's environment or .env does not
// change that (only an override that adds a gateway does).
func TestComposeTrustsNoTenantHeader(t *testing.T) {
	for _, vars := range [][]string{nil, {"FUSIONRAG_TENANT_HEADER=" + proxy.HeaderTenant}} {
		p := loadProject(t, []string{"gpu"}, vars...)
		for _, name := range []string{"sidecar", "sidecar-vllm"} {
			e := env(p.Services[name])
			cfg, err := proxy.LoadConfig("", func(k string) (string, bool) { v, ok := e[k]; return v, ok }, nil)
			if err != nil {
				t.Fatalf("%s refuses its environment: %v", name, err)
			}
			if cfg.Tenant.Header != "-" {
				t.Errorf("%s (interpolation %v) trusts tenant header %q, but is published with no gateway in front",
					name, vars, cfg.Tenant.Header)
			}
		}
	}
}

// TestComposeGatewayOverride loads the override of docs/deploy.md (a gateway
// in front of the sidecar) over the compose file: the sidecar trusts the
// tenant header there and is no longer published; the gateway is, on the
// sidecar's former port.
func TestComposeGatewayOverride(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join(root, "docs", "deploy.md"))
	if err != nil {
		t.Fatal(err)
	}
	const first = "# docker-compose.override.yml: a gateway in front of the sidecar\n"
	_, block, ok := strings.Cut(string(doc), "```yaml\n"+first)
	if block, _, ok = strings.Cut(block, "```"); !ok {
		t.Fatalf("docs/deploy.md has no yaml block starting %q", first)
	}
	override := filepath.Join(t.TempDir(), "docker-compose.override.yml")
	if err := os.WriteFile(override, []byte(first+block), 0o644); err != nil {
		t.Fatal(err)
	}
	p := loadProjectFiles(t, []string{override}, nil, "FUSIONRAG_PORT=9090")
	e := env(p.Services["sidecar"])
	cfg, err := proxy.LoadConfig("", func(k string) (string, bool) { v, ok := e[k]; return v, ok }, nil)
	if err != nil {
		t.Fatalf("the sidecar refuses its environment with the gateway override: %v", err)
	}
	if cfg.Tenant.Header != proxy.HeaderTenant {
		t.Errorf("behind the gateway the sidecar trusts tenant header %q, want %q", cfg.Tenant.Header, proxy.HeaderTenant)
	}
	if got := ports(p.Services["sidecar"]); len(got) != 0 {
		t.Errorf("behind the gateway the sidecar is still published: %v (clients could bypass the gateway)", got)
	}
	if d := cmp.Diff([]port{{"", "9090", 8080}}, ports(p.Services["gateway"])); d != "" {
		t.Errorf("gateway ports (-want +got):\n%s", d)
	}
}

// TestDockerfile checks the image build: a Go builder stage matching go.mod,
// a static (CGO_ENABLED=0) build of ./cmd/fusionrag, and a final stage that
// runs the binary as a non-root user.
func TestDockerfile(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(root, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	var froms []string
	var user, entrypoint string
	var goVersion string
	src := string(b)
	for _, line := range strings.Split(src, "\n") {
		f := strings.Fields(line)
		if len(f) < 2 || strings.HasPrefix(f[0], "#") {
			continue
		}
		switch strings.ToUpper(f[0]) {
		case "ARG":
			if v, ok := strings.CutPrefix(f[1], "GO_VERSION="); ok {
				goVersion = v
			}
		case "FROM":
			froms = append(froms, f[1])
			user = "" // USER is per stage
		case "USER":
			user = f[1]
		case "ENTRYPOINT":
			entrypoint = strings.Join(f[1:], " ")
		}
	}
	if len(froms) < 2 {
		t.Fatalf("stages %v: want a multi-stage build", froms)
	}
	if froms[0] != "golang:${GO_VERSION}" {
		t.Errorf("builder %q, want golang:${GO_VERSION}", froms[0])
	}
	mod, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	var modGo string
	for _, l := range strings.Split(string(mod), "\n") {
		if v, ok := strings.CutPrefix(l, "go "); ok {
			modGo = strings.TrimSpace(v)
		}
	}
	if goVersion == "" || !strings.HasPrefix(modGo, goVersion) {
		t.Errorf("builder Go %q does not match go.mod's go %q", goVersion, modGo)
	}
	if strings.HasPrefix(froms[len(froms)-1], "golang") {
		t.Errorf("final stage %q is the Go toolchain image", froms[len(froms)-1])
	}
	if !strings.Contains(src, "CGO_ENABLED=0") {
		t.Errorf("the build is not static (no CGO_ENABLED=0)")
	}
	if !strings.Contains(src, "./cmd/fusionrag") {
		t.Errorf("the Dockerfile does not build ./cmd/fusionrag")
	}
	if _, err := os.Stat(filepath.Join(root, "cmd", "fusionrag", "main.go")); err != nil {
		t.Errorf("the Dockerfile builds a package that is not there: %v", err)
	}
	if user == "" || user == "root" || strings.HasPrefix(user, "0") {
		t.Errorf("final stage runs as %q, want a non-root user", user)
	}
	if !strings.Contains(entrypoint, "fusionrag") {
		t.Errorf("entrypoint %q does not run fusionrag", entrypoint)
	}
}

// TestDockerignore: the build context must keep what the Go build needs.
func TestDockerignore(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(root, ".dockerignore"))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		l := strings.TrimSpace(line)
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		for _, need := range []string{"go.mod", "go.sum", "cmd", "*.go"} {
			if l == need || l == "/"+need || l == "**/"+need {
				t.Errorf(".dockerignore excludes %q, which the build needs", need)
			}
		}
	}
}

// mountOf returns the mount of s whose target is dir or holds path.
func mountOf(s types.ServiceConfig, path string) (types.ServiceVolumeConfig, bool) {
	for _, v := range s.Volumes {
		if path == v.Target || strings.HasPrefix(path, strings.TrimSuffix(v.Target, "/")+"/") {
			return v, true
		}
	}
	return types.ServiceVolumeConfig{}, false
}

// TestComposeLlamacpp checks the llamacpp profile's wiring: the sidecar
// accepts its environment and uses the llamacpp adapter against the
// llama-server service; the server's --slot-save-path and the sidecar's
// fusion.slot_dir are the same named volume, writable by both, owned by the
// uid both run as; both load the same GGUF from the same source; the
// server runs without the RAM prompt cache.
func TestComposeLlamacpp(t *testing.T) {
	for _, vars := range [][]string{nil, {"LLAMACPP_GGUF=qwen2.5-0.5b-instruct-f16.gguf", "LLAMACPP_MODELS=/srv/models"}} {
		p := loadProject(t, []string{"llamacpp"}, vars...)
		srv, side, init := p.Services["llama-server"], p.Services["sidecar-llamacpp"], p.Services["slots-init"]
		e := env(side)
		adapter := e["FUSIONRAG_FUSION_ADAPTER"]
		if !slices.Contains(adapters.Names(), "llamacpp") {
			t.Fatal("adapters/llamacpp is not registered (deploy/adapters_test.go must import what cmd/fusionrag imports)")
		}
		cfg, err := proxy.LoadConfig("", func(k string) (string, bool) { v, ok := e[k]; return v, ok }, nil)
		if err != nil {
			t.Fatalf("%v: sidecar-llamacpp refuses its environment: %v", vars, err)
		}
		if cfg.Fusion.Adapter != "llamacpp" || adapter != "llamacpp" || cfg.Fusion.Disabled {
			t.Errorf("%v: adapter %q (disabled %v), want llamacpp", vars, cfg.Fusion.Adapter, cfg.Fusion.Disabled)
		}
		_, host, prt := hostPort(t, cfg.Upstream)
		if host != "llama-server" || flagValue(srv.Command, "--port") != prt || flagValue(srv.Command, "--host") != "0.0.0.0" ||
			!slices.Contains([]string(srv.Expose), prt) {
			t.Errorf("%v: sidecar upstream %q does not reach llama-server (command %q, expose %v)", vars, cfg.Upstream, srv.Command, srv.Expose)
		}

		// The slot directory: one named volume, at --slot-save-path in the
		// server and at fusion.slot_dir in the sidecar, writable in both.
		savePath := flagValue(srv.Command, "--slot-save-path")
		sm, ok1 := mountOf(srv, savePath)
		cm, ok2 := mountOf(side, cfg.Fusion.SlotDir)
		im, ok3 := mountOf(init, "/slots")
		switch {
		case savePath == "" || !ok1 || sm.Target != savePath:
			t.Errorf("%v: llama-server --slot-save-path %q is not a mounted volume (%v)", vars, savePath, srv.Volumes)
		case !ok2 || cm.Target != cfg.Fusion.SlotDir:
			t.Errorf("%v: fusion.slot_dir %q is not a mounted volume in the sidecar (%v)", vars, cfg.Fusion.SlotDir, side.Volumes)
		case sm.Type != types.VolumeTypeVolume || sm.Source != "slots" || cm.Type != sm.Type || cm.Source != sm.Source:
			t.Errorf("%v: the server's slot dir (%s %s) and the sidecar's (%s %s) are not the same named volume", vars, sm.Type, sm.Source, cm.Type, cm.Source)
		case sm.ReadOnly || cm.ReadOnly:
			t.Errorf("%v: the slot volume is read-only in the server or the sidecar; both write slot files", vars)
		case !ok3 || im.Source != "slots" || im.Target != "/slots":
			t.Errorf("%v: slots-init does not prepare the slots volume (%v)", vars, init.Volumes)
		}
		if _, ok := p.Volumes["slots"]; !ok {
			t.Errorf("no top-level volume slots")
		}
		if srv.User != "10001:10001" || !strings.Contains(strings.Join(init.Entrypoint, " "), "chown 10001:10001 /slots") {
			t.Errorf("%v: llama-server runs as %q, slots-init runs %q: both the server and the sidecar (uid 10001) must own the slot volume",
				vars, srv.User, init.Entrypoint)
		}

		// The model: the same file from the same source on both sides.
		model := flagValue(srv.Command, "-m")
		if model == "" || model != cfg.Model || !strings.HasSuffix(model, ".gguf") {
			t.Errorf("%v: llama-server -m %q, sidecar model %q: want the same .gguf", vars, model, cfg.Model)
		}
		mm, ok1 := mountOf(srv, model)
		sm2, ok2 := mountOf(side, cfg.Model)
		if !ok1 || !ok2 || mm.Source != sm2.Source || mm.Target != sm2.Target || mm.Type != sm2.Type {
			t.Errorf("%v: the model is mounted from %+v in the server and %+v in the sidecar: want the same source", vars, mm, sm2)
		}
		if len(vars) > 0 && (!strings.HasSuffix(model, "/qwen2.5-0.5b-instruct-f16.gguf") || mm.Source != "/srv/models") {
			t.Errorf("%v: model %q from %q, want the overridden file and directory", vars, model, mm.Source)
		}

		// Slots and the RAM prompt cache.
		if np := flagValue(srv.Command, "-np"); np == "" || np == "0" || np == "1" {
			t.Errorf("%v: llama-server -np %q: one slot leaves no room for fused requests and the probe", vars, np)
		}
		if flagValue(srv.Command, "--cache-ram") != "0" {
			t.Errorf("%v: llama-server keeps a RAM prompt cache (--cache-ram %q): fused slots' KV could be copied there", vars, flagValue(srv.Command, "--cache-ram"))
		}
	}
}
