// Tensor-core variant of attention.cu's kernel for bf16/f16 storage and head
// dims 64 and 128 (FlashAttention-2 layout): one warp owns 16 query rows,
// S = Q.K^T and O += P.V run on mma.sync.m16n8k16 with fp32 accumulation,
// the online softmax runs on the accumulator registers (whose layout PTX
// specifies), and P is fed back to the second product from registers.
// Same contract as attention_<T> (see attention.cu and ops.go), except that
// Q and P are rounded to the storage type before their products, as
// FlashAttention does: outputs and lse move by about one storage ulp.
//
// The host checks this kernel against the SIMT one at start-up and falls
// back to the SIMT kernel when they disagree (ops_cuda.go).
#include "common.cuh"

#define MMA_QT 64  // queries per block: 4 warps x 16 rows
#define MMA_KT 64  // keys per tile
#define MMA_WARPS 4

template <typename T>
struct Mma;

template <>
struct Mma<bf16> {
    static __device__ __forceinline__ void mma(float* d, const uint32_t* a, const uint32_t* b) {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
            "{%0,%1,%2,%3};\n"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
    }
    static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
        __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
        return *reinterpret_cast<uint32_t*>(&v);
    }
};

template <>
struct Mma<__half> {
    static __device__ __forceinline__ void mma(float* d, const uint32_t* a, const uint32_t* b) {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
            "{%0,%1,%2,%3};\n"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
    }
    static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
        __half2 v = __floats2half2_rn(lo, hi);
        return *reinterpret_cast<uint32_t*>(&v);
    }
};

// Fragment layouts of mma.m16n8k16 (PTX ISA, "Matrix Fragments for
// mma.m16n8k16"), with g = lane/4 and c = lane%4:
//   A (16x16, row): reg0 = A[g][2c..2c+1], reg1 = A[g+8][2c..], reg2 =
//                   A[g][2c+8..], reg3 = A[g+8][2c+8..]
//   B (16x8, col):  reg0 = B[2c..2c+1][g], reg1 = B[2c+8..2c+9][g]
//   C (16x8 f32):   c0,c1 = C[g][2c..2c+1], c2,c3 = C[g+8][2c..2c+1]
// The lower-indexed element sits in the lower 16 bits of a register.
template <typename T, int HD>
__device__ void attention_mma_impl(T* out, const float* q, const T* k, const T* vc, const T* vb, const int* kpos,
                                   const int* qpos, float* lse, int N, int C, int heads, int kv_heads, float scale) {
    constexpr int STR = HD + 8;  // smem row stride (elements): 16-byte pad against bank conflicts
    extern __shared__ __align__(16) unsigned char smem_raw[];
    T* Ks = reinterpret_cast<T*>(smem_raw);  // [MMA_KT][STR]
    T* Vs = Ks + MMA_KT * STR;               // [MMA_KT][STR]
    int* kp = reinterpret_cast<int*>(Vs + MMA_KT * STR);  // [MMA_KT]
    const uint16_t* V16 = reinterpret_cast<const uint16_t*>(Vs);

    const int head = blockIdx.y, g = head / (heads / kv_heads);
    const int q0 = blockIdx.x * MMA_QT, q1 = min(q0 + MMA_QT, N);
    const int keys = C + q1;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int gid = lane >> 2, tig = lane & 3;
    const long long kvd = (long long)kv_heads * HD;
    const int r0 = q0 + warp * 16 + gid, r1 = r0 + 8;  // this thread's two rows
    const int qp0 = r0 < N ? qpos[r0] : -1, qp1 = r1 < N ? qpos[r1] : -1;

    // Q as A fragments, rounded to T.
    uint32_t qa[HD / 16][4];
#pragma unroll
    for (int ks = 0; ks < HD / 16; ks++) {
        int c = ks * 16 + tig * 2;
        float2 x00 = make_float2(0.f, 0.f), x01 = x00, x10 = x00, x11 = x00;
        if (r0 < N) {
            const float* qr = q + ((long long)r0 * heads + head) * HD;
            x00 = *reinterpret_cast<const float2*>(qr + c);
            x01 = *reinterpret_cast<const float2*>(qr + c + 8);
        }
        if (r1 < N) {
            const float* qr = q + ((long long)r1 * heads + head) * HD;
            x10 = *reinterpret_cast<const float2*>(qr + c);
            x11 = *reinterpret_cast<const float2*>(qr + c + 8);
        }
        qa[ks][0] = Mma<T>::pack(x00.x, x00.y);
        qa[ks][1] = Mma<T>::pack(x10.x, x10.y);
        qa[ks][2] = Mma<T>::pack(x01.x, x01.y);
        qa[ks][3] = Mma<T>::pack(x11.x, x11.y);
    }

    float o[HD / 8][4];
#pragma unroll
    for (int dt = 0; dt < HD / 8; dt++) o[dt][0] = o[dt][1] = o[dt][2] = o[dt][3] = 0.f;
    float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.f, l1 = 0.f;

    for (int t0 = 0; t0 < keys; t0 += MMA_KT) {
        __syncthreads();  // the previous tile is consumed
        for (int idx = tid; idx < MMA_KT * HD / 8; idx += blockDim.x) {
            int j = idx / (HD / 8), c8 = (idx % (HD / 8)) * 8, key = t0 + j;
            uint4 kv4 = make_uint4(0, 0, 0, 0), vv4 = kv4;
            if (key < keys) {
                kv4 = *reinterpret_cast<const uint4*>(k + key * kvd + (long long)g * HD + c8);
                const T* vr = key < C ? vc + key * kvd : vb + (long long)(key - C) * kvd;
                vv4 = *reinterpret_cast<const uint4*>(vr + (long long)g * HD + c8);
            }
            *reinterpret_cast<uint4*>(Ks + j * STR + c8) = kv4;
            *reinterpret_cast<uint4*>(Vs + j * STR + c8) = vv4;
        }
        if (tid < MMA_KT) kp[tid] = t0 + tid < keys ? kpos[t0 + tid] : INT_MAX;
        __syncthreads();

        // S = Q K^T: B[d][key] = K[key][d], so B's column g is K row g.
        float s[MMA_KT / 8][4];
#pragma unroll
        for (int nt = 0; nt < MMA_KT / 8; nt++) {
            s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
#pragma unroll
            for (int ks = 0; ks < HD / 16; ks++) {
                const T* kr = Ks + (nt * 8 + gid) * STR + ks * 16 + tig * 2;
                uint32_t b[2] = {*reinterpret_cast<const uint32_t*>(kr), *reinterpret_cast<const uint32_t*>(kr + 8)};
                Mma<T>::mma(s[nt], qa[ks], b);
            }
        }

        // Mask, scale, online softmax on rows r0 (s[][0..1]) and r1 (s[][2..3]).
        float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
        for (int nt = 0; nt < MMA_KT / 8; nt++) {
#pragma unroll
            for (int e = 0; e < 2; e++) {
                int kj = kp[nt * 8 + tig * 2 + e];
                s[nt][e] = kj <= qp0 ? s[nt][e] * scale : -INFINITY;
                s[nt][2 + e] = kj <= qp1 ? s[nt][2 + e] * scale : -INFINITY;
                mx0 = fmaxf(mx0, s[nt][e]);
                mx1 = fmaxf(mx1, s[nt][2 + e]);
            }
        }
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
        const float mn0 = fmaxf(m0, mx0), mn1 = fmaxf(m1, mx1);
        // A row with nothing visible yet keeps m = -inf, corr 1, p 0.
        const float c0 = mn0 == -INFINITY ? 1.f : expf(m0 - mn0);
        const float c1 = mn1 == -INFINITY ? 1.f : expf(m1 - mn1);
        float ps0 = 0.f, ps1 = 0.f;
#pragma unroll
        for (int nt = 0; nt < MMA_KT / 8; nt++) {
#pragma unroll
            for (int e = 0; e < 2; e++) {
                s[nt][e] = s[nt][e] == -INFINITY ? 0.f : expf(s[nt][e] - mn0);
                s[nt][2 + e] = s[nt][2 + e] == -INFINITY ? 0.f : expf(s[nt][2 + e] - mn1);
                ps0 += s[nt][e];
                ps1 += s[nt][2 + e];
            }
        }
        l0 = l0 * c0 + ps0;  // per-thread partial sums; reduced over the row's 4 threads at the end
        l1 = l1 * c1 + ps1;
        m0 = mn0;
        m1 = mn1;
#pragma unroll
        for (int dt = 0; dt < HD / 8; dt++) {
            o[dt][0] *= c0;
            o[dt][1] *= c0;
            o[dt][2] *= c1;
            o[dt][3] *= c1;
        }

        // O += P V: P's A fragment for keys [16kk, 16kk+16) is the C
        // fragments of S tiles 2kk and 2kk+1; B[key][d] = V[key][d].
#pragma unroll
        for (int kk = 0; kk < MMA_KT / 16; kk++) {
            uint32_t pa[4] = {Mma<T>::pack(s[2 * kk][0], s[2 * kk][1]), Mma<T>::pack(s[2 * kk][2], s[2 * kk][3]),
                              Mma<T>::pack(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                              Mma<T>::pack(s[2 * kk + 1][2], s[2 * kk + 1][3])};
            const int kr = kk * 16 + tig * 2;
#pragma unroll
            for (int dt = 0; dt < HD / 8; dt++) {
                const int n = dt * 8 + gid;
                uint32_t b[2] = {(uint32_t)V16[kr * STR + n] | ((uint32_t)V16[(kr + 1) * STR + n] << 16),
                                 (uint32_t)V16[(kr + 8) * STR + n] | ((uint32_t)V16[(kr + 9) * STR + n] << 16)};
                Mma<T>::mma(o[dt], pa, b);
            }
        }
    }

    l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
    l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
    const float i0 = 1.0f / l0, i1 = 1.0f / l1;
#pragma unroll
    for (int dt = 0; dt < HD / 8; dt++) {
        int col = dt * 8 + tig * 2;
        if (r0 < N) {
            long long b = ((long long)r0 * heads + head) * HD + col;
            st(out, b, o[dt][0] * i0);
            st(out, b + 1, o[dt][1] * i0);
        }
        if (r1 < N) {
            long long b = ((long long)r1 * heads + head) * HD + col;
            st(out, b, o[dt][2] * i1);
            st(out, b + 1, o[dt][3] * i1);
        }
    }
    if (lse != nullptr && tig == 0) {
        if (r0 < N) lse[(long long)head * N + r0] = m0 + logf(l0);
        if (r1 < N) lse[(long long)head * N + r1] = m1 + logf(l1);
    }
}

#define DEF_MMA(T, S, HD)                                                                                          \
    extern "C" __global__ void __launch_bounds__(32 * MMA_WARPS)                                                 \
        attention_mma_##S##_##HD(T* out, const float* q, const T* k, const T* vc, const T* vb, const int* kpos,  \
                                 const int* qpos, float* lse, int N, int C, int heads, int kv_heads, float scale) { \
        attention_mma_impl<T, HD>(out, q, k, vc, vb, kpos, qpos, lse, N, C, heads, kv_heads, scale);             \
    }
DEF_MMA(bf16, bf16, 64)
DEF_MMA(bf16, bf16, 128)
DEF_MMA(__half, f16, 64)
DEF_MMA(__half, f16, 128)
