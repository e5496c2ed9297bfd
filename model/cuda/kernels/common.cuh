// Shared definitions of the fusionrag CUDA kernels (package model/cuda).
//
// Every kernel exists in three storage types, suffixed _f32, _f16 and _bf16
// (extern "C" names, looked up by the Go side). Activations between kernels
// and every accumulation are fp32; T is only how weights and KV are stored.
// Scalar parameters are int (32-bit) or float: the Go launcher passes each
// parameter in an 8-byte slot, little-endian, which the driver reads with
// the parameter's own size.
#pragma once
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <stdint.h>

typedef __nv_bfloat16 bf16;

__device__ __forceinline__ float ld(const float* p, long long i) { return p[i]; }
__device__ __forceinline__ float ld(const __half* p, long long i) { return __half2float(p[i]); }
__device__ __forceinline__ float ld(const bf16* p, long long i) { return __bfloat162float(p[i]); }

// Stores round to nearest even, like package cuda's F32ToBF16/F32ToF16.
__device__ __forceinline__ void st(float* p, long long i, float v) { p[i] = v; }
__device__ __forceinline__ void st(__half* p, long long i, float v) { p[i] = __float2half_rn(v); }
__device__ __forceinline__ void st(bf16* p, long long i, float v) { p[i] = __float2bfloat16_rn(v); }

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Tile sizes; model/cuda/ops.go holds the same constants (attnKTile,
// attnQTile, attnWarps, maxHeadDim) and hostOps mirrors the tiling.
#define ATTN_KT 32
#define ATTN_QT 16
#define ATTN_WARPS 4
#define ATTN_QPW (ATTN_QT / ATTN_WARPS)
#define MAX_HEAD_DIM 128
#define MAX_DPL (MAX_HEAD_DIM / 32)

// FOR_TYPES(X) expands X(T, suffix) for the three storage types; each .cu
// file defines a DEF_... macro that declares one extern "C" entry point.
#define FOR_TYPES(X) X(float, f32) X(__half, f16) X(bf16, bf16)
