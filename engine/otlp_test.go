package engine

import (
	"context"
	"testing"

	"github.com/fusionrag/fusionrag/internal/otelenv"
	"github.com/fusionrag/fusionrag/internal/otlptest"
)

// TestMetricsPushedOverOTLP (issue 19: metrics could not be pushed over
// OTLP like the traces): an engine given the reader otelenv builds from
// OTEL_EXPORTER_OTLP_ENDPOINT pushes its counters to a real OTLP/gRPC
// receiver, under service.name fusionrag-engine; Shutdown pushes the last
// values. Without the variables no reader is built.
func TestMetricsPushedOverOTLP(t *testing.T) {
	if r, err := otelenv.MetricReader(context.Background(), func(string) (string, bool) { return "", false }); r != nil || err != nil {
		t.Fatalf("no OTLP variables: reader %v, err %v; want nil, nil", r, err)
	}
	rcv, env := otlptest.Start(t)
	t.Setenv("OTEL_SERVICE_NAME", "")
	reader, err := otelenv.MetricReader(context.Background(), env)
	if err != nil || reader == nil {
		t.Fatalf("OTLP endpoint set: reader %v, err %v", reader, err)
	}
	e, err := New(Config{}, &fakeLM{vocab: 259, maxPos: 256}, byteTok{}, WithMetricReader(reader))
	if err != nil {
		t.Fatal(err)
	}
	url := serve(t, e)
	for range 2 {
		complete(t, url, `{"prompt":"ab","max_tokens":2,"temperature":0}`)
	}
	if err := e.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	got := rcv.SumPoints("fusionrag.engine.requests", "endpoint")
	if got["/v1/completions"] != 2 {
		t.Errorf("pushed fusionrag.engine.requests by endpoint = %v, want /v1/completions: 2", got)
	}
	if tok := rcv.SumPoints("fusionrag.engine.prompt_tokens", ""); tok[""] <= 0 {
		t.Errorf("pushed fusionrag.engine.prompt_tokens = %v, want > 0", tok)
	}
	if svc := rcv.Service("fusionrag.engine.requests"); svc != "fusionrag-engine" {
		t.Errorf("service.name of the pushed metrics = %q, want fusionrag-engine", svc)
	}
}
