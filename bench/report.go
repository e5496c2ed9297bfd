// Package bench holds fusionrag's measurement harnesses (TTFT, fidelity,
// and later quality, load and store) and their report writers: JSON rows and
// Markdown tables. It has no product code path of its own: every method it
// measures runs through the product packages (recompute, kvstore, model).
package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
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

// Output says where a harness's report goes: the Markdown always to Stdout
// (when not nil); the JSON rows to JSONFile when set; both, as <name>.md and
// <name>.json, into OutDir when set.
type Output struct {
	Stdout   io.Writer
	JSONFile string
	OutDir   string
}

// Write emits a report: tables as Markdown, rows as JSON.
func (o Output) Write(name string, tables []Table, rows any) error {
	var md strings.Builder
	for _, t := range tables {
		if err := t.WriteMarkdown(&md); err != nil {
			return err
		}
	}
	if o.Stdout != nil {
		if _, err := io.WriteString(o.Stdout, md.String()); err != nil {
			return err
		}
	}
	writeJSONFile := func(path string) error {
		f, err := os.Create(path)
		if err != nil {
			return err
		}
		if err := WriteJSON(f, rows); err != nil {
			f.Close()
			return err
		}
		return f.Close()
	}
	if o.JSONFile != "" {
		if err := writeJSONFile(o.JSONFile); err != nil {
			return fmt.Errorf("bench: %w", err)
		}
	}
	if o.OutDir != "" {
		if err := os.MkdirAll(o.OutDir, 0o755); err != nil {
			return fmt.Errorf("bench: %w", err)
		}
		if err := writeJSONFile(filepath.Join(o.OutDir, name+".json")); err != nil {
			return fmt.Errorf("bench: %w", err)
		}
		if err := os.WriteFile(filepath.Join(o.OutDir, name+".md"), []byte(md.String()), 0o644); err != nil {
			return fmt.Errorf("bench: %w", err)
		}
	}
	return nil
}

// f formats a float with the given decimals.
func f(x float64, decimals int) string { return fmt.Sprintf("%.*f", decimals, x) }

// pct formats a ratio in [0, 1] as a percentage with at most one decimal.
func pct(r float64) string {
	s := fmt.Sprintf("%.1f", r*100)
	s = strings.TrimSuffix(s, ".0")
	return s + "%"
}
