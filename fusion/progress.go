package fusion

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"
)

// Bar is the module's one progress bar (ingest's phases here, every bench
// harness through bench.NewProgress): a line
//
//	label [=========>                    ] 25/100  25.0%  2.5/s  elapsed 10s  ETA 30s
//
// redrawn in place ("\r", and "\x1b[K" to clear the rest when the writer is
// a terminal) at most every 100 ms and whenever the count reaches the total.
// The rate is per second, or per minute below one a second (fusing large
// chunks is slow). A nil *Bar is silent: every method is a no-op, so a
// caller that wants no output passes nil. Safe for concurrent use.
type Bar struct {
	w        io.Writer
	label    string
	total    int
	clear    string // "\x1b[K" on a terminal, else ""
	start    time.Time
	interval time.Duration
	now      func() time.Time

	mu       sync.Mutex
	done     int
	drawn    int // done at the last draw
	last     time.Time
	finished bool
}

// barWidth is the number of cells of the bar itself.
const barWidth = 30

// NewBar starts a bar for total items, drawing to w; nil w gives a nil
// (silent) bar.
func NewBar(w io.Writer, label string, total int) *Bar {
	if w == nil {
		return nil
	}
	b := &Bar{w: w, label: label, total: total, interval: 100 * time.Millisecond, now: time.Now}
	if IsTerminal(w) {
		b.clear = "\x1b[K"
	}
	b.start = b.now()
	b.draw()
	return b
}

// IsTerminal reports whether w is a character device (a TTY): where a
// redrawn line makes sense rather than a log full of carriage returns.
func IsTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok || f == nil {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// Set records that done items are finished (a smaller count than one seen
// before is ignored: workers report out of order) and redraws when due.
func (b *Bar) Set(done int) {
	if b == nil {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.done = max(b.done, done)
	b.maybeDraw()
}

// Add records n more finished items and redraws when due.
func (b *Bar) Add(n int) {
	if b == nil {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.done += n
	b.maybeDraw()
}

// Done draws the final state and ends the line; later calls do nothing.
func (b *Bar) Done() {
	if b == nil {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.finished {
		return
	}
	b.finished = true
	if b.drawn != b.done || b.done == 0 {
		b.draw()
	}
	fmt.Fprintln(b.w)
}

// Line renders the bar's current text (no "\r"); "" for a nil bar.
func (b *Bar) Line() string {
	if b == nil {
		return ""
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.line(b.now())
}

func (b *Bar) maybeDraw() {
	if b.finished {
		return
	}
	if t := b.now(); t.Sub(b.last) >= b.interval || b.done == b.total {
		b.draw()
	}
}

func (b *Bar) draw() {
	t := b.now()
	b.last = t
	b.drawn = b.done
	fmt.Fprintf(b.w, "\r%s%s", b.line(t), b.clear)
}

func (b *Bar) line(t time.Time) string {
	el := t.Sub(b.start)
	frac := 1.0
	if b.total > 0 {
		frac = min(1, float64(b.done)/float64(b.total))
	}
	fill := int(frac * barWidth)
	var bar string
	switch {
	case fill >= barWidth:
		bar = strings.Repeat("=", barWidth)
	default:
		bar = strings.Repeat("=", fill) + ">" + strings.Repeat(" ", barWidth-fill-1)
	}
	rate := "--"
	if s := el.Seconds(); s > 0 {
		if ps := float64(b.done) / s; ps >= 1 || b.done == 0 {
			rate = fmt.Sprintf("%.1f/s", ps)
		} else {
			rate = fmt.Sprintf("%.1f/min", 60*ps)
		}
	}
	eta := "--"
	if b.done >= b.total {
		eta = "done"
	} else if b.done > 0 && el > 0 {
		left := time.Duration(float64(el) / float64(b.done) * float64(b.total-b.done))
		eta = left.Round(time.Second).String()
	}
	return fmt.Sprintf("%s [%s] %d/%d %5.1f%%  %s  elapsed %s  ETA %s",
		b.label, bar, b.done, b.total, 100*frac, rate, el.Round(time.Second), eta)
}
