package bench

import (
	"bytes"
	"errors"
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

type stringsBuilder = strings.Builder

func TestPlotPNG(t *testing.T) {
	dir := t.TempDir()
	for _, p := range []Plot{
		{File: "lines.png", Title: "lines", XLabel: "x", YLabel: "y", Series: []Series{
			{Name: "a", X: []float64{1, 2, 4}, Y: []float64{1, 3, 2}}, {Name: "b", X: []float64{1, 4}, Y: []float64{2, 2}}}},
		{File: "loglines.png", LogX: true, LogY: true, Series: []Series{{Name: "a", X: []float64{0, 10, 100}, Y: []float64{1, 10, 1000}}}},
		// One X value on a log axis (bench load --concurrency 1) panicked in
		// gonum: the range widened to [0, 2].
		{File: "logonex.png", LogX: true, Series: []Series{{Name: "a", X: []float64{1}, Y: []float64{18}}, {Name: "b", X: []float64{1}, Y: []float64{15}}}},
		{File: "bars.png", Kind: Bars, Categories: []string{"mem", "disk", "redis"}, LogY: true, Series: []Series{
			{Name: "big", Y: []float64{20000, 3000, 900}}, {Name: "small", Y: []float64{5000, 0, 300}}}},
	} {
		if err := p.Save(dir); err != nil {
			t.Fatalf("%s: %v", p.File, err)
		}
		b, err := os.ReadFile(filepath.Join(dir, p.File))
		if err != nil {
			t.Fatal(err)
		}
		img, err := png.Decode(bytes.NewReader(b))
		if err != nil {
			t.Fatalf("%s: not a PNG: %v", p.File, err)
		}
		if r := img.Bounds(); r.Dx() < 400 || r.Dy() < 200 || len(b) > 200<<10 {
			t.Errorf("%s: %v, %d bytes", p.File, r, len(b))
		}
	}
	for _, p := range []Plot{
		{File: "empty.png"},
		{File: "nan.png", Series: []Series{{Name: "a", X: []float64{1}, Y: []float64{nan()}}}},
	} {
		if err := p.Save(dir); !errors.Is(err, ErrEmptyPlot) {
			t.Errorf("%s: %v, want ErrEmptyPlot", p.File, err)
		}
	}
	for _, p := range []Plot{
		{File: "../x.png", Series: []Series{{Name: "a", X: []float64{1}, Y: []float64{1}}}},
		{File: "mismatch.png", Series: []Series{{Name: "a", X: []float64{1, 2}, Y: []float64{1}}}},
		{File: "bars.png", Kind: Bars, Categories: []string{"a"}, Series: []Series{{Name: "a", Y: []float64{1, 2}}}},
	} {
		if err := p.Save(dir); err == nil {
			t.Errorf("%s: no error", p.File)
		}
	}
}

func nan() float64 { var z float64; return z / z }
