// instnorm_act: y = act(gamma_c (x - mu) / sqrt(var + eps) + beta_c) per (n, c) plane, NCHW.
//
// One block per plane. Planes of up to BLOCK*ITEMS elements are held in registers, so the
// input is read once and the output written once (the traffic of a copy); mean and variance
// are then exact two-pass values over the registers. Larger planes are streamed: one pass
// for shifted sums (shift K = first element, S1 = sum(x-K), S2 = sum((x-K)^2), so
// mu = K + S1/n and var = S2/n - (S1/n)^2 without catastrophic cancellation for typical data),
// then a second pass that normalises and writes (its reads mostly hit L2).
#include "common.cuh"
#include "edgeda_kernels.h"

namespace edgeda {
namespace {

__device__ __forceinline__ float activate(float v, int act, float alpha) {
    if (act == EDGEDA_ACT_RELU) return fmaxf(v, 0.0f);
    if (act == EDGEDA_ACT_LEAKY_RELU) return v >= 0.0f ? v : v * alpha;
    return v;
}

template <typename T, int BLOCK, int ITEMS>
__global__ void __launch_bounds__(BLOCK) instnorm_act_cached_kernel(const T* __restrict__ x,
    const T* __restrict__ gamma, const T* __restrict__ beta, T* __restrict__ y, int c, int hw,
    float eps, int act, float alpha) {
    __shared__ float scratch[33];
    const int64_t plane = blockIdx.x;
    const int ch = static_cast<int>(plane % c);
    const T* xp = x + plane * hw;
    T* yp = y + plane * hw;
    float v[ITEMS];
    float sum = 0.0f;
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
        const int k = threadIdx.x + i * BLOCK;
        v[i] = (k < hw) ? load_f32(xp + k) : 0.0f;
        sum += v[i];
    }
    const float inv_n = 1.0f / static_cast<float>(hw);
    const float mu = block_sum(sum, scratch) * inv_n;
    float sq = 0.0f;
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
        const int k = threadIdx.x + i * BLOCK;
        const float d = v[i] - mu;
        sq += (k < hw) ? d * d : 0.0f;
    }
    const float var = block_sum(sq, scratch) * inv_n;
    const float a = load_f32(gamma + ch) / sqrtf(var + eps);
    const float b = load_f32(beta + ch);
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
        const int k = threadIdx.x + i * BLOCK;
        if (k < hw) store(yp + k, activate((v[i] - mu) * a + b, act, alpha));
    }
}

template <typename T, int BLOCK>
__global__ void __launch_bounds__(BLOCK) instnorm_act_streamed_kernel(const T* __restrict__ x,
    const T* __restrict__ gamma, const T* __restrict__ beta, T* __restrict__ y, int c, int64_t hw,
    float eps, int act, float alpha) {
    __shared__ float scratch[33];
    const int64_t plane = blockIdx.x;
    const int ch = static_cast<int>(plane % c);
    const T* xp = x + plane * hw;
    T* yp = y + plane * hw;
    const float shift = load_f32(xp);
    float s1 = 0.0f, s2 = 0.0f;
    for (int64_t k = threadIdx.x; k < hw; k += BLOCK) {
        const float d = load_f32(xp + k) - shift;
        s1 += d;
        s2 += d * d;
    }
    const float inv_n = 1.0f / static_cast<float>(hw);
    const float m1 = block_sum(s1, scratch) * inv_n;
    const float m2 = block_sum(s2, scratch) * inv_n;
    const float mu = shift + m1;
    const float var = fmaxf(m2 - m1 * m1, 0.0f);
    const float a = load_f32(gamma + ch) / sqrtf(var + eps);
    const float b = load_f32(beta + ch);
    for (int64_t k = threadIdx.x; k < hw; k += BLOCK)
        store(yp + k, activate((load_f32(xp + k) - mu) * a + b, act, alpha));
}

template <typename T>
cudaError_t launch(const void* x, const void* gamma, const void* beta, int64_t n, int64_t c,
    int64_t hw, float eps, int act, float alpha, void* y, cudaStream_t stream) {
    const T* xs = static_cast<const T*>(x);
    const T* g = static_cast<const T*>(gamma);
    const T* b = static_cast<const T*>(beta);
    T* ys = static_cast<T*>(y);
    const unsigned planes = static_cast<unsigned>(n * c);
    const int ci = static_cast<int>(c);
    if (hw <= 256 * 4) {
        instnorm_act_cached_kernel<T, 256, 4><<<planes, 256, 0, stream>>>(xs, g, b, ys, ci, static_cast<int>(hw), eps, act, alpha);
    } else if (hw <= 256 * 16) {
        instnorm_act_cached_kernel<T, 256, 16><<<planes, 256, 0, stream>>>(xs, g, b, ys, ci, static_cast<int>(hw), eps, act, alpha);
    } else if (hw <= 1024 * 16) {
        instnorm_act_cached_kernel<T, 1024, 16><<<planes, 1024, 0, stream>>>(xs, g, b, ys, ci, static_cast<int>(hw), eps, act, alpha);
    } else {
        instnorm_act_streamed_kernel<T, 512><<<planes, 512, 0, stream>>>(xs, g, b, ys, ci, hw, eps, act, alpha);
    }
    return cudaGetLastError();
}

}  // namespace
}  // namespace edgeda

extern "C" cudaError_t edgeda_instnorm_act(const void* x, const void* gamma, const void* beta,
    edgeda_dtype dtype, int64_t n, int64_t c, int64_t hw, float eps, edgeda_activation act,
    float alpha, void* y, cudaStream_t stream) {
    using namespace edgeda;
    if (n <= 0 || c <= 0 || hw <= 0 || n * c > INT32_MAX || !x || !gamma || !beta || !y)
        return cudaErrorInvalidValue;
    if (act != EDGEDA_ACT_NONE && act != EDGEDA_ACT_RELU && act != EDGEDA_ACT_LEAKY_RELU)
        return cudaErrorInvalidValue;
    if (dtype == EDGEDA_FLOAT32) return launch<float>(x, gamma, beta, n, c, hw, eps, act, alpha, y, stream);
    if (dtype == EDGEDA_FLOAT16) return launch<__half>(x, gamma, beta, n, c, hw, eps, act, alpha, y, stream);
    return cudaErrorInvalidValue;
}
