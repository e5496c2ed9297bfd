// Package otelenv reads the OpenTelemetry SDK environment variables that
// decide whether a signal (traces, metrics) is exported over OTLP, and
// builds what they ask for, so that the sidecar and the engine read them
// the same way.
//
// Only OTLP over gRPC is supported. The exporters themselves read the
// other OTEL_EXPORTER_OTLP_* variables (endpoint, headers, insecure,
// timeout) from the process environment.
package otelenv

import (
	"context"
	"fmt"
	"strings"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetricgrpc"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"
)

// Env looks a variable up, as os.LookupEnv does. A nil Env has none set.
type Env func(string) (string, bool)

// Get returns the variable's value, trimmed; "" when unset.
func (e Env) Get(k string) string {
	if e == nil {
		return ""
	}
	v, _ := e(k)
	return strings.TrimSpace(v)
}

// Wanted reports whether signal ("TRACES" or "METRICS") is to be exported
// over OTLP/gRPC: OTEL_<signal>_EXPORTER "otlp" or "none"; unset, otlp when
// OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_<signal>_ENDPOINT is set.
// A protocol other than grpc, or another exporter, is an error naming the
// variable (a deployment asking for what is not there must hear it).
func Wanted(env Env, signal string) (bool, error) {
	exporter := strings.ToLower(env.Get("OTEL_" + signal + "_EXPORTER"))
	if exporter == "" && (env.Get("OTEL_EXPORTER_OTLP_ENDPOINT") != "" || env.Get("OTEL_EXPORTER_OTLP_"+signal+"_ENDPOINT") != "") {
		exporter = "otlp"
	}
	switch exporter {
	case "", "none":
		return false, nil
	case "otlp":
		proto := env.Get("OTEL_EXPORTER_OTLP_" + signal + "_PROTOCOL")
		if proto == "" {
			proto = env.Get("OTEL_EXPORTER_OTLP_PROTOCOL")
		}
		if proto != "" && proto != "grpc" {
			return false, fmt.Errorf("telemetry: OTLP protocol %q not supported (only grpc)", proto)
		}
		return true, nil
	}
	return false, fmt.Errorf("telemetry: OTEL_%s_EXPORTER=%q not supported (otlp or none)", signal, exporter)
}

// MetricReader returns a reader that pushes metrics over OTLP/gRPC every
// OTEL_METRIC_EXPORT_INTERVAL (default 60 s) when Wanted(env, "METRICS"),
// and nil, nil when metrics are not to be pushed. The meter provider it is
// given to shuts it down (a last push) on Shutdown.
func MetricReader(ctx context.Context, env Env) (sdkmetric.Reader, error) {
	push, err := Wanted(env, "METRICS")
	if err != nil || !push {
		return nil, err
	}
	exp, err := otlpmetricgrpc.New(ctx)
	if err != nil {
		return nil, fmt.Errorf("telemetry: OTLP metric exporter: %w", err)
	}
	return sdkmetric.NewPeriodicReader(exp), nil
}

// Resource describes the process: service.name (OTEL_SERVICE_NAME and
// OTEL_RESOURCE_ATTRIBUTES override it) and the SDK's attributes.
func Resource(ctx context.Context, service string) (*resource.Resource, error) {
	res, err := resource.New(ctx,
		resource.WithAttributes(attribute.String("service.name", service)),
		resource.WithFromEnv(), resource.WithTelemetrySDK())
	if err != nil && res == nil {
		return nil, fmt.Errorf("telemetry: resource: %w", err)
	}
	return res, nil
}
