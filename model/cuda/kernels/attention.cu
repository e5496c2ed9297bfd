// Attention of a batch of queries over [cache keys, batch keys], causal by
// position, grouped-query, flash style: scores are never materialised; each
// block keeps a running max and sum (online softmax) per query while it
// scans key tiles. Key j is visible to query i when kpos[j] <= qpos[i]
// (the host gives shadowed cache entries kpos = INT_MAX). Batch positions
// strictly increase, so a block of queries [q0, q1) scans keys [0, C + q1)
// only: a full prefill does half the work of the square.
//
// The attention weights FusionRAG reads are recomputed on demand by
// attn_weights from the log-sum-exp this kernel leaves in lse, so a pass that
// does not ask for them pays nothing, and one that asks for per-key sums
// never stores the [heads, queries, keys] matrix.
#include "common.cuh"

// attention: grid (ceil(N / ATTN_QT), heads), block 32 * ATTN_WARPS, dynamic
// shared memory attn_smem(head_dim) bytes (see ops_cuda.go). Warp w owns
// queries q0 + w*ATTN_QPW + [0, ATTN_QPW); in the score phase lane j owns key
// t0 + j of the tile, in the output phase lane owns dims lane + 32*t.
//
// out T [N, heads*head_dim]; q f32 [N, heads, head_dim] (rotated); k T
// [C+N, kv_heads, head_dim] (rotated); vc T [C, kv_heads, head_dim]; vb T
// [N, kv_heads, head_dim]; kpos int [C+N]; qpos int [N]; lse f32 [heads, N]
// or null.
template <typename T>
__device__ void attention_impl(T* out, const float* q, const T* k, const T* vc, const T* vb, const int* kpos,
                               const int* qpos, float* lse, int N, int C, int heads, int kv_heads, int head_dim,
                               float scale) {
    extern __shared__ float smem[];
    const int hd = head_dim, kstride = hd + 1;  // +1: lane j reads row j without bank conflicts
    float* Ks = smem;                            // [ATTN_KT][hd+1]
    float* Vs = Ks + ATTN_KT * kstride;          // [ATTN_KT][hd]
    float* Qs = Vs + ATTN_KT * hd;               // [ATTN_QT][hd]
    int* kp = (int*)(Qs + ATTN_QT * hd);         // [ATTN_KT]

    const int head = blockIdx.y, g = head / (heads / kv_heads);
    const int q0 = blockIdx.x * ATTN_QT, q1 = min(q0 + ATTN_QT, N);
    const int keys = C + q1;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const long long kvd = (long long)kv_heads * hd;

    for (int idx = tid; idx < ATTN_QT * hd; idx += blockDim.x) {
        int i = idx / hd, d = idx % hd;
        Qs[idx] = q0 + i < N ? q[((long long)(q0 + i) * heads + head) * hd + d] : 0.f;
    }

    float m[ATTN_QPW], l[ATTN_QPW], acc[ATTN_QPW][MAX_DPL];
    int qp[ATTN_QPW];
#pragma unroll
    for (int r = 0; r < ATTN_QPW; r++) {
        int qi = q0 + warp * ATTN_QPW + r;
        m[r] = -INFINITY;
        l[r] = 0.f;
        qp[r] = qi < N ? qpos[qi] : -1;  // -1: no key is visible to a padding row
#pragma unroll
        for (int t = 0; t < MAX_DPL; t++) acc[r][t] = 0.f;
    }

    for (int t0 = 0; t0 < keys; t0 += ATTN_KT) {
        __syncthreads();  // previous tile fully consumed (and Qs written)
        for (int idx = tid; idx < ATTN_KT * hd; idx += blockDim.x) {
            int j = idx / hd, d = idx % hd, key = t0 + j;
            float kv = 0.f, vv = 0.f;
            if (key < keys) {
                kv = ld(k, key * kvd + (long long)g * hd + d);
                vv = key < C ? ld(vc, key * kvd + (long long)g * hd + d)
                             : ld(vb, (long long)(key - C) * kvd + (long long)g * hd + d);
            }
            Ks[j * kstride + d] = kv;
            Vs[j * hd + d] = vv;
        }
        if (tid < ATTN_KT) kp[tid] = t0 + tid < keys ? kpos[t0 + tid] : INT_MAX;
        __syncthreads();

        float s[ATTN_QPW];
#pragma unroll
        for (int r = 0; r < ATTN_QPW; r++) s[r] = 0.f;
        const float* kr = Ks + lane * kstride;
        const float* qw = Qs + warp * ATTN_QPW * hd;
        for (int d = 0; d < hd; d++) {
            float kv = kr[d];
#pragma unroll
            for (int r = 0; r < ATTN_QPW; r++) s[r] += qw[r * hd + d] * kv;
        }
        const int mykp = kp[lane];
#pragma unroll
        for (int r = 0; r < ATTN_QPW; r++) {
            bool vis = mykp <= qp[r];
            float sc = vis ? s[r] * scale : -INFINITY;
            float tmax = warp_max(sc);
            if (tmax == -INFINITY) continue;  // nothing visible in this tile (uniform across the warp)
            float mnew = fmaxf(m[r], tmax);
            float corr = expf(m[r] - mnew);
            float p = vis ? expf(sc - mnew) : 0.f;
            l[r] = l[r] * corr + warp_sum(p);
#pragma unroll
            for (int t = 0; t < MAX_DPL; t++) acc[r][t] *= corr;
            for (int j = 0; j < ATTN_KT; j++) {
                float pj = __shfl_sync(0xffffffffu, p, j);
                const float* vr = Vs + j * hd;
#pragma unroll
                for (int t = 0; t < MAX_DPL; t++) {
                    int d = lane + 32 * t;
                    if (d < hd) acc[r][t] += pj * vr[d];
                }
            }
            m[r] = mnew;
        }
    }

#pragma unroll
    for (int r = 0; r < ATTN_QPW; r++) {
        int qi = q0 + warp * ATTN_QPW + r;
        if (qi >= N) continue;
        float inv = 1.0f / l[r];
#pragma unroll
        for (int t = 0; t < MAX_DPL; t++) {
            int d = lane + 32 * t;
            if (d < hd) st(out, (long long)qi * heads * hd + (long long)head * hd + d, acc[r][t] * inv);
        }
        if (lse != nullptr && lane == 0) lse[(long long)head * N + qi] = m[r] + logf(l[r]);
    }
}
#define DEF_ATTENTION(T, S)                                                                                         \
    extern "C" __global__ void __launch_bounds__(32 * ATTN_WARPS)                                                 \
        attention_##S(T* out, const float* q, const T* k, const T* vc, const T* vb, const int* kpos, const int* qpos, \
                      float* lse, int N, int C, int heads, int kv_heads, int head_dim, float scale) {                \
        attention_impl<T>(out, q, k, vc, vb, kpos, qpos, lse, N, C, heads, kv_heads, head_dim, scale);             \
    }
FOR_TYPES(DEF_ATTENTION)

// attn_weights: w = exp(score*scale - lse) for every (head, query, key).
// Grid (ceil((C+N) / ATTN_KT), heads), block 32 * ATTN_WARPS, dynamic shared
// memory (ATTN_KT*(hd+1) + ATTN_WARPS*hd) floats + ATTN_WARPS*ATTN_KT
// floats. Lane j owns key t0 + j; warp w takes queries w, w + ATTN_WARPS, ...
// weights f32 [heads, N, C+N] (or null); partial f32 [heads, C+N] (or null)
// receives the sum over queries, reduced across warps in warp order.
template <typename T>
__device__ void attn_weights_impl(float* weights, float* partial, const float* q, const T* k, const int* kpos,
                                  const int* qpos, const float* lse, int N, int C, int heads, int kv_heads,
                                  int head_dim, float scale) {
    extern __shared__ float smem[];
    const int hd = head_dim, kstride = hd + 1;
    float* Ks = smem;                      // [ATTN_KT][hd+1]
    float* Qw = Ks + ATTN_KT * kstride;    // [ATTN_WARPS][hd]
    float* red = Qw + ATTN_WARPS * hd;     // [ATTN_WARPS][ATTN_KT]
    const int keys = C + N;
    const int head = blockIdx.y, g = head / (heads / kv_heads);
    const int t0 = blockIdx.x * ATTN_KT;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const long long kvd = (long long)kv_heads * hd;

    for (int idx = tid; idx < ATTN_KT * hd; idx += blockDim.x) {
        int j = idx / hd, d = idx % hd, key = t0 + j;
        Ks[j * kstride + d] = key < keys ? ld(k, key * kvd + (long long)g * hd + d) : 0.f;
    }
    __syncthreads();
    const int key = t0 + lane;
    const int mykp = key < keys ? kpos[key] : INT_MAX;
    const float* kr = Ks + lane * kstride;
    float* qw = Qw + warp * hd;
    float sum = 0.f;
    for (int i = warp; i < N; i += ATTN_WARPS) {
        for (int d = lane; d < hd; d += 32) qw[d] = q[((long long)i * heads + head) * hd + d];
        __syncwarp();
        float w = 0.f;
        if (mykp <= qpos[i]) {
            float dot = 0.f;
            for (int d = 0; d < hd; d++) dot += qw[d] * kr[d];
            w = expf(dot * scale - lse[(long long)head * N + i]);
        }
        if (weights != nullptr && key < keys) weights[((long long)head * N + i) * keys + key] = w;
        sum += w;
        __syncwarp();  // qw is rewritten by the next query
    }
    red[warp * ATTN_KT + lane] = sum;
    __syncthreads();
    if (warp == 0 && key < keys && partial != nullptr) {
        float s = 0.f;
        for (int w = 0; w < ATTN_WARPS; w++) s += red[w * ATTN_KT + lane];
        partial[(long long)head * keys + key] = s;
    }
}
#define DEF_WEIGHTS(T, S)                                                                                      \
    extern "C" __global__ void __launch_bounds__(32 * ATTN_WARPS)                                            \
        attn_weights_##S(float* weights, float* partial, const float* q, const T* k, const int* kpos,        \
                         const int* qpos, const float* lse, int N, int C, int heads, int kv_heads, int head_dim, \
                         float scale) {                                                                      \
        attn_weights_impl<T>(weights, partial, q, k, kpos, qpos, lse, N, C, heads, kv_heads, head_dim, scale); \
    }
FOR_TYPES(DEF_WEIGHTS)
