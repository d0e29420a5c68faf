// preprocess: uint8/half/float NHWC frame -> bilinear resize -> (v*scale - mean)/std -> NCHW.
// One thread per output pixel (x, y) of image n; it reads the four NHWC neighbours (all c
// channels are adjacent in memory) and writes c planes, so stores are coalesced along x.
#include "common.cuh"
#include "edgeda_kernels.h"

namespace edgeda {
namespace {

template <typename Tin, typename Tout>
__global__ void preprocess_kernel(const Tin* __restrict__ src, int in_h, int in_w, int c,
    const float* __restrict__ mean, const float* __restrict__ stdv, float scale,
    Tout* __restrict__ dst, int out_h, int out_w) {
    const int x = blockIdx.x * blockDim.x + threadIdx.x;
    const int y = blockIdx.y * blockDim.y + threadIdx.y;
    const int64_t n = blockIdx.z;
    if (x >= out_w || y >= out_h) return;

    // Half-pixel source coordinate s = (d + 0.5) * in / out - 0.5 = ((2d + 1) in - out) / (2 out),
    // clamped at 0 like PyTorch (align_corners=False). Integer part and fraction come from one
    // integer division, so coordinates are exact (no float32 drift on large frames).
    const int ny = max((2 * y + 1) * in_h - out_h, 0), dy = 2 * out_h;
    const int nx = max((2 * x + 1) * in_w - out_w, 0), dx = 2 * out_w;
    const int y0 = min(ny / dy, in_h - 1);
    const int x0 = min(nx / dx, in_w - 1);
    const int y1 = y0 + (y0 < in_h - 1 ? 1 : 0);
    const int x1 = x0 + (x0 < in_w - 1 ? 1 : 0);
    const float ly = static_cast<float>(ny - (ny / dy) * dy) / static_cast<float>(dy);
    const float lx = static_cast<float>(nx - (nx / dx) * dx) / static_cast<float>(dx);
    const float hy = 1.0f - ly, hx = 1.0f - lx;

    const Tin* img = src + n * in_h * in_w * c;
    const Tin* p00 = img + (static_cast<int64_t>(y0) * in_w + x0) * c;
    const Tin* p01 = img + (static_cast<int64_t>(y0) * in_w + x1) * c;
    const Tin* p10 = img + (static_cast<int64_t>(y1) * in_w + x0) * c;
    const Tin* p11 = img + (static_cast<int64_t>(y1) * in_w + x1) * c;
    const int64_t plane = static_cast<int64_t>(out_h) * out_w;
    Tout* out = dst + n * c * plane + static_cast<int64_t>(y) * out_w + x;
    for (int ch = 0; ch < c; ++ch) {
        const float v = hy * (hx * load_f32(p00 + ch) + lx * load_f32(p01 + ch)) +
                        ly * (hx * load_f32(p10 + ch) + lx * load_f32(p11 + ch));
        store(out + ch * plane, (v * scale - __ldg(mean + ch)) / __ldg(stdv + ch));
    }
}

template <typename Tin, typename Tout>
cudaError_t launch(const void* src, int64_t n, int64_t in_h, int64_t in_w, int64_t c,
    const float* mean, const float* stdv, float scale, void* dst, int64_t out_h, int64_t out_w,
    cudaStream_t stream) {
    const dim3 block(32, 8);
    const dim3 grid(static_cast<unsigned>((out_w + block.x - 1) / block.x),
        static_cast<unsigned>((out_h + block.y - 1) / block.y), static_cast<unsigned>(n));
    preprocess_kernel<Tin, Tout><<<grid, block, 0, stream>>>(static_cast<const Tin*>(src),
        static_cast<int>(in_h), static_cast<int>(in_w), static_cast<int>(c), mean, stdv, scale,
        static_cast<Tout*>(dst), static_cast<int>(out_h), static_cast<int>(out_w));
    return cudaGetLastError();
}

template <typename Tin>
cudaError_t dispatch_out(edgeda_dtype dst_type, const void* src, int64_t n, int64_t in_h,
    int64_t in_w, int64_t c, const float* mean, const float* stdv, float scale, void* dst,
    int64_t out_h, int64_t out_w, cudaStream_t stream) {
    if (dst_type == EDGEDA_FLOAT32)
        return launch<Tin, float>(src, n, in_h, in_w, c, mean, stdv, scale, dst, out_h, out_w, stream);
    if (dst_type == EDGEDA_FLOAT16)
        return launch<Tin, __half>(src, n, in_h, in_w, c, mean, stdv, scale, dst, out_h, out_w, stream);
    return cudaErrorInvalidValue;
}

}  // namespace
}  // namespace edgeda

extern "C" cudaError_t edgeda_preprocess(const void* src, edgeda_dtype src_type, int64_t n,
    int64_t in_h, int64_t in_w, int64_t c, const float* mean, const float* std, float scale,
    void* dst, edgeda_dtype dst_type, int64_t out_h, int64_t out_w, cudaStream_t stream) {
    using namespace edgeda;
    if (n <= 0 || in_h <= 0 || in_w <= 0 || c <= 0 || out_h <= 0 || out_w <= 0) return cudaErrorInvalidValue;
    // grid.z limit, and (2 out + 1) * in must fit the kernel's int32 coordinate arithmetic.
    if (n > 65535 || (2 * out_h + 1) * in_h > INT32_MAX || (2 * out_w + 1) * in_w > INT32_MAX)
        return cudaErrorInvalidValue;
    if (!src || !dst || !mean || !std) return cudaErrorInvalidValue;
    switch (src_type) {
    case EDGEDA_UINT8:
        return dispatch_out<uint8_t>(dst_type, src, n, in_h, in_w, c, mean, std, scale, dst, out_h, out_w, stream);
    case EDGEDA_FLOAT16:
        return dispatch_out<__half>(dst_type, src, n, in_h, in_w, c, mean, std, scale, dst, out_h, out_w, stream);
    case EDGEDA_FLOAT32:
        return dispatch_out<float>(dst_type, src, n, in_h, in_w, c, mean, std, scale, dst, out_h, out_w, stream);
    }
    return cudaErrorInvalidValue;
}
