//go:build amd64 && !purego

#include "textflag.h"

// The softmax tile kernels of attention.go in AVX2, 8 lanes: each lane does
// exactly the float32 operations of the Go references (maxScaledGo,
// maxScaledMaskedGo, expScaledGo/expf) in the same order, with no fused
// multiply-add, so the results are the same bits. n is a number of groups
// of 8 floats (> 0).

// Constants, each replicated over 8 lanes (32 bytes): the float32 values
// of expf's constants as Go rounds them (generated from the Go constants).
// log2e = 1.442695 at expConsts<>+0
DATA expConsts<>+0(SB)/4, $0x3fb8aa3b
DATA expConsts<>+4(SB)/4, $0x3fb8aa3b
DATA expConsts<>+8(SB)/4, $0x3fb8aa3b
DATA expConsts<>+12(SB)/4, $0x3fb8aa3b
DATA expConsts<>+16(SB)/4, $0x3fb8aa3b
DATA expConsts<>+20(SB)/4, $0x3fb8aa3b
DATA expConsts<>+24(SB)/4, $0x3fb8aa3b
DATA expConsts<>+28(SB)/4, $0x3fb8aa3b
// ln2hi = 0.6933594 at expConsts<>+32
DATA expConsts<>+32(SB)/4, $0x3f318000
DATA expConsts<>+36(SB)/4, $0x3f318000
DATA expConsts<>+40(SB)/4, $0x3f318000
DATA expConsts<>+44(SB)/4, $0x3f318000
DATA expConsts<>+48(SB)/4, $0x3f318000
DATA expConsts<>+52(SB)/4, $0x3f318000
DATA expConsts<>+56(SB)/4, $0x3f318000
DATA expConsts<>+60(SB)/4, $0x3f318000
// ln2lo = -0.00021219444 at expConsts<>+64
DATA expConsts<>+64(SB)/4, $0xb95e8083
DATA expConsts<>+68(SB)/4, $0xb95e8083
DATA expConsts<>+72(SB)/4, $0xb95e8083
DATA expConsts<>+76(SB)/4, $0xb95e8083
DATA expConsts<>+80(SB)/4, $0xb95e8083
DATA expConsts<>+84(SB)/4, $0xb95e8083
DATA expConsts<>+88(SB)/4, $0xb95e8083
DATA expConsts<>+92(SB)/4, $0xb95e8083
// p0 = 0.00019875691 at expConsts<>+96
DATA expConsts<>+96(SB)/4, $0x39506967
DATA expConsts<>+100(SB)/4, $0x39506967
DATA expConsts<>+104(SB)/4, $0x39506967
DATA expConsts<>+108(SB)/4, $0x39506967
DATA expConsts<>+112(SB)/4, $0x39506967
DATA expConsts<>+116(SB)/4, $0x39506967
DATA expConsts<>+120(SB)/4, $0x39506967
DATA expConsts<>+124(SB)/4, $0x39506967
// p1 = 0.0013981999 at expConsts<>+128
DATA expConsts<>+128(SB)/4, $0x3ab743ce
DATA expConsts<>+132(SB)/4, $0x3ab743ce
DATA expConsts<>+136(SB)/4, $0x3ab743ce
DATA expConsts<>+140(SB)/4, $0x3ab743ce
DATA expConsts<>+144(SB)/4, $0x3ab743ce
DATA expConsts<>+148(SB)/4, $0x3ab743ce
DATA expConsts<>+152(SB)/4, $0x3ab743ce
DATA expConsts<>+156(SB)/4, $0x3ab743ce
// p2 = 0.008333452 at expConsts<>+160
DATA expConsts<>+160(SB)/4, $0x3c088908
DATA expConsts<>+164(SB)/4, $0x3c088908
DATA expConsts<>+168(SB)/4, $0x3c088908
DATA expConsts<>+172(SB)/4, $0x3c088908
DATA expConsts<>+176(SB)/4, $0x3c088908
DATA expConsts<>+180(SB)/4, $0x3c088908
DATA expConsts<>+184(SB)/4, $0x3c088908
DATA expConsts<>+188(SB)/4, $0x3c088908
// p3 = 0.041665796 at expConsts<>+192
DATA expConsts<>+192(SB)/4, $0x3d2aa9c1
DATA expConsts<>+196(SB)/4, $0x3d2aa9c1
DATA expConsts<>+200(SB)/4, $0x3d2aa9c1
DATA expConsts<>+204(SB)/4, $0x3d2aa9c1
DATA expConsts<>+208(SB)/4, $0x3d2aa9c1
DATA expConsts<>+212(SB)/4, $0x3d2aa9c1
DATA expConsts<>+216(SB)/4, $0x3d2aa9c1
DATA expConsts<>+220(SB)/4, $0x3d2aa9c1
// p4 = 0.16666666 at expConsts<>+224
DATA expConsts<>+224(SB)/4, $0x3e2aaaaa
DATA expConsts<>+228(SB)/4, $0x3e2aaaaa
DATA expConsts<>+232(SB)/4, $0x3e2aaaaa
DATA expConsts<>+236(SB)/4, $0x3e2aaaaa
DATA expConsts<>+240(SB)/4, $0x3e2aaaaa
DATA expConsts<>+244(SB)/4, $0x3e2aaaaa
DATA expConsts<>+248(SB)/4, $0x3e2aaaaa
DATA expConsts<>+252(SB)/4, $0x3e2aaaaa
// p5 = 0.5 at expConsts<>+256
DATA expConsts<>+256(SB)/4, $0x3f000000
DATA expConsts<>+260(SB)/4, $0x3f000000
DATA expConsts<>+264(SB)/4, $0x3f000000
DATA expConsts<>+268(SB)/4, $0x3f000000
DATA expConsts<>+272(SB)/4, $0x3f000000
DATA expConsts<>+276(SB)/4, $0x3f000000
DATA expConsts<>+280(SB)/4, $0x3f000000
DATA expConsts<>+284(SB)/4, $0x3f000000
// one = 1 at expConsts<>+288
DATA expConsts<>+288(SB)/4, $0x3f800000
DATA expConsts<>+292(SB)/4, $0x3f800000
DATA expConsts<>+296(SB)/4, $0x3f800000
DATA expConsts<>+300(SB)/4, $0x3f800000
DATA expConsts<>+304(SB)/4, $0x3f800000
DATA expConsts<>+308(SB)/4, $0x3f800000
DATA expConsts<>+312(SB)/4, $0x3f800000
DATA expConsts<>+316(SB)/4, $0x3f800000
// min = -87.33654 at expConsts<>+320
DATA expConsts<>+320(SB)/4, $0xc2aeac4f
DATA expConsts<>+324(SB)/4, $0xc2aeac4f
DATA expConsts<>+328(SB)/4, $0xc2aeac4f
DATA expConsts<>+332(SB)/4, $0xc2aeac4f
DATA expConsts<>+336(SB)/4, $0xc2aeac4f
DATA expConsts<>+340(SB)/4, $0xc2aeac4f
DATA expConsts<>+344(SB)/4, $0xc2aeac4f
DATA expConsts<>+348(SB)/4, $0xc2aeac4f
// neginf = -Inf at expConsts<>+352
DATA expConsts<>+352(SB)/4, $0xff800000
DATA expConsts<>+356(SB)/4, $0xff800000
DATA expConsts<>+360(SB)/4, $0xff800000
DATA expConsts<>+364(SB)/4, $0xff800000
DATA expConsts<>+368(SB)/4, $0xff800000
DATA expConsts<>+372(SB)/4, $0xff800000
DATA expConsts<>+376(SB)/4, $0xff800000
DATA expConsts<>+380(SB)/4, $0xff800000
// int32 127 at +384
DATA expConsts<>+384(SB)/4, $0x0000007f
DATA expConsts<>+388(SB)/4, $0x0000007f
DATA expConsts<>+392(SB)/4, $0x0000007f
DATA expConsts<>+396(SB)/4, $0x0000007f
DATA expConsts<>+400(SB)/4, $0x0000007f
DATA expConsts<>+404(SB)/4, $0x0000007f
DATA expConsts<>+408(SB)/4, $0x0000007f
DATA expConsts<>+412(SB)/4, $0x0000007f
GLOBL expConsts<>(SB), RODATA|NOPTR, $416

// func maxScaledAVX2(row *float32, n8 int, scale float32) float32
TEXT ·maxScaledAVX2(SB), NOSPLIT, $0-28
	MOVQ         row+0(FP), SI
	MOVQ         n8+8(FP), CX
	VBROADCASTSS scale+16(FP), Y15
	VMOVUPS      expConsts<>+352(SB), Y7
maxloop:
	VMULPS  (SI), Y15, Y0
	VMOVUPS Y0, (SI)
	VMAXPS  Y0, Y7, Y7
	ADDQ    $32, SI
	DECQ    CX
	JNZ     maxloop
	VEXTRACTF128 $1, Y7, X0
	VMAXPS       X0, X7, X7
	VPERMILPS    $0x4e, X7, X0
	VMAXPS       X0, X7, X7
	VPERMILPS    $0xb1, X7, X0
	VMAXPS       X0, X7, X7
	VZEROUPPER
	MOVSS        X7, ret+24(FP)
	RET

// func maxScaledMaskedAVX2(row *float32, kpos *int32, n8 int, p int32, scale float32) float32
TEXT ·maxScaledMaskedAVX2(SB), NOSPLIT, $0-36
	MOVQ          row+0(FP), SI
	MOVQ          kpos+8(FP), DI
	MOVQ          n8+16(FP), CX
	MOVL          p+24(FP), AX
	MOVQ          AX, X14
	VPBROADCASTD  X14, Y14
	VBROADCASTSS  scale+28(FP), Y15
	VMOVUPS       expConsts<>+352(SB), Y13
	VMOVUPS       Y13, Y7
mmloop:
	VMULPS    (SI), Y15, Y0
	VMOVDQU   (DI), Y1
	VPCMPGTD  Y14, Y1, Y1
	VBLENDVPS Y1, Y13, Y0, Y0
	VMOVUPS   Y0, (SI)
	VMAXPS    Y0, Y7, Y7
	ADDQ      $32, SI
	ADDQ      $32, DI
	DECQ      CX
	JNZ       mmloop
	VEXTRACTF128 $1, Y7, X0
	VMAXPS       X0, X7, X7
	VPERMILPS    $0x4e, X7, X0
	VMAXPS       X0, X7, X7
	VPERMILPS    $0xb1, X7, X0
	VMAXPS       X0, X7, X7
	VZEROUPPER
	MOVSS        X7, ret+32(FP)
	RET

// func expScaledAVX2(row *float32, n8 int, m float32) float32
TEXT ·expScaledAVX2(SB), NOSPLIT, $0-28
	MOVQ         row+0(FP), SI
	MOVQ         n8+8(FP), CX
	VBROADCASTSS m+16(FP), Y15
	VMOVUPS      expConsts<>+0(SB), Y14   // log2e
	VMOVUPS      expConsts<>+32(SB), Y13  // ln2hi
	VMOVUPS      expConsts<>+64(SB), Y12  // ln2lo
	VMOVUPS      expConsts<>+288(SB), Y11 // 1
	VMOVUPS      expConsts<>+320(SB), Y10 // expMin
	VMOVDQU      expConsts<>+384(SB), Y9  // int32 127
	VMOVUPS      expConsts<>+96(SB), Y8   // P0
	VXORPS       Y7, Y7, Y7               // lane sums
exploop:
	VMOVUPS   (SI), Y0
	VSUBPS    Y15, Y0, Y0         // x = row - m
	VCMPPS    $0x1d, Y10, Y0, Y6  // x >= expMin (false for -inf, NaN)
	VMULPS    Y14, Y0, Y1         // t = x·log2e
	VROUNDPS  $0, Y1, Y1          // nf = round to nearest even
	VMULPS    Y13, Y1, Y2
	VSUBPS    Y2, Y0, Y2          // r = x - nf·ln2hi
	VMULPS    Y12, Y1, Y3
	VSUBPS    Y3, Y2, Y2          // r -= nf·ln2lo
	VMULPS    Y2, Y8, Y3          // y = P0·r
	VADDPS    expConsts<>+128(SB), Y3, Y3
	VMULPS    Y2, Y3, Y3
	VADDPS    expConsts<>+160(SB), Y3, Y3
	VMULPS    Y2, Y3, Y3
	VADDPS    expConsts<>+192(SB), Y3, Y3
	VMULPS    Y2, Y3, Y3
	VADDPS    expConsts<>+224(SB), Y3, Y3
	VMULPS    Y2, Y3, Y3
	VADDPS    expConsts<>+256(SB), Y3, Y3
	VMULPS    Y2, Y2, Y4          // r²
	VMULPS    Y4, Y3, Y3
	VADDPS    Y2, Y3, Y3
	VADDPS    Y11, Y3, Y3         // y = y·r² + r + 1
	VCVTPS2DQ Y1, Y5
	VPADDD    Y9, Y5, Y5
	VPSLLD    $23, Y5, Y5         // 2^n
	VMULPS    Y5, Y3, Y3
	VANDPS    Y6, Y3, Y3          // 0 below the cut
	VMOVUPS   Y3, (SI)
	VADDPS    Y3, Y7, Y7
	ADDQ      $32, SI
	DECQ      CX
	JNZ       exploop
	VEXTRACTF128 $1, Y7, X0
	VADDPS       X0, X7, X7       // [l0+l4, l1+l5, l2+l6, l3+l7]
	VPERMILPS    $0x4e, X7, X0
	VADDPS       X0, X7, X7       // [(l0+l4)+(l2+l6), (l1+l5)+(l3+l7), ...]
	VPERMILPS    $0xb1, X7, X0
	VADDPS       X0, X7, X7
	VZEROUPPER
	MOVSS        X7, ret+24(FP)
	RET
