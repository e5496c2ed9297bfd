package bench

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

func TestProgress(t *testing.T) {
	var buf bytes.Buffer
	// Not a terminal: silent.
	p := NewProgress(&buf, "x", 10, false)
	p.Add(5)
	p.Done()
	if buf.Len() != 0 {
		t.Errorf("non-terminal progress wrote %q", buf.String())
	}
	var nilBar *Progress
	nilBar.Add(1) // a nil bar is a no-op
	nilBar.Done()

	// Forced on (as on a terminal), with a fake clock.
	now := time.Unix(0, 0)
	p = &Progress{w: &buf, label: "quality", total: 100, start: now, now: func() time.Time { return now }}
	now = now.Add(10 * time.Second)
	p.Add(25)
	p.Done()
	got := buf.String()
	for _, want := range []string{"quality [=======>", "25/100", "2.5/s", "ETA 30s", "\x1b[K\n"} {
		if !strings.Contains(got, want) {
			t.Errorf("progress %q lacks %q", got, want)
		}
	}
}
