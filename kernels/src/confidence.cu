// confidence: logits -> (argmax class, max softmax probability, entropy) in one pass.
//
// Online state over the logits seen so far, with m their maximum:
//   Z = sum_k e^{x_k - m},  T = sum_k e^{x_k - m} (x_k - m).
// A new maximum m' rescales both: with d = m - m' <= 0, Z' = e^d Z and T' = e^d (T + d Z).
// At the end p_max = 1/Z and H = -sum p log p = log Z - T/Z. Two partial states merge with
// the same rule, so a warp can split one row. Ties keep the first (smallest) index, like
// torch.argmax. Accumulation is in float32 whatever the input type.
#include "common.cuh"
#include "edgeda_kernels.h"

namespace edgeda {
namespace {

struct SoftmaxState {
    float m;    // running maximum
    float z;    // sum e^{x - m}
    float t;    // sum e^{x - m} (x - m)
    int idx;    // index of the first maximum
};

__device__ __forceinline__ SoftmaxState empty_state() { return {-INFINITY, 0.0f, 0.0f, 0}; }

__device__ __forceinline__ void push(SoftmaxState& st, float x, int k) {
    if (x == -INFINITY) return;  // e^{-inf} = 0: no mass, and avoids -inf - (-inf)
    if (x > st.m) {
        if (st.z > 0.0f) {
            const float d = st.m - x;
            const float e = expf(d);
            st.t = e * (st.t + d * st.z);
            st.z *= e;
        }
        st.m = x;
        st.idx = k;
        st.z += 1.0f;  // e^0; adds 0 to t
    } else {
        const float d = x - st.m;
        const float e = expf(d);
        st.z += e;
        st.t += e * d;
    }
}

__device__ __forceinline__ SoftmaxState merge(SoftmaxState a, SoftmaxState b) {
    if (b.z == 0.0f) return a;
    if (a.z == 0.0f) return b;
    if (b.m > a.m || (b.m == a.m && b.idx < a.idx)) {
        const SoftmaxState tmp = a;
        a = b;
        b = tmp;
    }
    const float d = b.m - a.m;
    const float e = expf(d);
    a.t += e * (b.t + d * b.z);
    a.z += e * b.z;
    return a;
}

template <typename Tout>
__device__ __forceinline__ void finish(const SoftmaxState& st, int64_t i, int32_t* cls, Tout* prob, Tout* ent) {
    cls[i] = st.idx;
    store(prob + i, 1.0f / st.z);
    store(ent + i, logf(st.z) - st.t / st.z);
}

// One thread per (n, position); the loop over classes strides by s, so a warp reads
// 32 consecutive positions of one class plane (coalesced). Used for (N,C,H,W) and small C.
template <typename Tin, typename Tout>
__global__ void confidence_spatial_kernel(const Tin* __restrict__ x, int64_t n, int c, int64_t s,
    int32_t* __restrict__ cls, Tout* __restrict__ prob, Tout* __restrict__ ent) {
    const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= n * s) return;
    const int64_t b = i / s, p = i - b * s;
    const Tin* row = x + b * c * s + p;
    SoftmaxState st = empty_state();
    for (int k = 0; k < c; ++k) push(st, load_f32(row + k * s), k);
    finish(st, i, cls, prob, ent);
}

// One warp per row of (N, C) logits with many classes: lanes stride over the classes.
template <typename Tin, typename Tout>
__global__ void confidence_rows_kernel(const Tin* __restrict__ x, int64_t n, int c,
    int32_t* __restrict__ cls, Tout* __restrict__ prob, Tout* __restrict__ ent) {
    const int64_t row = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
    const int lane = threadIdx.x & 31;
    if (row >= n) return;  // whole warps leave together
    const Tin* xr = x + row * c;
    SoftmaxState st = empty_state();
    for (int k = lane; k < c; k += 32) push(st, load_f32(xr + k), k);
    for (int o = 16; o > 0; o >>= 1) {
        SoftmaxState other;
        other.m = __shfl_xor_sync(0xffffffffu, st.m, o);
        other.z = __shfl_xor_sync(0xffffffffu, st.z, o);
        other.t = __shfl_xor_sync(0xffffffffu, st.t, o);
        other.idx = __shfl_xor_sync(0xffffffffu, st.idx, o);
        st = merge(st, other);
    }
    if (lane == 0) finish(st, row, cls, prob, ent);
}

template <typename Tin, typename Tout>
cudaError_t launch(const void* logits, int64_t n, int64_t c, int64_t s, int32_t* cls, void* prob,
    void* ent, cudaStream_t stream) {
    const int threads = 256;
    if (s == 1 && c >= 64) {
        const int64_t blocks = (n * 32 + threads - 1) / threads;
        confidence_rows_kernel<Tin, Tout><<<static_cast<unsigned>(blocks), threads, 0, stream>>>(
            static_cast<const Tin*>(logits), n, static_cast<int>(c), cls, static_cast<Tout*>(prob),
            static_cast<Tout*>(ent));
    } else {
        const int64_t blocks = (n * s + threads - 1) / threads;
        confidence_spatial_kernel<Tin, Tout><<<static_cast<unsigned>(blocks), threads, 0, stream>>>(
            static_cast<const Tin*>(logits), n, static_cast<int>(c), s, cls, static_cast<Tout*>(prob),
            static_cast<Tout*>(ent));
    }
    return cudaGetLastError();
}

template <typename Tin>
cudaError_t dispatch_out(edgeda_dtype out_type, const void* logits, int64_t n, int64_t c, int64_t s,
    int32_t* cls, void* prob, void* ent, cudaStream_t stream) {
    if (out_type == EDGEDA_FLOAT32) return launch<Tin, float>(logits, n, c, s, cls, prob, ent, stream);
    if (out_type == EDGEDA_FLOAT16) return launch<Tin, __half>(logits, n, c, s, cls, prob, ent, stream);
    return cudaErrorInvalidValue;
}

}  // namespace
}  // namespace edgeda

extern "C" cudaError_t edgeda_confidence(const void* logits, edgeda_dtype in_type, int64_t n,
    int64_t c, int64_t s, int32_t* cls, void* prob, void* entropy, edgeda_dtype out_type,
    cudaStream_t stream) {
    using namespace edgeda;
    if (n <= 0 || c <= 0 || s <= 0 || c > INT32_MAX || !logits || !cls || !prob || !entropy)
        return cudaErrorInvalidValue;
    if ((n * s + 255) / 256 > INT32_MAX || (n * 32 + 255) / 256 > INT32_MAX) return cudaErrorInvalidValue;
    if (in_type == EDGEDA_FLOAT32) return dispatch_out<float>(out_type, logits, n, c, s, cls, prob, entropy, stream);
    if (in_type == EDGEDA_FLOAT16) return dispatch_out<__half>(out_type, logits, n, c, s, cls, prob, entropy, stream);
    return cudaErrorInvalidValue;
}
