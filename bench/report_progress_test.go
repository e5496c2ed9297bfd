package bench

import (
	"bytes"
	"testing"
)

// TestProgress: off a terminal, or when quiet, the bar is nil and silent
// (fusion's tests cover the drawing).
func TestProgress(t *testing.T) {
	var buf bytes.Buffer
	for _, quiet := range []bool{false, true} {
		p := NewProgress(&buf, "x", 10, quiet)
		if p != nil {
			t.Errorf("quiet=%v: a bar on a buffer", quiet)
		}
		p.Add(5)
		p.Done()
	}
	if buf.Len() != 0 {
		t.Errorf("non-terminal progress wrote %q", buf.String())
	}
}
