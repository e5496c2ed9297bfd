//go:build !unix

package bench

import "time"

// processCPU is unavailable on this platform: CPU columns stay 0.
func processCPU() (time.Duration, bool) { return 0, false }
