package bench

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"
)

// Progress is a one-line progress bar with rate and ETA, redrawn in place on
// a terminal. It is silent (every method a no-op) when its writer is not a
// terminal or when made quiet, so logs and CI output stay clean. Safe for
// concurrent use.
type Progress struct {
	mu    sync.Mutex
	w     io.Writer // nil: silent
	label string
	total int
	done  int
	start time.Time
	drawn time.Time
	now   func() time.Time
}

// NewProgress returns a bar over total steps writing to w, silent when quiet
// or when w is not a terminal (see IsTerminal).
func NewProgress(w io.Writer, label string, total int, quiet bool) *Progress {
	p := &Progress{label: label, total: total, start: time.Now(), now: time.Now}
	if !quiet && IsTerminal(w) {
		p.w = w
	}
	return p
}

// IsTerminal reports whether w is a character device (a TTY).
func IsTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok || f == nil {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// Add advances the bar by n steps and redraws it at most ten times a second.
func (p *Progress) Add(n int) {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.done += n
	if p.w == nil {
		return
	}
	if now := p.now(); now.Sub(p.drawn) >= 100*time.Millisecond || p.done >= p.total {
		p.drawn = now
		fmt.Fprintf(p.w, "\r%s\x1b[K", p.line(now))
	}
}

// Done ends the bar's line.
func (p *Progress) Done() {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.w != nil {
		fmt.Fprintf(p.w, "\r%s\x1b[K\n", p.line(p.now()))
		p.w = nil
	}
}

// line renders "label [=====>    ] 12/100 3.4/s ETA 25s".
func (p *Progress) line(now time.Time) string {
	const width = 28
	frac := 0.0
	if p.total > 0 {
		frac = min(1, float64(p.done)/float64(p.total))
	}
	fill := int(frac * width)
	bar := strings.Repeat("=", fill)
	if fill < width {
		bar += ">" + strings.Repeat(" ", width-fill-1)
	}
	el := now.Sub(p.start).Seconds()
	rate := 0.0
	if el > 0 {
		rate = float64(p.done) / el
	}
	eta := "?"
	if rate > 0 && p.total >= p.done {
		eta = time.Duration(float64(p.total-p.done) / rate * float64(time.Second)).Round(time.Second).String()
	}
	return fmt.Sprintf("%s [%s] %d/%d %.1f/s ETA %s", p.label, bar, p.done, p.total, rate, eta)
}
