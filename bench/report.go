// Package bench holds fusionrag's measurement harnesses (TTFT, fidelity,
// and later quality, load and store) and their report writers: JSON rows and
// Markdown tables. It has no product code path of its own: every method it
// measures runs through the product packages (recompute, kvstore, model).
//
// The demo (RunDemo, `fusionrag demo`) is one of these harnesses: the whole
// stack in one process on embedded defaults, measured end to end. Its files
// are demo.go and demo_*.go. Only cmd/fusionrag imports this package.
package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
)

// Table is a Markdown table with a title and notes below it.
type Table struct {
	Title  string
	Header []string
	Rows   [][]string
	Notes  []string
}

// WriteMarkdown renders the table as GitHub-flavoured Markdown.
func (t Table) WriteMarkdown(w io.Writer) error {
	var b strings.Builder
	if t.Title != "" {
		fmt.Fprintf(&b, "### %s\n\n", t.Title)
	}
	row := func(cells []string) {
		b.WriteString("|")
		for _, c := range cells {
			b.WriteString(" " + strings.ReplaceAll(c, "|", `\|`) + " |")
		}
		b.WriteString("\n")
	}
	row(t.Header)
	sep := make([]string, len(t.Header))
	for i := range sep {
		sep[i] = "---"
	}
	row(sep)
	for _, r := range t.Rows {
		row(r)
	}
	if len(t.Notes) > 0 {
		b.WriteString("\n")
		for _, n := range t.Notes {
			b.WriteString(n + "\n")
		}
	}
	b.WriteString("\n")
	_, err := io.WriteString(w, b.String())
	return err
}

// WriteJSON writes v as indented JSON followed by a newline.
func WriteJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// Output says where a harness's report goes (see WriteReport): the
// Markdown to Stdout when not nil; the JSON document to JSONFile when set;
// <name>.json, <name>.md and the plots into OutDir when set.
type Output struct {
	Stdout   io.Writer
	JSONFile string
	OutDir   string
}

// WriteRowsJSON writes rows alone, as an indented JSON array, to path: the
// `--json FILE` form of the ttft and fidelity harnesses.
func WriteRowsJSON(path string, rows any) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	if err := WriteJSON(f, rows); err != nil {
		f.Close()
		return fmt.Errorf("bench: %s: %w", path, err)
	}
	return f.Close()
}

// f formats a float with the given decimals.
func f(x float64, decimals int) string { return fmt.Sprintf("%.*f", decimals, x) }

// pct formats a ratio in [0, 1] as a percentage with at most one decimal.
func pct(r float64) string {
	s := fmt.Sprintf("%.1f", r*100)
	s = strings.TrimSuffix(s, ".0")
	return s + "%"
}
