// PyTorch binding for the edgeda kernels: CUDA tensors in, CUDA tensors out, on the current
// stream. Built on demand by edgeda/kernels.py with torch.utils.cpp_extension.load.
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/extension.h>

#include "edgeda_kernels.h"

namespace {

edgeda_dtype toEdgeda(at::ScalarType t) {
    switch (t) {
    case at::kByte: return EDGEDA_UINT8;
    case at::kHalf: return EDGEDA_FLOAT16;
    case at::kFloat: return EDGEDA_FLOAT32;
    default: TORCH_CHECK(false, "edgeda kernels take uint8, float16 or float32 tensors, got ", t);
    }
}

at::ScalarType outType(bool fp16) { return fp16 ? at::kHalf : at::kFloat; }

void check(cudaError_t err, const char* what) {
    TORCH_CHECK(err == cudaSuccess, what, " failed: ", cudaGetErrorString(err));
}

void checkCuda(const torch::Tensor& t, const char* name) {
    TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor");
    TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
}

torch::Tensor preprocess(torch::Tensor frame, torch::Tensor mean, torch::Tensor std, double scale,
    int64_t out_h, int64_t out_w, bool fp16_output) {
    checkCuda(frame, "frame");
    checkCuda(mean, "mean");
    checkCuda(std, "std");
    TORCH_CHECK(frame.dim() == 4, "frame must be (N, H, W, C)");
    const int64_t c = frame.size(3);
    TORCH_CHECK(mean.scalar_type() == at::kFloat && std.scalar_type() == at::kFloat, "mean/std must be float32");
    TORCH_CHECK(mean.numel() == c && std.numel() == c, "mean/std need one value per channel");
    const c10::cuda::CUDAGuard guard(frame.device());
    auto out = torch::empty({frame.size(0), c, out_h, out_w}, frame.options().dtype(outType(fp16_output)));
    check(edgeda_preprocess(frame.data_ptr(), toEdgeda(frame.scalar_type()), frame.size(0), frame.size(1),
              frame.size(2), c, mean.data_ptr<float>(), std.data_ptr<float>(), static_cast<float>(scale),
              out.data_ptr(), toEdgeda(out.scalar_type()), out_h, out_w, c10::cuda::getCurrentCUDAStream().stream()),
        "edgeda_preprocess");
    return out;
}

std::vector<torch::Tensor> confidence(torch::Tensor logits, bool fp16_output) {
    checkCuda(logits, "logits");
    TORCH_CHECK(logits.dim() >= 2, "logits must be (N, C, ...)");
    TORCH_CHECK(logits.scalar_type() != at::kByte, "logits must be float16 or float32");
    const c10::cuda::CUDAGuard guard(logits.device());
    std::vector<int64_t> shape{logits.size(0)};
    int64_t s = 1;
    for (int64_t d = 2; d < logits.dim(); ++d) {
        shape.push_back(logits.size(d));
        s *= logits.size(d);
    }
    auto cls = torch::empty(shape, logits.options().dtype(at::kInt));
    auto prob = torch::empty(shape, logits.options().dtype(outType(fp16_output)));
    auto ent = torch::empty_like(prob);
    check(edgeda_confidence(logits.data_ptr(), toEdgeda(logits.scalar_type()), logits.size(0), logits.size(1), s,
              cls.data_ptr<int32_t>(), prob.data_ptr(), ent.data_ptr(), toEdgeda(prob.scalar_type()),
              c10::cuda::getCurrentCUDAStream().stream()),
        "edgeda_confidence");
    return {cls, prob, ent};
}

torch::Tensor instnorm_act(torch::Tensor x, torch::Tensor gamma, torch::Tensor beta, double eps, int64_t act,
    double alpha) {
    checkCuda(x, "x");
    checkCuda(gamma, "weight");
    checkCuda(beta, "bias");
    TORCH_CHECK(x.dim() >= 3, "x must be (N, C, ...)");
    TORCH_CHECK(x.scalar_type() != at::kByte, "x must be float16 or float32");
    TORCH_CHECK(gamma.scalar_type() == x.scalar_type() && beta.scalar_type() == x.scalar_type(),
        "weight/bias must have the dtype of x");
    TORCH_CHECK(gamma.numel() == x.size(1) && beta.numel() == x.size(1), "weight/bias need one value per channel");
    const c10::cuda::CUDAGuard guard(x.device());
    auto y = torch::empty_like(x);
    check(edgeda_instnorm_act(x.data_ptr(), gamma.data_ptr(), beta.data_ptr(), toEdgeda(x.scalar_type()), x.size(0),
              x.size(1), x.numel() / (x.size(0) * x.size(1)), static_cast<float>(eps),
              static_cast<edgeda_activation>(act), static_cast<float>(alpha), y.data_ptr(),
              c10::cuda::getCurrentCUDAStream().stream()),
        "edgeda_instnorm_act");
    return y;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.def("preprocess", &preprocess, "uint8/half/float NHWC -> bilinear resize -> normalise -> NCHW");
    m.def("confidence", &confidence, "logits -> (class int32, max softmax prob, entropy)");
    m.def("instnorm_act", &instnorm_act, "InstanceNorm + affine + activation (0 none, 1 relu, 2 leaky)");
}
