// Standalone check of the RoIAlign CUDA kernels against a CPU loop over the same
// header math (roi_align_math.h) on random inputs. Needs only nvcc and a GPU:
//
//   cd custom_ops/roi_align/cuda_harness && make && ./roi_align_harness
//
// Prints the max abs difference of the forward output and of the feature gradient
// for several settings (sampling ratios 0/1/2, aligned true/false, boxes crossing the
// borders, several images) and exits non-zero when one exceeds 1e-4 (the GPU
// backward uses float atomics, so its summation order differs from the CPU loop).
#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "../../../mrcnn/ops/kernels/roi_align_kernels.cu.cc"  // kernels + launchers (one translation unit)

using namespace mrcnn::roi_align;

#define CHECK(x)                                                              \
  do {                                                                        \
    cudaError_t e = (x);                                                      \
    if (e != cudaSuccess) {                                                   \
      std::fprintf(stderr, "%s:%d %s\n", __FILE__, __LINE__, cudaGetErrorString(e)); \
      return 2;                                                               \
    }                                                                         \
  } while (0)

static void CpuForward(const std::vector<float>& f, const std::vector<float>& b,
                       const std::vector<int>& idx, const Dims& d, std::vector<float>* out) {
  for (int k = 0; k < d.num_boxes; ++k) {
    const RoiGeometry g = ComputeGeometry(&b[4 * k], d.pooled_h, d.pooled_w, d.spatial_scale,
                                          d.sampling_ratio, d.aligned);
    const float* image = &f[static_cast<size_t>(idx[k]) * d.height * d.width * d.channels];
    for (int py = 0; py < d.pooled_h; ++py)
      for (int px = 0; px < d.pooled_w; ++px)
        for (int c = 0; c < d.channels; ++c)
          (*out)[((static_cast<size_t>(k) * d.pooled_h + py) * d.pooled_w + px) * d.channels + c] =
              BinValue(image, d.height, d.width, d.channels, c, g, py, px);
  }
}

static void CpuBackward(const std::vector<float>& grad, const std::vector<float>& b,
                        const std::vector<int>& idx, const Dims& d, std::vector<float>* df) {
  std::fill(df->begin(), df->end(), 0.0f);
  for (int k = 0; k < d.num_boxes; ++k) {
    const RoiGeometry g = ComputeGeometry(&b[4 * k], d.pooled_h, d.pooled_w, d.spatial_scale,
                                          d.sampling_ratio, d.aligned);
    float* image = &(*df)[static_cast<size_t>(idx[k]) * d.height * d.width * d.channels];
    for (int py = 0; py < d.pooled_h; ++py)
      for (int px = 0; px < d.pooled_w; ++px)
        for (int iy = 0; iy < g.grid_h; ++iy)
          for (int ix = 0; ix < g.grid_w; ++ix) {
            Taps t;
            if (!BilinearTaps(SamplePos(g.start_y, g.bin_h, py, iy, g.grid_h),
                              SamplePos(g.start_x, g.bin_w, px, ix, g.grid_w), d.height,
                              d.width, &t))
              continue;
            const float* gv =
                &grad[((static_cast<size_t>(k) * d.pooled_h + py) * d.pooled_w + px) * d.channels];
            for (int c = 0; c < d.channels; ++c) {
              const float v = gv[c] * g.inv_count;
              image[t.p00 * d.channels + c] += v * t.w00;
              image[t.p01 * d.channels + c] += v * t.w01;
              image[t.p10 * d.channels + c] += v * t.w10;
              image[t.p11 * d.channels + c] += v * t.w11;
            }
          }
  }
}

template <typename T>
static T* ToDevice(const std::vector<T>& v) {
  T* p = nullptr;
  cudaMalloc(&p, v.size() * sizeof(T) + 1);
  cudaMemcpy(p, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice);
  return p;
}

int main() {
  std::mt19937 rng(1234);
  std::normal_distribution<float> normal;
  std::uniform_real_distribution<float> uni(-0.4f, 1.4f);
  int failures = 0;
  for (int ratio : {0, 1, 2}) {
    for (bool aligned : {false, true}) {
      Dims d{3, 23, 31, 37, 200, 7, 5, 0.25f, ratio, aligned};
      const float img_h = d.height / d.spatial_scale, img_w = d.width / d.spatial_scale;
      std::vector<float> f(static_cast<size_t>(d.num_images) * d.height * d.width * d.channels);
      for (auto& v : f) v = normal(rng);
      std::vector<float> b(4 * d.num_boxes);
      std::vector<int> idx(d.num_boxes);
      for (int k = 0; k < d.num_boxes; ++k) {
        float y1 = uni(rng) * img_h, y2 = uni(rng) * img_h;
        float x1 = uni(rng) * img_w, x2 = uni(rng) * img_w;
        b[4 * k + 0] = std::fmin(y1, y2);
        b[4 * k + 1] = std::fmin(x1, x2);
        b[4 * k + 2] = std::fmax(y1, y2);
        b[4 * k + 3] = std::fmax(x1, x2);
        idx[k] = static_cast<int>(rng() % d.num_images);
      }
      const size_t out_n = static_cast<size_t>(d.num_boxes) * d.pooled_h * d.pooled_w * d.channels;
      std::vector<float> grad(out_n);
      for (auto& v : grad) v = normal(rng);

      std::vector<float> cpu_out(out_n), gpu_out(out_n), cpu_df(f.size()), gpu_df(f.size());
      CpuForward(f, b, idx, d, &cpu_out);
      CpuBackward(grad, b, idx, d, &cpu_df);

      float *df = ToDevice(f), *db = ToDevice(b), *dg = ToDevice(grad), *dout, *ddf;
      int* di = ToDevice(idx);
      CHECK(cudaMalloc(&dout, out_n * sizeof(float)));
      CHECK(cudaMalloc(&ddf, f.size() * sizeof(float)));
      const char* e1 = LaunchRoiAlignForwardGpu(df, db, di, d.num_images, d.height, d.width,
                                                d.channels, d.num_boxes, d.pooled_h, d.pooled_w,
                                                d.spatial_scale, ratio, aligned, dout, nullptr);
      const char* e2 = LaunchRoiAlignBackwardGpu(dg, db, di, d.num_images, d.height, d.width,
                                                 d.channels, d.num_boxes, d.pooled_h, d.pooled_w,
                                                 d.spatial_scale, ratio, aligned, ddf, nullptr);
      if (e1[0] || e2[0]) {
        std::fprintf(stderr, "launch failed: %s %s\n", e1, e2);
        return 2;
      }
      CHECK(cudaDeviceSynchronize());
      CHECK(cudaMemcpy(gpu_out.data(), dout, out_n * sizeof(float), cudaMemcpyDeviceToHost));
      CHECK(cudaMemcpy(gpu_df.data(), ddf, f.size() * sizeof(float), cudaMemcpyDeviceToHost));
      double max_out = 0, max_df = 0;
      for (size_t i = 0; i < out_n; ++i) max_out = std::fmax(max_out, std::fabs(cpu_out[i] - gpu_out[i]));
      for (size_t i = 0; i < f.size(); ++i) max_df = std::fmax(max_df, std::fabs(cpu_df[i] - gpu_df[i]));
      const bool ok = max_out <= 1e-4 && max_df <= 1e-4;
      failures += !ok;
      std::printf("sampling_ratio=%d aligned=%d  forward max|diff| %.3g  backward max|diff| %.3g  %s\n",
                  ratio, aligned, max_out, max_df, ok ? "ok" : "FAIL");
      cudaFree(df); cudaFree(db); cudaFree(dg); cudaFree(di); cudaFree(dout); cudaFree(ddf);
    }
  }
  return failures ? 1 : 0;
}
