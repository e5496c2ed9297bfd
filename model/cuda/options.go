package cuda

import (
	"fmt"
	"os"
	"strconv"
)

// Options configures the CUDA runtime.
type Options struct {
	// Device is the CUDA device ordinal (default 0).
	Device int
	// DType is the storage type of weights and KV (default BF16; F32 for
	// exactness checks against the cpu backend).
	DType DType
}

// Validate checks the options.
func (o Options) Validate() error {
	if o.Device < 0 {
		return fmt.Errorf("cuda: device %d must be >= 0", o.Device)
	}
	switch o.DType {
	case BF16, F16, F32:
	default:
		return fmt.Errorf("cuda: unknown dtype %v", o.DType)
	}
	return nil
}

// Environment variables read by OptionsFromEnv (the registered "cuda"
// backend has no other way to take options through model.LoadOptions).
const (
	EnvDevice = "FUSIONRAG_CUDA_DEVICE" // device ordinal, default 0
	EnvDType  = "FUSIONRAG_CUDA_DTYPE"  // bf16 (default), f16 or f32
)

// OptionsFromEnv reads EnvDevice and EnvDType.
func OptionsFromEnv() (Options, error) {
	var o Options
	if s := os.Getenv(EnvDevice); s != "" {
		d, err := strconv.Atoi(s)
		if err != nil {
			return o, fmt.Errorf("cuda: %s=%q: %w", EnvDevice, s, err)
		}
		o.Device = d
	}
	if s := os.Getenv(EnvDType); s != "" {
		d, err := ParseDType(s)
		if err != nil {
			return o, err
		}
		o.DType = d
	}
	return o, o.Validate()
}
