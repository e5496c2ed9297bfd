//go:build amd64 && !purego

#include "textflag.h"

// func mulAdd6x16AVX(a *float32, lda int, b *float32, kc int, c *[96]float32)
//
// For r in [0,6), l in [0,16), p in [0,kc), in increasing p:
//   c[r*16+l] = c[r*16+l] + a[r*lda+p]*b[p*16+l]
// with a separate rounding multiply (VMULPS) and add (VADDPS) per step, no
// FMA: bit-identical to the scalar Go loop c += x*y. Accumulators Y4..Y15
// (row r in Y(4+2r), Y(5+2r)), b row in Y0/Y1, broadcast a in Y2, product Y3.
TEXT ·mulAdd6x16AVX(SB), NOSPLIT, $0-40
	MOVQ a+0(FP), SI
	MOVQ lda+8(FP), DX
	SHLQ $2, DX
	MOVQ b+16(FP), DI
	MOVQ kc+24(FP), CX
	MOVQ c+32(FP), BX
	LEAQ (SI)(DX*1), R8
	LEAQ (R8)(DX*1), R9
	LEAQ (R9)(DX*1), R10
	LEAQ (R10)(DX*1), R11
	LEAQ (R11)(DX*1), R12
	VMOVUPS 0(BX), Y4
	VMOVUPS 32(BX), Y5
	VMOVUPS 64(BX), Y6
	VMOVUPS 96(BX), Y7
	VMOVUPS 128(BX), Y8
	VMOVUPS 160(BX), Y9
	VMOVUPS 192(BX), Y10
	VMOVUPS 224(BX), Y11
	VMOVUPS 256(BX), Y12
	VMOVUPS 288(BX), Y13
	VMOVUPS 320(BX), Y14
	VMOVUPS 352(BX), Y15
	XORQ AX, AX
	TESTQ CX, CX
	JEQ done
loop:
	VMOVUPS (DI), Y0
	VMOVUPS 32(DI), Y1
	VBROADCASTSS (SI)(AX*4), Y2
	VMULPS Y0, Y2, Y3
	VADDPS Y3, Y4, Y4
	VMULPS Y1, Y2, Y3
	VADDPS Y3, Y5, Y5
	VBROADCASTSS (R8)(AX*4), Y2
	VMULPS Y0, Y2, Y3
	VADDPS Y3, Y6, Y6
	VMULPS Y1, Y2, Y3
	VADDPS Y3, Y7, Y7
	VBROADCASTSS (R9)(AX*4), Y2
	VMULPS Y0, Y2, Y3
	VADDPS Y3, Y8, Y8
	VMULPS Y1, Y2, Y3
	VADDPS Y3, Y9, Y9
	VBROADCASTSS (R10)(AX*4), Y2
	VMULPS Y0, Y2, Y3
	VADDPS Y3, Y10, Y10
	VMULPS Y1, Y2, Y3
	VADDPS Y3, Y11, Y11
	VBROADCASTSS (R11)(AX*4), Y2
	VMULPS Y0, Y2, Y3
	VADDPS Y3, Y12, Y12
	VMULPS Y1, Y2, Y3
	VADDPS Y3, Y13, Y13
	VBROADCASTSS (R12)(AX*4), Y2
	VMULPS Y0, Y2, Y3
	VADDPS Y3, Y14, Y14
	VMULPS Y1, Y2, Y3
	VADDPS Y3, Y15, Y15
	ADDQ $64, DI
	INCQ AX
	CMPQ AX, CX
	JNE loop
done:
	VMOVUPS Y4, 0(BX)
	VMOVUPS Y5, 32(BX)
	VMOVUPS Y6, 64(BX)
	VMOVUPS Y7, 96(BX)
	VMOVUPS Y8, 128(BX)
	VMOVUPS Y9, 160(BX)
	VMOVUPS Y10, 192(BX)
	VMOVUPS Y11, 224(BX)
	VMOVUPS Y12, 256(BX)
	VMOVUPS Y13, 288(BX)
	VMOVUPS Y14, 320(BX)
	VMOVUPS Y15, 352(BX)
	VZEROUPPER
	RET

// func dot8AVX(a *float32, b *float32, ldb int, kc8 int, c *[8]float32)
//
// GEMV block: for j in [0,8), p in [0,8·kc8), in increasing p:
//   c[j] = c[j] + a[p]*b[j*ldb+p]
// Eight b rows are loaded 8 floats at a time and transposed in registers
// so that lane j of the accumulator is output j; each lane is then the
// same multiply-then-add chain as the scalar Go loop (no FMA).
// Registers: rows in SI R8 R9 R10 R11 R12 R13 DI, a in BX, p in AX,
// Y14 accumulator, Y15 product, Y0..Y13 transposition.
TEXT ·dot8AVX(SB), NOSPLIT, $0-40
	MOVQ a+0(FP), BX
	MOVQ b+8(FP), SI
	MOVQ ldb+16(FP), DX
	SHLQ $2, DX
	MOVQ kc8+24(FP), CX
	SHLQ $3, CX
	LEAQ (SI)(DX*1), R8
	LEAQ (R8)(DX*1), R9
	LEAQ (R9)(DX*1), R10
	LEAQ (R10)(DX*1), R11
	LEAQ (R11)(DX*1), R12
	LEAQ (R12)(DX*1), R13
	LEAQ (R13)(DX*1), DI
	MOVQ c+32(FP), DX
	VMOVUPS (DX), Y14
	XORQ AX, AX
	TESTQ CX, CX
	JEQ gemvdone
gemvloop:
	VMOVUPS (SI)(AX*4), Y0
	VMOVUPS (R8)(AX*4), Y1
	VMOVUPS (R9)(AX*4), Y2
	VMOVUPS (R10)(AX*4), Y3
	VMOVUPS (R11)(AX*4), Y4
	VMOVUPS (R12)(AX*4), Y5
	VMOVUPS (R13)(AX*4), Y6
	VMOVUPS (DI)(AX*4), Y7
	VUNPCKLPS Y1, Y0, Y8
	VUNPCKHPS Y1, Y0, Y9
	VUNPCKLPS Y3, Y2, Y10
	VUNPCKHPS Y3, Y2, Y11
	VUNPCKLPS Y5, Y4, Y12
	VUNPCKHPS Y5, Y4, Y13
	VUNPCKLPS Y7, Y6, Y0
	VUNPCKHPS Y7, Y6, Y1
	VSHUFPS $0x44, Y10, Y8, Y2
	VSHUFPS $0xEE, Y10, Y8, Y3
	VSHUFPS $0x44, Y11, Y9, Y4
	VSHUFPS $0xEE, Y11, Y9, Y5
	VSHUFPS $0x44, Y0, Y12, Y6
	VSHUFPS $0xEE, Y0, Y12, Y7
	VSHUFPS $0x44, Y1, Y13, Y8
	VSHUFPS $0xEE, Y1, Y13, Y9
	VPERM2F128 $0x20, Y6, Y2, Y0
	VPERM2F128 $0x31, Y6, Y2, Y1
	VPERM2F128 $0x20, Y7, Y3, Y10
	VPERM2F128 $0x31, Y7, Y3, Y11
	VPERM2F128 $0x20, Y8, Y4, Y12
	VPERM2F128 $0x31, Y8, Y4, Y13
	VPERM2F128 $0x20, Y9, Y5, Y2
	VPERM2F128 $0x31, Y9, Y5, Y3
	VBROADCASTSS 0(BX)(AX*4), Y15
	VMULPS Y0, Y15, Y15
	VADDPS Y15, Y14, Y14
	VBROADCASTSS 4(BX)(AX*4), Y15
	VMULPS Y10, Y15, Y15
	VADDPS Y15, Y14, Y14
	VBROADCASTSS 8(BX)(AX*4), Y15
	VMULPS Y12, Y15, Y15
	VADDPS Y15, Y14, Y14
	VBROADCASTSS 12(BX)(AX*4), Y15
	VMULPS Y2, Y15, Y15
	VADDPS Y15, Y14, Y14
	VBROADCASTSS 16(BX)(AX*4), Y15
	VMULPS Y1, Y15, Y15
	VADDPS Y15, Y14, Y14
	VBROADCASTSS 20(BX)(AX*4), Y15
	VMULPS Y11, Y15, Y15
	VADDPS Y15, Y14, Y14
	VBROADCASTSS 24(BX)(AX*4), Y15
	VMULPS Y13, Y15, Y15
	VADDPS Y15, Y14, Y14
	VBROADCASTSS 28(BX)(AX*4), Y15
	VMULPS Y3, Y15, Y15
	VADDPS Y15, Y14, Y14
	ADDQ $8, AX
	CMPQ AX, CX
	JNE gemvloop
gemvdone:
	MOVQ c+32(FP), DX
	VMOVUPS Y14, (DX)
	VZEROUPPER
	RET

// func axpyAVX(s float32, x *float32, y *float32, n int)
//
// y[i] = y[i] + s*x[i] for i in [0, n), n a multiple of 32: a rounding
// multiply then a rounding add per element, like the scalar Go loop.
TEXT ·axpyAVX(SB), NOSPLIT, $0-32
	VBROADCASTSS s+0(FP), Y0
	MOVQ x+8(FP), SI
	MOVQ y+16(FP), DI
	MOVQ n+24(FP), CX
	XORQ AX, AX
	TESTQ CX, CX
	JEQ axpydone
axpyloop:
	VMULPS (SI)(AX*4), Y0, Y1
	VMULPS 32(SI)(AX*4), Y0, Y2
	VMULPS 64(SI)(AX*4), Y0, Y3
	VMULPS 96(SI)(AX*4), Y0, Y4
	VADDPS (DI)(AX*4), Y1, Y1
	VADDPS 32(DI)(AX*4), Y2, Y2
	VADDPS 64(DI)(AX*4), Y3, Y3
	VADDPS 96(DI)(AX*4), Y4, Y4
	VMOVUPS Y1, (DI)(AX*4)
	VMOVUPS Y2, 32(DI)(AX*4)
	VMOVUPS Y3, 64(DI)(AX*4)
	VMOVUPS Y4, 96(DI)(AX*4)
	ADDQ $32, AX
	CMPQ AX, CX
	JNE axpyloop
axpydone:
	VZEROUPPER
	RET

// func gemv4x16AVX(a *float32, b *float32, ldp int, kc int, c *[64]float32)
//
// GEMV on four packed panels: for q in [0,4), l in [0,16), p in [0,kc), in
// increasing p:
//   c[q*16+l] = c[q*16+l] + a[p]*b[q*ldp+p*16+l]
// a rounding multiply then a rounding add (no FMA), like the scalar loop.
// Panel q is read through SI, R8, R9, R10; accumulators Y8..Y15 (panel q in
// Y(8+2q), Y(9+2q)), broadcast a in Y0, products Y1..Y7 and Y0-free temps.
TEXT ·gemv4x16AVX(SB), NOSPLIT, $0-40
	MOVQ a+0(FP), BX
	MOVQ b+8(FP), SI
	MOVQ ldp+16(FP), DX
	SHLQ $2, DX
	MOVQ kc+24(FP), CX
	MOVQ c+32(FP), DI
	LEAQ (SI)(DX*1), R8
	LEAQ (R8)(DX*1), R9
	LEAQ (R9)(DX*1), R10
	VMOVUPS 0(DI), Y8
	VMOVUPS 32(DI), Y9
	VMOVUPS 64(DI), Y10
	VMOVUPS 96(DI), Y11
	VMOVUPS 128(DI), Y12
	VMOVUPS 160(DI), Y13
	VMOVUPS 192(DI), Y14
	VMOVUPS 224(DI), Y15
	XORQ AX, AX
	TESTQ CX, CX
	JEQ gemv4done
gemv4loop:
	VBROADCASTSS (BX)(AX*4), Y0
	VMULPS (SI), Y0, Y1
	VMULPS 32(SI), Y0, Y2
	VMULPS (R8), Y0, Y3
	VMULPS 32(R8), Y0, Y4
	VADDPS Y1, Y8, Y8
	VADDPS Y2, Y9, Y9
	VADDPS Y3, Y10, Y10
	VADDPS Y4, Y11, Y11
	VMULPS (R9), Y0, Y5
	VMULPS 32(R9), Y0, Y6
	VMULPS (R10), Y0, Y7
	VMULPS 32(R10), Y0, Y1
	VADDPS Y5, Y12, Y12
	VADDPS Y6, Y13, Y13
	VADDPS Y7, Y14, Y14
	VADDPS Y1, Y15, Y15
	ADDQ $64, SI
	ADDQ $64, R8
	ADDQ $64, R9
	ADDQ $64, R10
	INCQ AX
	CMPQ AX, CX
	JNE gemv4loop
gemv4done:
	VMOVUPS Y8, 0(DI)
	VMOVUPS Y9, 32(DI)
	VMOVUPS Y10, 64(DI)
	VMOVUPS Y11, 96(DI)
	VMOVUPS Y12, 128(DI)
	VMOVUPS Y13, 160(DI)
	VMOVUPS Y14, 192(DI)
	VMOVUPS Y15, 224(DI)
	VZEROUPPER
	RET

// func gemv1x16AVX(a *float32, b *float32, kc int, c *[16]float32)
//
// GEMV on one packed panel: for l in [0,16), p in [0,kc), in increasing p:
//   c[l] = c[l] + a[p]*b[p*16+l]
// (multiply then add, no FMA). Accumulators Y8, Y9.
TEXT ·gemv1x16AVX(SB), NOSPLIT, $0-32
	MOVQ a+0(FP), BX
	MOVQ b+8(FP), SI
	MOVQ kc+16(FP), CX
	MOVQ c+24(FP), DI
	VMOVUPS 0(DI), Y8
	VMOVUPS 32(DI), Y9
	XORQ AX, AX
	TESTQ CX, CX
	JEQ gemv1done
gemv1loop:
	VBROADCASTSS (BX)(AX*4), Y0
	VMULPS (SI), Y0, Y1
	VMULPS 32(SI), Y0, Y2
	VADDPS Y1, Y8, Y8
	VADDPS Y2, Y9, Y9
	ADDQ $64, SI
	INCQ AX
	CMPQ AX, CX
	JNE gemv1loop
gemv1done:
	VMOVUPS Y8, 0(DI)
	VMOVUPS Y9, 32(DI)
	VZEROUPPER
	RET

// func mulAdd6x32AVX512(a *float32, lda int, b *float32, ldp int, kc int, c *[192]float32)
//
// The 6×16 micro-kernel on two packed panels at once, in 512-bit registers:
// for r in [0,6), h in [0,2), l in [0,16), p in [0,kc), in increasing p:
//   c[r*32+h*16+l] = c[r*32+h*16+l] + a[r*lda+p]*b[h*ldp+p*16+l]
// with a rounding multiply (VMULPS) then a rounding add (VADDPS), no FMA:
// lane for lane the same operations as mulAdd6x16AVX and the scalar Go
// loop, so the same bits. Accumulators Z4..Z15 (row r in Z(4+2r) for panel
// 0, Z(5+2r) for panel 1), panel rows in Z0/Z1, broadcast a in Z2, product Z3.
TEXT ·mulAdd6x32AVX512(SB), NOSPLIT, $0-48
	MOVQ a+0(FP), SI
	MOVQ lda+8(FP), DX
	SHLQ $2, DX
	MOVQ b+16(FP), DI
	MOVQ ldp+24(FP), R13
	SHLQ $2, R13
	ADDQ DI, R13
	MOVQ kc+32(FP), CX
	MOVQ c+40(FP), BX
	LEAQ (SI)(DX*1), R8
	LEAQ (R8)(DX*1), R9
	LEAQ (R9)(DX*1), R10
	LEAQ (R10)(DX*1), R11
	LEAQ (R11)(DX*1), R12
	VMOVUPS 0(BX), Z4
	VMOVUPS 64(BX), Z5
	VMOVUPS 128(BX), Z6
	VMOVUPS 192(BX), Z7
	VMOVUPS 256(BX), Z8
	VMOVUPS 320(BX), Z9
	VMOVUPS 384(BX), Z10
	VMOVUPS 448(BX), Z11
	VMOVUPS 512(BX), Z12
	VMOVUPS 576(BX), Z13
	VMOVUPS 640(BX), Z14
	VMOVUPS 704(BX), Z15
	XORQ AX, AX
	TESTQ CX, CX
	JEQ mul512done
mul512loop:
	VMOVUPS (DI), Z0
	VMOVUPS (R13), Z1
	VBROADCASTSS (SI)(AX*4), Z2
	VMULPS Z0, Z2, Z3
	VADDPS Z3, Z4, Z4
	VMULPS Z1, Z2, Z3
	VADDPS Z3, Z5, Z5
	VBROADCASTSS (R8)(AX*4), Z2
	VMULPS Z0, Z2, Z3
	VADDPS Z3, Z6, Z6
	VMULPS Z1, Z2, Z3
	VADDPS Z3, Z7, Z7
	VBROADCASTSS (R9)(AX*4), Z2
	VMULPS Z0, Z2, Z3
	VADDPS Z3, Z8, Z8
	VMULPS Z1, Z2, Z3
	VADDPS Z3, Z9, Z9
	VBROADCASTSS (R10)(AX*4), Z2
	VMULPS Z0, Z2, Z3
	VADDPS Z3, Z10, Z10
	VMULPS Z1, Z2, Z3
	VADDPS Z3, Z11, Z11
	VBROADCASTSS (R11)(AX*4), Z2
	VMULPS Z0, Z2, Z3
	VADDPS Z3, Z12, Z12
	VMULPS Z1, Z2, Z3
	VADDPS Z3, Z13, Z13
	VBROADCASTSS (R12)(AX*4), Z2
	VMULPS Z0, Z2, Z3
	VADDPS Z3, Z14, Z14
	VMULPS Z1, Z2, Z3
	VADDPS Z3, Z15, Z15
	ADDQ $64, DI
	ADDQ $64, R13
	INCQ AX
	CMPQ AX, CX
	JNE mul512loop
mul512done:
	VMOVUPS Z4, 0(BX)
	VMOVUPS Z5, 64(BX)
	VMOVUPS Z6, 128(BX)
	VMOVUPS Z7, 192(BX)
	VMOVUPS Z8, 256(BX)
	VMOVUPS Z9, 320(BX)
	VMOVUPS Z10, 384(BX)
	VMOVUPS Z11, 448(BX)
	VMOVUPS Z12, 512(BX)
	VMOVUPS Z13, 576(BX)
	VMOVUPS Z14, 640(BX)
	VMOVUPS Z15, 704(BX)
	VZEROUPPER
	RET
