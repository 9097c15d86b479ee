// CUDA kernels of MrcnnRoiAlign / MrcnnRoiAlignGrad and their launchers.
//
// Needs only the CUDA runtime and roi_align_math.h (no TensorFlow headers): the op
// kernels in roi_align_op.cc hand over raw device pointers and the TF stream. Compile
// with `nvcc -x cu -std=c++17 -O2 -Xcompiler -fPIC -c roi_align_kernels.cu.cc`.
//
// Forward: one thread per output element (box, py, px, channel), channel fastest, so a
// warp reads contiguous NHWC channels. Backward: one thread per incoming gradient
// element; each sample's share goes to its four neighbours with atomicAdd (as the
// torchvision CUDA kernel), after the output is zeroed on the same stream.
#include <cuda_runtime.h>

#include <cstdint>

#include "roi_align_math.h"

namespace mrcnn {
namespace roi_align {

struct Dims {
  int num_images, height, width, channels, num_boxes, pooled_h, pooled_w;
  float spatial_scale;
  int sampling_ratio;
  bool aligned;
};

__global__ void RoiAlignForwardKernel(const float* __restrict__ features,
                                      const float* __restrict__ boxes,
                                      const int* __restrict__ box_indices, Dims d,
                                      float* __restrict__ output) {
  const int64_t total =
      static_cast<int64_t>(d.num_boxes) * d.pooled_h * d.pooled_w * d.channels;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int c = static_cast<int>(i % d.channels);
    const int px = static_cast<int>((i / d.channels) % d.pooled_w);
    const int py = static_cast<int>((i / d.channels / d.pooled_w) % d.pooled_h);
    const int64_t k = i / d.channels / d.pooled_w / d.pooled_h;
    const int n = box_indices[k];
    if (n < 0 || n >= d.num_images) {
      output[i] = 0.0f;
      continue;
    }
    const RoiGeometry g = ComputeGeometry(boxes + 4 * k, d.pooled_h, d.pooled_w,
                                          d.spatial_scale, d.sampling_ratio, d.aligned);
    const float* image =
        features + static_cast<int64_t>(n) * d.height * d.width * d.channels;
    output[i] = BinValue(image, d.height, d.width, d.channels, c, g, py, px);
  }
}

__global__ void RoiAlignBackwardKernel(const float* __restrict__ grads,
                                       const float* __restrict__ boxes,
                                       const int* __restrict__ box_indices, Dims d,
                                       float* __restrict__ grad_features) {
  const int64_t total =
      static_cast<int64_t>(d.num_boxes) * d.pooled_h * d.pooled_w * d.channels;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int c = static_cast<int>(i % d.channels);
    const int px = static_cast<int>((i / d.channels) % d.pooled_w);
    const int py = static_cast<int>((i / d.channels / d.pooled_w) % d.pooled_h);
    const int64_t k = i / d.channels / d.pooled_w / d.pooled_h;
    const int n = box_indices[k];
    if (n < 0 || n >= d.num_images) continue;
    const RoiGeometry g = ComputeGeometry(boxes + 4 * k, d.pooled_h, d.pooled_w,
                                          d.spatial_scale, d.sampling_ratio, d.aligned);
    const float gv = grads[i] * g.inv_count;
    if (gv == 0.0f) continue;
    float* image = grad_features + static_cast<int64_t>(n) * d.height * d.width * d.channels;
    for (int iy = 0; iy < g.grid_h; ++iy) {
      const float y = SamplePos(g.start_y, g.bin_h, py, iy, g.grid_h);
      for (int ix = 0; ix < g.grid_w; ++ix) {
        const float x = SamplePos(g.start_x, g.bin_w, px, ix, g.grid_w);
        Taps t;
        if (!BilinearTaps(y, x, d.height, d.width, &t)) continue;
        atomicAdd(image + static_cast<int64_t>(t.p00) * d.channels + c, gv * t.w00);
        atomicAdd(image + static_cast<int64_t>(t.p01) * d.channels + c, gv * t.w01);
        atomicAdd(image + static_cast<int64_t>(t.p10) * d.channels + c, gv * t.w10);
        atomicAdd(image + static_cast<int64_t>(t.p11) * d.channels + c, gv * t.w11);
      }
    }
  }
}

namespace {

constexpr int kThreads = 256;

int Blocks(int64_t total) {
  const int64_t blocks = (total + kThreads - 1) / kThreads;
  return static_cast<int>(blocks < 65535 * 32 ? blocks : 65535 * 32);  // grid-stride beyond
}

const char* LastError() {
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? "" : cudaGetErrorString(err);
}

}  // namespace

const char* LaunchRoiAlignForwardGpu(const float* features, const float* boxes,
                                     const int* box_indices, int num_images, int height,
                                     int width, int channels, int num_boxes, int pooled_h,
                                     int pooled_w, float spatial_scale, int sampling_ratio,
                                     bool aligned, float* output, void* stream) {
  const Dims d{num_images, height,        width,          channels, num_boxes,
               pooled_h,   pooled_w,      spatial_scale,  sampling_ratio, aligned};
  const int64_t total = static_cast<int64_t>(num_boxes) * pooled_h * pooled_w * channels;
  if (total == 0) return "";
  RoiAlignForwardKernel<<<Blocks(total), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      features, boxes, box_indices, d, output);
  return LastError();
}

const char* LaunchRoiAlignBackwardGpu(const float* grads, const float* boxes,
                                      const int* box_indices, int num_images, int height,
                                      int width, int channels, int num_boxes, int pooled_h,
                                      int pooled_w, float spatial_scale, int sampling_ratio,
                                      bool aligned, float* grad_features, void* stream) {
  const Dims d{num_images, height,        width,          channels, num_boxes,
               pooled_h,   pooled_w,      spatial_scale,  sampling_ratio, aligned};
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  const size_t bytes =
      static_cast<size_t>(num_images) * height * width * channels * sizeof(float);
  if (cudaMemsetAsync(grad_features, 0, bytes, s) != cudaSuccess) return LastError();
  const int64_t total = static_cast<int64_t>(num_boxes) * pooled_h * pooled_w * channels;
  if (total == 0) return "";
  RoiAlignBackwardKernel<<<Blocks(total), kThreads, 0, s>>>(grads, boxes, box_indices, d,
                                                           grad_features);
  return LastError();
}

}  // namespace roi_align
}  // namespace mrcnn
