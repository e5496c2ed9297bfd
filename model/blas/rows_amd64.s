//go:build amd64 && !purego

#include "textflag.h"

// func axpyRows64AVX(p *float32, nk int, v *float32, ldv int, y *float32)
//
// y[c] = y[c] + p[j]*v[j*ldv+c] for c in [0,64), j in [0,nk) in increasing
// j: y held in Y0..Y7 over all keys, each term a multiply then an add (no
// FMA), the bits of axpyGo applied key after key.
TEXT ·axpyRows64AVX(SB), NOSPLIT, $0-40
	MOVQ p+0(FP), SI
	MOVQ nk+8(FP), CX
	MOVQ v+16(FP), DI
	MOVQ ldv+24(FP), DX
	SHLQ $2, DX
	MOVQ y+32(FP), BX
	VMOVUPS 0(BX), Y0
	VMOVUPS 32(BX), Y1
	VMOVUPS 64(BX), Y2
	VMOVUPS 96(BX), Y3
	VMOVUPS 128(BX), Y4
	VMOVUPS 160(BX), Y5
	VMOVUPS 192(BX), Y6
	VMOVUPS 224(BX), Y7
rows64:
	VBROADCASTSS (SI), Y8
	VMULPS  0(DI), Y8, Y9
	VMULPS  32(DI), Y8, Y10
	VMULPS  64(DI), Y8, Y11
	VMULPS  96(DI), Y8, Y12
	VADDPS  Y9, Y0, Y0
	VADDPS  Y10, Y1, Y1
	VADDPS  Y11, Y2, Y2
	VADDPS  Y12, Y3, Y3
	VMULPS  128(DI), Y8, Y13
	VMULPS  160(DI), Y8, Y14
	VMULPS  192(DI), Y8, Y15
	VMULPS  224(DI), Y8, Y9
	VADDPS  Y13, Y4, Y4
	VADDPS  Y14, Y5, Y5
	VADDPS  Y15, Y6, Y6
	VADDPS  Y9, Y7, Y7
	ADDQ    $4, SI
	ADDQ    DX, DI
	DECQ    CX
	JNZ     rows64
	VMOVUPS Y0, 0(BX)
	VMOVUPS Y1, 32(BX)
	VMOVUPS Y2, 64(BX)
	VMOVUPS Y3, 96(BX)
	VMOVUPS Y4, 128(BX)
	VMOVUPS Y5, 160(BX)
	VMOVUPS Y6, 192(BX)
	VMOVUPS Y7, 224(BX)
	VZEROUPPER
	RET

// func axpyRows8AVX(p *float32, nk int, v *float32, ldv int, y *float32)
//
// axpyRows64AVX on 8 columns.
TEXT ·axpyRows8AVX(SB), NOSPLIT, $0-40
	MOVQ p+0(FP), SI
	MOVQ nk+8(FP), CX
	MOVQ v+16(FP), DI
	MOVQ ldv+24(FP), DX
	SHLQ $2, DX
	MOVQ y+32(FP), BX
	VMOVUPS 0(BX), Y0
rows8:
	VBROADCASTSS (SI), Y8
	VMULPS  0(DI), Y8, Y9
	VADDPS  Y9, Y0, Y0
	ADDQ    $4, SI
	ADDQ    DX, DI
	DECQ    CX
	JNZ     rows8
	VMOVUPS Y0, 0(BX)
	VZEROUPPER
	RET
