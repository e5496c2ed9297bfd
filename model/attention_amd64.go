//go:build amd64 && !purego

package model

import "golang.org/x/sys/cpu"

// The softmax tile kernels: AVX2 assembly (attention_amd64.s) where the CPU
// has it, the Go references otherwise; both give the same bits.
var (
	maxScaled       = maxScaledGo
	maxScaledMasked = maxScaledMaskedGo
	expScaled       = expScaledGo
)

func init() {
	if cpu.X86.HasAVX2 {
		maxScaled, maxScaledMasked, expScaled = maxScaledAsm, maxScaledMaskedAsm, expScaledAsm
	}
}

//go:noescape
func maxScaledAVX2(row *float32, n8 int, scale float32) float32

//go:noescape
func maxScaledMaskedAVX2(row *float32, kpos *int32, n8 int, p int32, scale float32) float32

//go:noescape
func expScaledAVX2(row *float32, n8 int, m float32) float32

// The wrappers hand whole groups of 8 to the assembly; a tile row is
// attnTile long, a multiple of 8 (asserted by the callers' lengths).

func maxScaledAsm(row []float32, scale float32) float32 {
	if len(row) == 0 || len(row)%8 != 0 {
		return maxScaledGo(row, scale)
	}
	return maxScaledAVX2(&row[0], len(row)/8, scale)
}

func maxScaledMaskedAsm(row []float32, kpos []int32, p int32, scale float32) float32 {
	if len(row) == 0 || len(row)%8 != 0 {
		return maxScaledMaskedGo(row, kpos, p, scale)
	}
	_ = kpos[len(row)-1]
	return maxScaledMaskedAVX2(&row[0], &kpos[0], len(row)/8, p, scale)
}

func expScaledAsm(row []float32, scale, m float32) float32 {
	if len(row) == 0 || len(row)%8 != 0 {
		return expScaledGo(row, scale, m)
	}
	return expScaledAVX2(&row[0], len(row)/8, m)
}
