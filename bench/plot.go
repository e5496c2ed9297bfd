package bench

import (
	"bytes"
	"errors"
	"fmt"
	"image/color"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

// PlotKind is how a Plot draws its series.
type PlotKind int

const (
	// Lines draws each series as a line with points over numeric X.
	Lines PlotKind = iota
	// Bars draws grouped bars: one group per category, one bar per series
	// (Series[i].Y[j] is series i at Categories[j]; X is ignored).
	Bars
)

// Series is one named line (X, Y of equal length) or one bar per category.
type Series struct {
	Name string
	X, Y []float64
}

// Plot is a chart rendered as PNG beside a report.
type Plot struct {
	// File is the PNG's base name, e.g. "ttft-context.png".
	File                  string
	Title, XLabel, YLabel string
	Kind                  PlotKind
	Series                []Series
	// Categories label the bar groups (Bars only).
	Categories []string
	// LogX and LogY use logarithmic axes (values must be > 0).
	LogX, LogY bool
}

// ErrEmptyPlot is returned for a plot with no data point to draw.
var ErrEmptyPlot = errors.New("bench: plot has no data")

// plotSize is the rendered size: 6.4 × 3.8 in at the PNG backend's 96 dpi
// (614 × 365 px), which keeps each PNG far below 200 KB.
var plotW, plotH = 6.4 * vg.Inch, 3.8 * vg.Inch

// build lays out the gonum plot.
func (p Plot) build() (*plot.Plot, error) {
	pl := plot.New()
	pl.Title.Text = p.Title
	pl.X.Label.Text = p.XLabel
	pl.Y.Label.Text = p.YLabel
	pl.Legend.Top = true
	pl.Add(plotter.NewGrid())
	points := 0
	switch p.Kind {
	case Lines:
		for i, s := range p.Series {
			if len(s.X) != len(s.Y) {
				return nil, fmt.Errorf("bench: plot %s: series %q has %d X and %d Y", p.File, s.Name, len(s.X), len(s.Y))
			}
			var xys plotter.XYs
			for j := range s.X {
				if !finite(s.X[j]) || !finite(s.Y[j]) || p.LogX && s.X[j] <= 0 || p.LogY && s.Y[j] <= 0 {
					continue
				}
				xys = append(xys, plotter.XY{X: s.X[j], Y: s.Y[j]})
			}
			if len(xys) == 0 {
				continue
			}
			points += len(xys)
			l, pts, err := plotter.NewLinePoints(xys)
			if err != nil {
				return nil, err
			}
			l.Color = plotutil.Color(i)
			l.Dashes = plotutil.Dashes(i)
			pts.Color = plotutil.Color(i)
			pts.Shape = plotutil.Shape(i)
			pl.Add(l, pts)
			pl.Legend.Add(s.Name, l, pts)
		}
	case Bars:
		n := len(p.Series)
		w := vg.Points(min(20, 300/float64(max(1, n*len(p.Categories)))))
		for i, s := range p.Series {
			if len(s.Y) != len(p.Categories) {
				return nil, fmt.Errorf("bench: plot %s: series %q has %d values for %d categories", p.File, s.Name, len(s.Y), len(p.Categories))
			}
			vals := make(plotter.Values, len(s.Y))
			for j, y := range s.Y {
				if finite(y) {
					vals[j] = y
					points++
				}
			}
			b, err := plotter.NewBarChart(vals, w)
			if err != nil {
				return nil, err
			}
			b.Color = plotutil.Color(i)
			b.LineStyle.Width = 0
			b.Offset = w * vg.Length(float64(i)-float64(n-1)/2)
			pl.Add(b)
			pl.Legend.Add(s.Name, b)
		}
		pl.NominalX(p.Categories...)
	default:
		return nil, fmt.Errorf("bench: plot %s: unknown kind %d", p.File, p.Kind)
	}
	if points == 0 {
		return nil, fmt.Errorf("%w: %s", ErrEmptyPlot, p.File)
	}
	if p.LogX {
		// Ticks at the data's own X values (a few concurrency levels or
		// sizes read better than decades).
		var xs []float64
		for _, s := range p.Series {
			for _, x := range s.X {
				if finite(x) && x > 0 && !slices.Contains(xs, x) {
					xs = append(xs, x)
				}
			}
		}
		slices.Sort(xs)
		var ticks []plot.Tick
		for _, x := range xs {
			ticks = append(ticks, plot.Tick{Value: x, Label: strconv.FormatFloat(x, 'g', 6, 64)})
		}
		if len(xs) == 1 {
			// One X value (bench load --concurrency 1): gonum widens an
			// empty range by 1 on each side, down to 0, which a log axis
			// cannot draw (it panicked); widen it by a factor instead.
			pl.X.Min, pl.X.Max = xs[0]/2, xs[0]*2
		}
		pl.X.Scale = plot.LogScale{}
		pl.X.Tick.Marker = plot.ConstantTicks(ticks)
	}
	if p.LogY {
		// Bars start at 0, which a log axis cannot show: the axis starts at
		// half the smallest positive value and clampedLog draws anything
		// below it at the bottom.
		minPos := math.Inf(1)
		for _, s := range p.Series {
			for _, y := range s.Y {
				if finite(y) && y > 0 {
					minPos = min(minPos, y)
				}
			}
		}
		if math.IsInf(minPos, 1) {
			return nil, fmt.Errorf("%w: %s: no positive value on a log axis", ErrEmptyPlot, p.File)
		}
		if pl.Y.Min <= 0 {
			pl.Y.Min = minPos / 2
		}
		pl.Y.Scale = clampedLog{}
		pl.Y.Tick.Marker = plot.LogTicks{Prec: -1}
		pl.Y.Max *= 3 // headroom for the legend
	} else if pl.Y.Max > pl.Y.Min {
		pl.Y.Max += 0.3 * (pl.Y.Max - pl.Y.Min) // headroom for the legend
	}
	pl.Legend.TextStyle.Color = color.Black
	pl.Legend.Padding = vg.Points(2)
	pl.Legend.YOffs = -vg.Points(2)
	return pl, nil
}

func finite(x float64) bool { return !math.IsNaN(x) && !math.IsInf(x, 0) }

// WritePNG renders the plot as PNG to w.
func (p Plot) WritePNG(w io.Writer) error {
	pl, err := p.build()
	if err != nil {
		return err
	}
	wt, err := pl.WriterTo(plotW, plotH, "png")
	if err != nil {
		return err
	}
	_, err = wt.WriteTo(w)
	return err
}

// Save renders the plot into dir/File.
func (p Plot) Save(dir string) error {
	if p.File == "" || strings.ContainsAny(p.File, `/\`) || !strings.HasSuffix(p.File, ".png") {
		return fmt.Errorf("bench: plot file %q must be a base name ending in .png", p.File)
	}
	var buf bytes.Buffer
	if err := p.WritePNG(&buf); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, p.File), buf.Bytes(), 0o644)
}

// clampedLog is plot.LogScale with values at or below the axis minimum drawn
// at the minimum instead of panicking.
type clampedLog struct{}

func (clampedLog) Normalize(lo, hi, x float64) float64 {
	return plot.LogScale{}.Normalize(lo, hi, max(x, lo))
}
