package bench

import (
	"io"

	"github.com/fusionrag/fusionrag/fusion"
)

// Progress is the harnesses' progress bar: fusion.Bar, the module's one bar
// (label, count, percent, rate, ETA). A nil *Progress is silent.
type Progress = fusion.Bar

// NewProgress returns a bar over total steps writing to w, or nil (silent)
// when quiet or when w is not a terminal, so logs and CI output stay clean.
func NewProgress(w io.Writer, label string, total int, quiet bool) *Progress {
	if quiet || !IsTerminal(w) {
		return nil
	}
	return fusion.NewBar(w, label, total)
}

// IsTerminal reports whether w is a character device (a TTY); see
// fusion.IsTerminal.
func IsTerminal(w io.Writer) bool { return fusion.IsTerminal(w) }
