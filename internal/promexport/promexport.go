// Package promexport serves an OpenTelemetry MeterProvider's metrics as a
// Prometheus exposition through the OpenTelemetry Prometheus exporter
// (go.opentelemetry.io/otel/exporters/prometheus), so that the sidecar and
// the engine name and format their metrics the one standard way instead of
// writing the text format by hand.
//
// Each Exposition has a registry of its own (never the process-wide
// default): several proxies and engines run in one test process, and each
// must expose only its own series.
//
// Names follow the exporter's UnderscoreEscapingWithSuffixes strategy: dots
// become underscores, a counter gets _total, a unit gets its suffix ("s":
// _seconds, "By": _bytes, "1" on a gauge: _ratio), a unit in braces
// ("{request}") adds nothing. Scope labels (otel_scope_name, ...) are left
// out, so a series is named by its own attributes only; target_info carries
// the resource (service.name, ...).
package promexport

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/common/expfmt"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
)

// Exposition is a Prometheus page fed by an OpenTelemetry reader.
type Exposition struct {
	reg    *prometheus.Registry
	reader *otelprom.Exporter
}

// New returns an exposition with a registry of its own. Give Reader to the
// MeterProvider (sdkmetric.WithReader).
func New() (*Exposition, error) {
	reg := prometheus.NewRegistry()
	exp, err := otelprom.New(otelprom.WithRegisterer(reg), otelprom.WithoutScopeInfo())
	if err != nil {
		return nil, fmt.Errorf("promexport: %w", err)
	}
	return &Exposition{reg: reg, reader: exp}, nil
}

// Reader is the metric reader to register with the MeterProvider.
func (e *Exposition) Reader() sdkmetric.Reader { return e.reader }

// Gatherer returns the registry the page is gathered from.
func (e *Exposition) Gatherer() prometheus.Gatherer { return e.reg }

// Handler serves the page over net/http, with content negotiation (text or
// OpenMetrics) and compression, as promhttp does.
func (e *Exposition) Handler() http.Handler {
	return promhttp.HandlerFor(e.reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
}

// WriteText writes the page in the Prometheus text format (0.0.4).
func (e *Exposition) WriteText(w io.Writer) error {
	mfs, err := e.reg.Gather()
	if err != nil && len(mfs) == 0 {
		return fmt.Errorf("promexport: gather: %w", err)
	}
	enc := expfmt.NewEncoder(w, expfmt.NewFormat(expfmt.TypeTextPlain))
	for _, mf := range mfs {
		if eerr := enc.Encode(mf); eerr != nil {
			return eerr
		}
	}
	return err
}

// ContentType is the content type of WriteText's output.
const ContentType = "text/plain; version=0.0.4; charset=utf-8"

// Series is a page read back: each sample line's series (name and labels,
// as written) -> value.
type Series map[string]float64

// ParseText reads a page in the Prometheus text format (as WriteText and
// Handler write it) into Series. Comment and empty lines are skipped; a
// sample line without a value that parses as a float is an error naming it.
func ParseText(r io.Reader) (Series, error) {
	out := Series{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			return nil, fmt.Errorf("promexport: sample line without a value: %q", line)
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			return nil, fmt.Errorf("promexport: bad value in %q: %w", line, err)
		}
		out[line[:i]] = v
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("promexport: reading the page: %w", err)
	}
	return out, nil
}

// String lists the series but histogram buckets, sorted, one per line
// ("  name{labels} value"), for test failure messages.
func (s Series) String() string {
	keys := make([]string, 0, len(s))
	for k := range s {
		if !strings.Contains(k, "_bucket") {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "  %s %v\n", k, s[k])
	}
	return b.String()
}
