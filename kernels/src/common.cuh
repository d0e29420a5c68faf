// Small device helpers shared by the edgeda kernels (no TensorRT types).
#ifndef EDGEDA_COMMON_CUH
#define EDGEDA_COMMON_CUH

#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

namespace edgeda {

__device__ __forceinline__ float load_f32(const float* p) { return __ldg(p); }
__device__ __forceinline__ float load_f32(const __half* p) { return __half2float(__ldg(p)); }
__device__ __forceinline__ float load_f32(const uint8_t* p) { return static_cast<float>(__ldg(p)); }

__device__ __forceinline__ void store(float* p, float v) { *p = v; }
__device__ __forceinline__ void store(__half* p, float v) { *p = __float2half_rn(v); }

// Sum over a block whose size is a multiple of 32 (at most 1024). Every thread gets the result.
__device__ __forceinline__ float block_sum(float v, float* scratch /* >= 33 floats */) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    if (warp == 0) {
        float w = (lane < (blockDim.x >> 5)) ? scratch[lane] : 0.0f;
        for (int o = 16; o > 0; o >>= 1) w += __shfl_xor_sync(0xffffffffu, w, o);
        if (lane == 0) scratch[32] = w;
    }
    __syncthreads();
    const float total = scratch[32];
    __syncthreads();  // scratch may be reused by the caller's next reduction
    return total;
}

}  // namespace edgeda

#endif  // EDGEDA_COMMON_CUH
