package fusion

import (
	"fmt"
	"io"
	"strings"
	"sync"
	"time"
)

// Bar is a terminal progress bar: done/total, rate in chunks per minute and
// the ETA at that rate, redrawn in place ("\r") at most every Interval. Safe
// for concurrent Set calls.
type Bar struct {
	w        io.Writer
	label    string
	total    int
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

// NewBar starts a bar for total items, drawing to w.
func NewBar(w io.Writer, label string, total int) *Bar {
	b := &Bar{w: w, label: label, total: total, interval: 200 * time.Millisecond, now: time.Now}
	b.start = b.now()
	b.draw()
	return b
}

// Set records that done items are finished and redraws when due.
func (b *Bar) Set(done int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if done > b.done {
		b.done = done
	}
	if t := b.now(); t.Sub(b.last) >= b.interval || b.done == b.total {
		b.draw()
	}
}

// Finish draws the final state and ends the line.
func (b *Bar) Finish() {
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

// Line renders the bar's current text (no "\r").
func (b *Bar) Line() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.line(b.now())
}

func (b *Bar) draw() {
	t := b.now()
	b.last = t
	b.drawn = b.done
	fmt.Fprintf(b.w, "\r%s", b.line(t))
}

func (b *Bar) line(t time.Time) string {
	el := t.Sub(b.start)
	frac := 1.0
	if b.total > 0 {
		frac = float64(b.done) / float64(b.total)
	}
	fill := int(frac * barWidth)
	var bar string
	switch {
	case fill >= barWidth:
		bar = strings.Repeat("=", barWidth)
	default:
		bar = strings.Repeat("=", fill) + ">" + strings.Repeat(" ", barWidth-fill-1)
	}
	rate := perMin(b.done, el)
	eta := "--"
	if b.done >= b.total {
		eta = "done"
	} else if b.done > 0 && el > 0 {
		left := time.Duration(float64(el) / float64(b.done) * float64(b.total-b.done))
		eta = left.Round(time.Second).String()
	}
	return fmt.Sprintf("%-6s [%s] %d/%d %5.1f%% %8.1f chunks/min  elapsed %s  ETA %s ",
		b.label, bar, b.done, b.total, 100*frac, rate, el.Round(time.Second), eta)
}
