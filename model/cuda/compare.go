package cuda

import (
	"fmt"
	"math"
)

// closeTo reports the worst relative difference of got from want, as an
// error message when above tol.
func closeTo(what string, got, want []float32, tol float64) error {
	if len(got) != len(want) {
		return fmt.Errorf("%s: got %d values, want %d", what, len(got), len(want))
	}
	var scale float64
	for _, w := range want {
		scale = max(scale, math.Abs(float64(w)))
	}
	scale = max(scale, 1e-6)
	worst, at := 0.0, -1
	for i := range got {
		if d := math.Abs(float64(got[i])-float64(want[i])) / scale; d > worst || math.IsNaN(d) {
			worst, at = d, i
			if math.IsNaN(d) {
				break
			}
		}
	}
	if worst > tol || math.IsNaN(worst) {
		return fmt.Errorf("%s: max |got-want|/max|want| = %.3g > %.3g at [%d]: got %g, want %g (max|want| %g)",
			what, worst, tol, at, got[at], want[at], scale)
	}
	return nil
}
