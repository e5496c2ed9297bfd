// Element-wise and row kernels of the Llama layer: embedding gather,
// RMSNorm, bias, fp32 -> storage conversion, RoPE at arbitrary positions,
// SiLU-mul, deterministic random fill, column sums. Shapes are row-major;
// see model/cuda/ops.go for the contract of each (hostOps is the reference).
#include "common.cuh"

// embed: out f32 [n, dim] = table T [vocab, dim] row ids[i]. Grid (n), any block.
template <typename T>
__device__ void embed_impl(float* out, const T* table, const int* ids, int n, int dim) {
    int i = blockIdx.x;
    if (i >= n) return;
    long long row = (long long)ids[i] * dim;
    for (int d = threadIdx.x; d < dim; d += blockDim.x) out[(long long)i * dim + d] = ld(table, row + d);
}
#define DEF_EMBED(T, S) \
    extern "C" __global__ void embed_##S(float* out, const T* table, const int* ids, int n, int dim) { embed_impl<T>(out, table, ids, n, dim); }
FOR_TYPES(DEF_EMBED)

// rmsnorm: out T [n, dim] = w * (x / sqrt(mean(x^2) + eps)). Grid (n), block
// 256 (a multiple of 32, at most 1024).
template <typename T>
__device__ void rmsnorm_impl(T* out, const float* x, const float* w, int n, int dim, float eps) {
    __shared__ float red[32];
    int i = blockIdx.x;
    if (i >= n) return;
    const float* row = x + (long long)i * dim;
    float ss = 0.f;
    for (int d = threadIdx.x; d < dim; d += blockDim.x) ss += row[d] * row[d];
    ss = warp_sum(ss);
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) red[warp] = ss;
    __syncthreads();
    if (warp == 0) {
        float v = lane < (int)(blockDim.x >> 5) ? red[lane] : 0.f;
        v = warp_sum(v);
        if (lane == 0) red[0] = v;
    }
    __syncthreads();
    float s = 1.0f / sqrtf(red[0] / (float)dim + eps);
    for (int d = threadIdx.x; d < dim; d += blockDim.x) st(out, (long long)i * dim + d, w[d] * (s * row[d]));
}
#define DEF_RMSNORM(T, S)                                                                                  \
    extern "C" __global__ void rmsnorm_##S(T* out, const float* x, const float* w, int n, int dim, float eps) { \
        rmsnorm_impl<T>(out, x, w, n, dim, eps);                                                           \
    }
FOR_TYPES(DEF_RMSNORM)

// add_bias: x f32 [n, width] += b [width]. Grid-stride.
extern "C" __global__ void add_bias(float* x, const float* b, int n, int width) {
    long long total = (long long)n * width;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total; i += (long long)gridDim.x * blockDim.x)
        x[i] += b[i % width];
}

// to_half: out T [rows, width] = in f32 rows of stride in_stride. Grid-stride.
template <typename T>
__device__ void to_half_impl(T* out, const float* in, int rows, int width, int in_stride) {
    long long total = (long long)rows * width;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total; i += (long long)gridDim.x * blockDim.x) {
        long long r = i / width, c = i % width;
        st(out, i, in[r * in_stride + c]);
    }
}
#define DEF_TO_HALF(T, S)                                                                                    \
    extern "C" __global__ void to_half_##S(T* out, const float* in, int rows, int width, int in_stride) { \
        to_half_impl<T>(out, in, rows, width, in_stride);                                                  \
    }
FOR_TYPES(DEF_TO_HALF)

// rope_table: cs f32 [rows, half, 2] = cos, sin of pos[r] * freq[i], the
// angle and its cos/sin in float64 rounded to float32 (package model's
// rope). One thread per (row, i).
extern "C" __global__ void rope_table(float* cs, const int* pos, const double* freq, int rows, int half) {
    long long total = (long long)rows * half;
    for (long long t = blockIdx.x * (long long)blockDim.x + threadIdx.x; t < total; t += (long long)gridDim.x * blockDim.x) {
        int i = (int)(t % half);
        long long r = t / half;
        double s, c;
        sincos((double)pos[r] * freq[i], &s, &c);
        cs[2 * t] = (float)c;
        cs[2 * t + 1] = (float)s;
    }
}

// rope: out[r] = RoPE(in[r]) with the cos/sin of table row r, for rows of
// heads*head_dim values; the rotation is fp32. One thread per (row, head,
// pair). interleaved: pairs (2i, 2i+1) (llama2.c); else (i, i + head_dim/2)
// (HF rotate_half).
template <typename TI, typename TO>
__device__ void rope_impl(TO* out, const TI* in, const float* cs, int rows, int heads, int head_dim, int in_stride,
                          int out_stride, int interleaved) {
    int half = head_dim / 2;
    long long total = (long long)rows * heads * half;
    for (long long t = blockIdx.x * (long long)blockDim.x + threadIdx.x; t < total; t += (long long)gridDim.x * blockDim.x) {
        int i = (int)(t % half);
        long long rh = t / half;
        int h = (int)(rh % heads);
        long long r = rh / heads;
        float cf = cs[(r * half + i) * 2], sf = cs[(r * half + i) * 2 + 1];
        int i0 = interleaved ? 2 * i : i;
        int i1 = interleaved ? 2 * i + 1 : i + half;
        long long ib = r * in_stride + (long long)h * head_dim, ob = r * out_stride + (long long)h * head_dim;
        float x0 = ld(in, ib + i0), x1 = ld(in, ib + i1);
        st(out, ob + i0, __fsub_rn(__fmul_rn(x0, cf), __fmul_rn(x1, sf)));
        st(out, ob + i1, __fadd_rn(__fmul_rn(x0, sf), __fmul_rn(x1, cf)));
    }
}
extern "C" __global__ void rope_f32in(float* out, const float* in, const float* cs, int rows, int heads, int head_dim,
                                      int in_stride, int out_stride, int interleaved) {
    rope_impl<float, float>(out, in, cs, rows, heads, head_dim, in_stride, out_stride, interleaved);
}
#define DEF_ROPE(T, S)                                                                                          \
    extern "C" __global__ void rope_##S(T* out, const T* in, const float* cs, int rows, int heads, int head_dim, \
                                        int in_stride, int out_stride, int interleaved) {                       \
        rope_impl<T, T>(out, in, cs, rows, heads, head_dim, in_stride, out_stride, interleaved);                \
    }
FOR_TYPES(DEF_ROPE)

// silu_mul: out T [n, h] = silu(in[:, :h]) * in[:, h:], in f32 [n, 2h].
template <typename T>
__device__ void silu_mul_impl(T* out, const float* in, int n, int h) {
    long long total = (long long)n * h;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total; i += (long long)gridDim.x * blockDim.x) {
        long long r = i / h, c = i % h;
        float g = in[r * 2 * h + c], u = in[r * 2 * h + h + c];
        st(out, i, g / (1.0f + expf(-g)) * u);
    }
}
#define DEF_SILU(T, S) \
    extern "C" __global__ void silu_mul_##S(T* out, const float* in, int n, int h) { silu_mul_impl<T>(out, in, n, h); }
FOR_TYPES(DEF_SILU)

// fill_random: out[i] = scale * u(seed, i), u in [-1, 1) from a splitmix64
// hash; package cuda's randomValue is the same function.
template <typename T>
__device__ void fill_random_impl(T* out, unsigned long long n, unsigned long long seed, float scale) {
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
         i += (unsigned long long)gridDim.x * blockDim.x) {
        unsigned long long z = seed + (i + 1ull) * 0x9e3779b97f4a7c15ull;
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        z ^= z >> 31;
        float u = __fsub_rn(__fmul_rn((float)(z >> 40), 1.0f / 8388608.0f), 1.0f);
        st(out, (long long)i, __fmul_rn(u, scale));
    }
}
#define DEF_FILL(T, S)                                                                                        \
    extern "C" __global__ void fill_random_##S(T* out, unsigned long long n, unsigned long long seed, float scale) { \
        fill_random_impl<T>(out, n, seed, scale);                                                             \
    }
FOR_TYPES(DEF_FILL)

// sum_rows: out f32 [width] = sum over rows of in f32 [rows, width], in row
// order (deterministic). One thread per column.
extern "C" __global__ void sum_rows(float* out, const float* in, int rows, int width) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= width) return;
    float s = 0.f;
    for (int r = 0; r < rows; r++) s += in[(long long)r * width + j];
    out[j] = s;
}
