package fusion

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

func TestBar(t *testing.T) {
	var buf bytes.Buffer
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	b := &Bar{w: &buf, label: "fused", total: 100, interval: time.Second, now: func() time.Time { return now }}
	b.start = now
	now = now.Add(30 * time.Second)
	b.Set(25)
	want := "fused  [=======>                      ] 25/100  25.0%     50.0 chunks/min  elapsed 30s  ETA 1m30s "
	if got := b.Line(); got != want {
		t.Errorf("line\n got %q\nwant %q", got, want)
	}
	b.Set(26) // within the interval: not drawn
	if n := strings.Count(buf.String(), "\r"); n != 1 {
		t.Errorf("%d draws, want 1", n)
	}
	now = now.Add(90 * time.Second)
	b.Set(100)
	b.Finish()
	b.Finish()
	out := buf.String()
	if !strings.HasSuffix(out, "ETA done \n") || strings.Count(out, "\r") != 2 {
		t.Errorf("output %q", out)
	}
}
