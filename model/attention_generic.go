//go:build !amd64 || purego

package model

// The softmax tile kernels in Go (the AVX2 ones give the same bits).
var (
	maxScaled       = maxScaledGo
	maxScaledMasked = maxScaledMaskedGo
	expScaled       = expScaledGo
)
