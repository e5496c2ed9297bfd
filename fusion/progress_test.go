package fusion

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

// fakeBar is a bar on buf with a clock the test moves.
func fakeBar(buf *bytes.Buffer, label string, total int, now *time.Time) *Bar {
	b := &Bar{w: buf, label: label, total: total, interval: time.Second, now: func() time.Time { return *now }}
	b.start = *now
	return b
}

func TestBarLine(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		name    string
		total   int
		elapsed time.Duration
		done    int
		want    string
	}{
		{"start", 100, 0, 0, "fused [>                             ] 0/100   0.0%  --  elapsed 0s  ETA --"},
		{"per minute below one a second", 100, 30 * time.Second, 25,
			"fused [=======>                      ] 25/100  25.0%  50.0/min  elapsed 30s  ETA 1m30s"},
		{"per second", 100, 10 * time.Second, 25, "fused [=======>                      ] 25/100  25.0%  2.5/s  elapsed 10s  ETA 30s"},
		{"done", 4, 2 * time.Second, 4, "fused [==============================] 4/4 100.0%  2.0/s  elapsed 2s  ETA done"},
		{"past the total", 4, 2 * time.Second, 6, "fused [==============================] 6/4 100.0%  3.0/s  elapsed 2s  ETA done"},
		{"no total", 0, time.Second, 0, "fused [==============================] 0/0 100.0%  0.0/s  elapsed 1s  ETA done"},
	}
	for _, tt := range tests {
		now := t0
		b := fakeBar(&bytes.Buffer{}, "fused", tt.total, &now)
		now = now.Add(tt.elapsed)
		b.Add(tt.done)
		if got := b.Line(); got != tt.want {
			t.Errorf("%s:\n got %q\nwant %q", tt.name, got, tt.want)
		}
	}
}

func TestBarDraws(t *testing.T) {
	var buf bytes.Buffer
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	b := fakeBar(&buf, "fused", 100, &now)
	now = now.Add(30 * time.Second)
	b.Set(25)
	b.Set(26) // within the interval: not drawn
	b.Set(20) // out of order: ignored
	if n := strings.Count(buf.String(), "\r"); n != 1 {
		t.Errorf("%d draws, want 1", n)
	}
	if !strings.Contains(b.Line(), " 26/100 ") {
		t.Errorf("line %q, want 26/100 (Set keeps the largest count)", b.Line())
	}
	now = now.Add(90 * time.Second)
	b.Add(74) // reaches the total: drawn within the interval
	b.Done()
	b.Done()
	b.Add(1) // after Done: nothing
	out := buf.String()
	if !strings.HasSuffix(out, "ETA done\n") || strings.Count(out, "\r") != 2 || strings.Contains(out, "\x1b") {
		t.Errorf("output %q: want 2 draws ending in \"ETA done\\n\", no escape codes off a terminal", out)
	}
}

func TestBarNil(t *testing.T) {
	b := NewBar(nil, "x", 3)
	if b != nil {
		t.Fatal("NewBar(nil, ...) is not nil")
	}
	b.Add(1) // a nil bar is a no-op
	b.Set(2)
	b.Done()
	if b.Line() != "" {
		t.Error("nil bar has a line")
	}
	var buf bytes.Buffer
	if IsTerminal(&buf) {
		t.Error("a buffer is a terminal")
	}
}
