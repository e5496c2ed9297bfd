package promexport

import (
	"context"
	"net/http/httptest"
	"strings"
	"testing"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
)

// TestExpositionsAreSeparate: two expositions in one process each show
// only their own provider's series, named as the exporter names them
// (_total, unit suffixes, no scope labels), over WriteText and Handler.
func TestExpositionsAreSeparate(t *testing.T) {
	ctx := context.Background()
	var pages [2]string
	for i, name := range []string{"a.requests", "b.latency"} {
		e, err := New()
		if err != nil {
			t.Fatal(err)
		}
		mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(e.Reader()))
		defer mp.Shutdown(ctx)
		m := mp.Meter("test")
		if i == 0 {
			c, _ := m.Int64Counter(name, metric.WithUnit("{request}"))
			c.Add(ctx, 3)
		} else {
			h, _ := m.Float64Histogram(name, metric.WithUnit("s"))
			h.Record(ctx, 0.5)
		}
		var b strings.Builder
		if err := e.WriteText(&b); err != nil {
			t.Fatal(err)
		}
		pages[i] = b.String()
		rec := httptest.NewRecorder()
		e.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
		if rec.Code != 200 || !strings.Contains(rec.Body.String(), strings.Split(pages[i], "\n")[0]) {
			t.Errorf("handler: %d %q", rec.Code, rec.Body.String())
		}
	}
	for _, tc := range []struct {
		page       string
		want, lack string
	}{
		{pages[0], "a_requests_total 3\n", "b_latency"},
		{pages[1], "b_latency_seconds_count 1\n", "a_requests"},
	} {
		if !strings.Contains(tc.page, tc.want) || strings.Contains(tc.page, tc.lack) {
			t.Errorf("page should have %q and no %q:\n%s", tc.want, tc.lack, tc.page)
		}
		if strings.Contains(tc.page, "otel_scope") {
			t.Errorf("scope labels on the page:\n%s", tc.page)
		}
	}
}

// TestParseText reads back a page WriteText wrote, and names what it
// cannot read.
func TestParseText(t *testing.T) {
	ctx := context.Background()
	e, err := New()
	if err != nil {
		t.Fatal(err)
	}
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(e.Reader()))
	defer mp.Shutdown(ctx)
	c, _ := mp.Meter("test").Int64Counter("x.requests", metric.WithUnit("{request}"))
	c.Add(ctx, 2, metric.WithAttributes(attribute.String("path", "fusion")))
	var b strings.Builder
	if err := e.WriteText(&b); err != nil {
		t.Fatal(err)
	}
	s, err := ParseText(strings.NewReader(b.String()))
	if err != nil {
		t.Fatal(err)
	}
	if got := s[`x_requests_total{path="fusion"}`]; got != 2 {
		t.Errorf("x_requests_total{path=\"fusion\"} = %v, want 2; page:\n%s", got, s)
	}
	for _, bad := range []string{"novalue\n", "x_total abc\n"} {
		if _, err := ParseText(strings.NewReader(bad)); err == nil {
			t.Errorf("ParseText(%q): no error", bad)
		}
	}
	if got := (Series{"a": 1, "b_bucket{le=\"1\"}": 2, "c": 3}).String(); got != "  a 1\n  c 3\n" {
		t.Errorf("Series.String() = %q", got)
	}
}
