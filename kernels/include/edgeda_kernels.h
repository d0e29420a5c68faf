// edgeda CUDA kernels: C launchers, free of TensorRT (and PyTorch) types.
//
// Every launcher is asynchronous on `stream`, checks its arguments, and returns the
// cudaError_t of the launch (cudaErrorInvalidValue for bad arguments). Device pointers only.
// Shapes use int64_t element counts; tensors are dense and contiguous in the stated layout.
#ifndef EDGEDA_KERNELS_H
#define EDGEDA_KERNELS_H

#include <cuda_runtime_api.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// Element types understood by the launchers (values are ours, not TensorRT's or torch's).
typedef enum edgeda_dtype {
    EDGEDA_UINT8 = 0,
    EDGEDA_FLOAT16 = 1,
    EDGEDA_FLOAT32 = 2
} edgeda_dtype;

// Activation applied after instance normalisation.
typedef enum edgeda_activation {
    EDGEDA_ACT_NONE = 0,
    EDGEDA_ACT_RELU = 1,
    EDGEDA_ACT_LEAKY_RELU = 2
} edgeda_activation;

// preprocess: src (n, in_h, in_w, c) NHWC of src_type (uint8, float16 or float32) ->
// dst (n, c, out_h, out_w) NCHW of dst_type (float16 or float32):
//   v   = bilinear(src) with half-pixel centres (PyTorch align_corners=False, ONNX half_pixel),
//         source coordinate s = max((d + 0.5) * in/out - 0.5, 0), edge pixels replicated;
//   dst = (v * scale - mean[ch]) / std[ch].
// mean and std are float32 device arrays of length c.
cudaError_t edgeda_preprocess(const void* src, edgeda_dtype src_type, int64_t n, int64_t in_h,
    int64_t in_w, int64_t c, const float* mean, const float* std, float scale, void* dst,
    edgeda_dtype dst_type, int64_t out_h, int64_t out_w, cudaStream_t stream);

// confidence: logits (n, c, s) (s = H*W, or 1 for (n, c)) of in_type (float16/float32) ->
// for every (n, s): cls = argmax_k x_k (first maximum), prob = max_k softmax(x)_k = 1 / Z,
// entropy = -sum_k p_k log p_k = log Z - (1/Z) sum_k e^{x_k - m} (x_k - m),
// with m the running maximum and Z = sum_k e^{x_k - m}, updated online in one pass.
// cls is int32 (n, s); prob and entropy are (n, s) of out_type (float16/float32).
cudaError_t edgeda_confidence(const void* logits, edgeda_dtype in_type, int64_t n, int64_t c,
    int64_t s, int32_t* cls, void* prob, void* entropy, edgeda_dtype out_type, cudaStream_t stream);

// instnorm_act: x (n, c, hw) of dtype (float16/float32), gamma/beta (c) of the same dtype ->
//   y = act(gamma[ch] * (x - mu) / sqrt(var + eps) + beta[ch]),
// mu and var (biased) over the hw elements of each (n, ch) plane, act = identity, ReLU or
// LeakyReLU(alpha). y has the shape and dtype of x. Statistics in float32.
cudaError_t edgeda_instnorm_act(const void* x, const void* gamma, const void* beta,
    edgeda_dtype dtype, int64_t n, int64_t c, int64_t hw, float eps, edgeda_activation act,
    float alpha, void* y, cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif  // EDGEDA_KERNELS_H
