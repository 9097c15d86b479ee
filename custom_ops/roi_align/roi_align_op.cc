// RoIAlign as a TensorFlow custom op: registration, shape functions, CPU kernels and
// (when built with -DMRCNN_WITH_CUDA) the GPU kernel registrations.
//
// Ops:
//   MrcnnRoiAlign(features [N,H,W,C] f32, boxes [K,4] f32 (y1,x1,y2,x2),
//                 box_indices [K] i32) -> output [K,ph,pw,C]
//   MrcnnRoiAlignGrad(grads [K,ph,pw,C], boxes, box_indices, features) -> [N,H,W,C]
//     (only the shape of `features` is read.)
// Attrs: pooled_height, pooled_width, spatial_scale, sampling_ratio (<= 0 adaptive),
//        aligned. Math in roi_align_math.h (shared with the CUDA kernels).
//
// CPU kernels use that RoIAlign is separable (the sample lattice and the bilinear and
// border rules factor per axis): per box, sparse per-axis weights Ay[py][row] and
// Ax[px][col] (each the bin's samples' AxisTap weights / grid, merged per pixel) give
// out[py, px] = sum_{row, col} Ay[py][row] Ax[px][col] f[row, col], evaluated in two
// passes (rows first, then columns) -- fewer channel-vector operations than 4 taps per
// sample whenever samples share pixels. All innermost loops run over the contiguous
// NHWC channels with `#pragma omp simd` (built with -fopenmp-simd: no OpenMP runtime).
// CPU forward: Shard (TensorFlow's intra-op thread pool) over the boxes.
// CPU backward: no write races and no atomics. The gradient is partitioned into
// disjoint (image, band of rows) slices; each shard walks the boxes of its image (in
// input order) that reach its rows and accumulates only into those rows, running the
// adjoint of the two passes. The result is deterministic (independent of the thread count) and
// needs no per-thread copies of the gradient.
#include <algorithm>
#include <cstring>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "roi_align_math.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/platform/threadpool.h"
#include "tensorflow/core/util/work_sharder.h"

#if MRCNN_WITH_CUDA
#include "tensorflow/core/framework/device_base.h"
#include "xla/stream_executor/stream.h"
#endif

namespace mrcnn {
namespace roi_align {

using ::tensorflow::DEVICE_CPU;
using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using Status = ::absl::Status;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;
namespace shape_inference = ::tensorflow::shape_inference;

#if MRCNN_WITH_CUDA
// Defined in roi_align_kernels.cu.cc; return an empty string on success, else the
// CUDA error text.
const char* LaunchRoiAlignForwardGpu(const float* features, const float* boxes,
                                     const int* box_indices, int num_images, int height,
                                     int width, int channels, int num_boxes, int pooled_h,
                                     int pooled_w, float spatial_scale, int sampling_ratio,
                                     bool aligned, float* output, void* stream);
const char* LaunchRoiAlignBackwardGpu(const float* grads, const float* boxes,
                                      const int* box_indices, int num_images, int height,
                                      int width, int channels, int num_boxes, int pooled_h,
                                      int pooled_w, float spatial_scale, int sampling_ratio,
                                      bool aligned, float* grad_features, void* stream);
#endif

namespace {

Status SharedShapeChecks(shape_inference::InferenceContext* c, int boxes_input,
                         shape_inference::DimensionHandle* num_boxes) {
  shape_inference::ShapeHandle boxes, indices;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(boxes_input), 2, &boxes));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(boxes_input + 1), 1, &indices));
  shape_inference::DimensionHandle unused;
  TF_RETURN_IF_ERROR(c->WithValue(c->Dim(boxes, 1), 4, &unused));
  TF_RETURN_IF_ERROR(c->Merge(c->Dim(boxes, 0), c->Dim(indices, 0), num_boxes));
  return ::absl::OkStatus();
}

}  // namespace

REGISTER_OP("MrcnnRoiAlign")
    .Input("features: float")
    .Input("boxes: float")
    .Input("box_indices: int32")
    .Output("output: float")
    .Attr("pooled_height: int >= 1")
    .Attr("pooled_width: int >= 1")
    .Attr("spatial_scale: float = 1.0")
    .Attr("sampling_ratio: int = 0")
    .Attr("aligned: bool = true")
    .SetShapeFn([](shape_inference::InferenceContext* c) -> Status {
      shape_inference::ShapeHandle features;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 4, &features));
      shape_inference::DimensionHandle num_boxes;
      TF_RETURN_IF_ERROR(SharedShapeChecks(c, 1, &num_boxes));
      int ph, pw;
      TF_RETURN_IF_ERROR(c->GetAttr("pooled_height", &ph));
      TF_RETURN_IF_ERROR(c->GetAttr("pooled_width", &pw));
      c->set_output(0, c->MakeShape({num_boxes, ph, pw, c->Dim(features, 3)}));
      return ::absl::OkStatus();
    })
    .Doc("RoIAlign (torchvision semantics) on NHWC features; see roi_align_math.h.");

REGISTER_OP("MrcnnRoiAlignGrad")
    .Input("grads: float")
    .Input("boxes: float")
    .Input("box_indices: int32")
    .Input("features: float")
    .Output("grad_features: float")
    .Attr("pooled_height: int >= 1")
    .Attr("pooled_width: int >= 1")
    .Attr("spatial_scale: float = 1.0")
    .Attr("sampling_ratio: int = 0")
    .Attr("aligned: bool = true")
    .SetShapeFn([](shape_inference::InferenceContext* c) -> Status {
      shape_inference::ShapeHandle grads, features;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 4, &grads));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(3), 4, &features));
      shape_inference::DimensionHandle num_boxes;
      TF_RETURN_IF_ERROR(SharedShapeChecks(c, 1, &num_boxes));
      shape_inference::DimensionHandle unused;
      TF_RETURN_IF_ERROR(c->Merge(c->Dim(grads, 0), num_boxes, &unused));
      TF_RETURN_IF_ERROR(c->Merge(c->Dim(grads, 3), c->Dim(features, 3), &unused));
      c->set_output(0, features);
      return ::absl::OkStatus();
    })
    .Doc("Gradient of MrcnnRoiAlign with respect to its features.");

namespace {

struct Attrs {
  int pooled_h = 1;
  int pooled_w = 1;
  float spatial_scale = 1.0f;
  int sampling_ratio = 0;
  bool aligned = true;

  void Read(OpKernelConstruction* ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("pooled_height", &pooled_h));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("pooled_width", &pooled_w));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("spatial_scale", &spatial_scale));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("sampling_ratio", &sampling_ratio));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("aligned", &aligned));
  }
};

// Validates features/boxes/indices shapes; fills the sizes.
Status CheckInputs(const TensorShape& features, const Tensor& boxes, const Tensor& indices,
                   int64_t* n, int64_t* h, int64_t* w, int64_t* c, int64_t* k) {
  if (features.dims() != 4) {
    return ::absl::InvalidArgumentError(::absl::StrCat("features must be [N, H, W, C], got ", features.DebugString()));
  }
  if (boxes.dims() != 2 || boxes.dim_size(1) != 4) {
    return ::absl::InvalidArgumentError(::absl::StrCat("boxes must be [K, 4], got ", boxes.shape().DebugString()));
  }
  if (indices.dims() != 1 || indices.dim_size(0) != boxes.dim_size(0)) {
    return ::absl::InvalidArgumentError(::absl::StrCat("box_indices must be [K] with K = ", boxes.dim_size(0), ", got ",
                           indices.shape().DebugString()));
  }
  *n = features.dim_size(0);
  *h = features.dim_size(1);
  *w = features.dim_size(2);
  *c = features.dim_size(3);
  *k = boxes.dim_size(0);
  if (*h * *w * *c >= (int64_t{1} << 31)) {
    return ::absl::InvalidArgumentError(::absl::StrCat("one feature image must have < 2^31 elements"));
  }
  return ::absl::OkStatus();
}

Status CheckIndicesOnHost(const int32_t* idx, int64_t k, int64_t n) {
  for (int64_t i = 0; i < k; ++i) {
    if (idx[i] < 0 || idx[i] >= n) {
      return ::absl::InvalidArgumentError(::absl::StrCat("box_indices[", i, "] = ", idx[i], " is not in [0, ", n, ")"));
    }
  }
  return ::absl::OkStatus();
}

// Per-axis sparse weights of one box: for each output bin p along the axis, the
// (pixel, weight) pairs A[p][pixel] = (1 / grid) * sum over the bin's samples of the
// sample's AxisTap weights. Since the sampling lattice and the bilinear/border rules
// are separable, out[py, px] = sum_{r, c} Ay[py][r] * Ax[px][c] * f[r, c]; the CPU
// kernels evaluate that in two passes, which needs far fewer channel-vector
// operations than 4 taps per sample when samples share pixels (small bins).
struct AxisWeights {
  std::vector<int> begin;     // entries of bin p: [begin[p], begin[p + 1])
  std::vector<int> pixel;
  std::vector<float> weight;
  int lo = 0, hi = -1;  // pixel range touched (hi < lo when none)

  void Build(float start, float bin, int grid, int pooled, int size) {
    begin.assign(pooled + 1, 0);
    pixel.clear();
    weight.clear();
    lo = size;
    hi = -1;
    const float inv = grid > 0 ? 1.0f / static_cast<float>(grid) : 0.0f;
    for (int p = 0; p < pooled; ++p) {
      const int first = static_cast<int>(pixel.size());
      for (int i = 0; i < grid; ++i) {
        int l, h;
        float wl, wh;
        if (!AxisTap(SamplePos(start, bin, p, i, grid), size, &l, &h, &wl, &wh)) continue;
        Add(first, l, wl * inv);
        Add(first, h, wh * inv);
      }
      begin[p + 1] = static_cast<int>(pixel.size());
    }
  }

 private:
  void Add(int first, int px, float w) {
    if (w == 0.0f) return;  // clamped neighbour (weight 0)
    // Samples are monotonic, so a repeated pixel is one of the last two entries.
    const int n = static_cast<int>(pixel.size());
    for (int j = n - 1; j >= first && j >= n - 2; --j) {
      if (pixel[j] == px) {
        weight[j] += w;
        return;
      }
    }
    pixel.push_back(px);
    weight.push_back(w);
    lo = std::min(lo, px);
    hi = std::max(hi, px);
  }
};

// dst[c] (+)= sum_j w[j] * src_j[c], c in [0, len); the first term assigns.
inline void Axpy(float w, const float* __restrict src, float* __restrict dst, int64_t len) {
#pragma omp simd
  for (int64_t c = 0; c < len; ++c) dst[c] += w * src[c];
}

inline void Scale(float w, const float* __restrict src, float* __restrict dst, int64_t len) {
#pragma omp simd
  for (int64_t c = 0; c < len; ++c) dst[c] = w * src[c];
}

class RoiAlignCpuOp : public OpKernel {
 public:
  explicit RoiAlignCpuOp(OpKernelConstruction* ctx) : OpKernel(ctx) { attrs_.Read(ctx); }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& features = ctx->input(0);
    const Tensor& boxes = ctx->input(1);
    const Tensor& indices = ctx->input(2);
    int64_t n, h, w, c, k;
    OP_REQUIRES_OK(ctx, CheckInputs(features.shape(), boxes, indices, &n, &h, &w, &c, &k));
    const int32_t* idx = indices.flat<int32_t>().data();
    OP_REQUIRES_OK(ctx, CheckIndicesOnHost(idx, k, n));
    Tensor* output = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(
                            0, TensorShape({k, attrs_.pooled_h, attrs_.pooled_w, c}), &output));
    if (output->NumElements() == 0) return;

    const float* feat = features.flat<float>().data();
    const float* box = boxes.flat<float>().data();
    float* out = output->flat<float>().data();
    const Attrs a = attrs_;
    const int ih = static_cast<int>(h), iw = static_cast<int>(w);
    const int64_t image_size = h * w * c;
    const int64_t box_size = int64_t{a.pooled_h} * a.pooled_w * c;

    // Shards of boxes. Pass 1: T[py][col] = sum_r Ay[py][r] * f[r, col] for the columns
    // the box touches; pass 2: out[py][px] = sum_col Ax[px][col] * T[py][col].
    auto work = [&](int64_t begin, int64_t end) {
      AxisWeights ay, ax;
      std::vector<float> t;
      for (int64_t kk = begin; kk < end; ++kk) {
        const RoiGeometry g = ComputeGeometry(box + 4 * kk, a.pooled_h, a.pooled_w,
                                              a.spatial_scale, a.sampling_ratio, a.aligned);
        float* dst = out + kk * box_size;
        std::fill(dst, dst + box_size, 0.0f);
        if (g.grid_h <= 0 || g.grid_w <= 0) continue;
        ay.Build(g.start_y, g.bin_h, g.grid_h, a.pooled_h, ih);
        ax.Build(g.start_x, g.bin_w, g.grid_w, a.pooled_w, iw);
        if (ay.hi < ay.lo || ax.hi < ax.lo) continue;
        const int cols = ax.hi - ax.lo + 1;
        t.resize(static_cast<size_t>(cols) * c);
        const float* image = feat + idx[kk] * image_size;
        for (int py = 0; py < a.pooled_h; ++py) {
          const int e0 = ay.begin[py], e1 = ay.begin[py + 1];
          if (e0 == e1) continue;
          for (int col = 0; col < cols; ++col) {
            float* tc = t.data() + static_cast<int64_t>(col) * c;
            const int64_t x = ax.lo + col;
            Scale(ay.weight[e0], image + (ay.pixel[e0] * w + x) * c, tc, c);
            for (int e = e0 + 1; e < e1; ++e) {
              Axpy(ay.weight[e], image + (ay.pixel[e] * w + x) * c, tc, c);
            }
          }
          float* row = dst + int64_t{py} * a.pooled_w * c;
          for (int px = 0; px < a.pooled_w; ++px) {
            for (int e = ax.begin[px]; e < ax.begin[px + 1]; ++e) {
              Axpy(ax.weight[e], t.data() + int64_t{ax.pixel[e] - ax.lo} * c, row + px * c, c);
            }
          }
        }
      }
    };
    const int64_t samples = a.sampling_ratio > 0 ? a.sampling_ratio : 2;
    const int64_t cost = int64_t{a.pooled_h} * a.pooled_w * (2 * samples + 2) * (2 * c + 10);
    auto* workers = ctx->device()->tensorflow_cpu_worker_threads();
    ::tensorflow::Shard(workers->num_threads, workers->workers, k, cost, work);
  }

 private:
  Attrs attrs_;
};

class RoiAlignGradCpuOp : public OpKernel {
 public:
  explicit RoiAlignGradCpuOp(OpKernelConstruction* ctx) : OpKernel(ctx) { attrs_.Read(ctx); }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& grads = ctx->input(0);
    const Tensor& boxes = ctx->input(1);
    const Tensor& indices = ctx->input(2);
    const TensorShape& fshape = ctx->input(3).shape();
    int64_t n, h, w, c, k;
    OP_REQUIRES_OK(ctx, CheckInputs(fshape, boxes, indices, &n, &h, &w, &c, &k));
    OP_REQUIRES(ctx,
                grads.dims() == 4 && grads.dim_size(0) == k &&
                    grads.dim_size(1) == attrs_.pooled_h &&
                    grads.dim_size(2) == attrs_.pooled_w && grads.dim_size(3) == c,
                ::absl::InvalidArgumentError(::absl::StrCat(
                    "grads must be [K, ph, pw, C], got ", grads.shape().DebugString())));
    const int32_t* idx = indices.flat<int32_t>().data();
    OP_REQUIRES_OK(ctx, CheckIndicesOnHost(idx, k, n));
    Tensor* output = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, fshape, &output));
    if (output->NumElements() == 0) return;

    // Boxes grouped by image, each group in input order (a counting sort).
    std::vector<int64_t> start(n + 1, 0), order(k);
    for (int64_t i = 0; i < k; ++i) ++start[idx[i] + 1];
    for (int64_t i = 0; i < n; ++i) start[i + 1] += start[i];
    {
      std::vector<int64_t> fill(start.begin(), start.end() - 1);
      for (int64_t i = 0; i < k; ++i) order[fill[idx[i]]++] = i;
    }

    // Shards: disjoint (image, band of rows) slices of the gradient, so no two threads
    // ever write the same element; ~4 shards per worker thread. (Splitting by channel
    // blocks instead was measured 3-4x slower: strided short vectors.) A box that spans
    // two bands is visited by both, each writing only its own rows.
    auto* workers = ctx->device()->tensorflow_cpu_worker_threads();
    const int64_t target = 4 * std::max(1, workers->num_threads);
    const int64_t bands = std::min<int64_t>(h, std::max<int64_t>(1, (target + n - 1) / n));

    const float* grad = grads.flat<float>().data();
    const float* box = boxes.flat<float>().data();
    float* out = output->flat<float>().data();
    const Attrs a = attrs_;
    const int ih = static_cast<int>(h), iw = static_cast<int>(w);

    // Per box, the adjoint of the forward's two passes:
    // dT[col] = sum_px Ax[px][col] * g[py][px]; df[r, col] += Ay[py][r] * dT[col].
    auto work = [&](int64_t begin, int64_t end) {
      AxisWeights ay, ax;
      std::vector<float> dt;
      for (int64_t shard = begin; shard < end; ++shard) {
        const int64_t img = shard / bands;
        const int r_lo = static_cast<int>((shard % bands) * h / bands);
        const int r_hi = static_cast<int>((shard % bands + 1) * h / bands);
        float* dst = out + img * h * w * c;
        std::fill(dst + r_lo * w * c, dst + r_hi * w * c, 0.0f);
        for (int64_t s = start[img]; s < start[img + 1]; ++s) {
          const int64_t kk = order[s];
          const RoiGeometry g = ComputeGeometry(box + 4 * kk, a.pooled_h, a.pooled_w,
                                                a.spatial_scale, a.sampling_ratio, a.aligned);
          if (g.grid_h <= 0 || g.grid_w <= 0) continue;
          ay.Build(g.start_y, g.bin_h, g.grid_h, a.pooled_h, ih);
          if (ay.hi < r_lo || ay.lo >= r_hi) continue;
          ax.Build(g.start_x, g.bin_w, g.grid_w, a.pooled_w, iw);
          if (ax.hi < ax.lo) continue;
          const int cols = ax.hi - ax.lo + 1;
          dt.resize(static_cast<size_t>(cols) * c);
          for (int py = 0; py < a.pooled_h; ++py) {
            const int e0 = ay.begin[py], e1 = ay.begin[py + 1];
            bool in_band = false;
            for (int e = e0; e < e1; ++e) in_band |= ay.pixel[e] >= r_lo && ay.pixel[e] < r_hi;
            if (!in_band) continue;
            std::fill(dt.begin(), dt.end(), 0.0f);
            const float* gy = grad + (kk * a.pooled_h + py) * a.pooled_w * c;
            for (int px = 0; px < a.pooled_w; ++px) {
              for (int e = ax.begin[px]; e < ax.begin[px + 1]; ++e) {
                Axpy(ax.weight[e], gy + px * c, dt.data() + int64_t{ax.pixel[e] - ax.lo} * c, c);
              }
            }
            for (int e = e0; e < e1; ++e) {
              if (ay.pixel[e] < r_lo || ay.pixel[e] >= r_hi) continue;
              float* row = dst + (ay.pixel[e] * w + ax.lo) * c;
              for (int col = 0; col < cols; ++col) {
                Axpy(ay.weight[e], dt.data() + int64_t{col} * c, row + col * c, c);
              }
            }
          }
        }
      }
    };
    const int64_t per_shard = std::max<int64_t>(1, k / std::max<int64_t>(n * bands, 1));
    const int64_t cost = h * w * c / bands + per_shard * a.pooled_h * a.pooled_w * 8 * (2 * c + 10);
    ::tensorflow::Shard(workers->num_threads, workers->workers, n * bands, cost, work);
  }

 private:
  Attrs attrs_;
};

REGISTER_KERNEL_BUILDER(Name("MrcnnRoiAlign").Device(DEVICE_CPU), RoiAlignCpuOp);
REGISTER_KERNEL_BUILDER(Name("MrcnnRoiAlignGrad").Device(DEVICE_CPU), RoiAlignGradCpuOp);

#if MRCNN_WITH_CUDA
using ::tensorflow::DEVICE_GPU;

void* GpuStream(OpKernelContext* ctx) {
  auto* dc = ctx->op_device_context();
  if (dc == nullptr || dc->stream() == nullptr) return nullptr;
  return dc->stream()->platform_specific_handle().stream;
}

class RoiAlignGpuOp : public OpKernel {
 public:
  explicit RoiAlignGpuOp(OpKernelConstruction* ctx) : OpKernel(ctx) { attrs_.Read(ctx); }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& features = ctx->input(0);
    const Tensor& boxes = ctx->input(1);
    const Tensor& indices = ctx->input(2);
    int64_t n, h, w, c, k;
    OP_REQUIRES_OK(ctx, CheckInputs(features.shape(), boxes, indices, &n, &h, &w, &c, &k));
    Tensor* output = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(
                            0, TensorShape({k, attrs_.pooled_h, attrs_.pooled_w, c}), &output));
    if (output->NumElements() == 0) return;
    // Box indices out of [0, N) give zero rows on the GPU (not checked on the device).
    const char* err = LaunchRoiAlignForwardGpu(
        features.flat<float>().data(), boxes.flat<float>().data(),
        indices.flat<int32_t>().data(), n, h, w, c, k, attrs_.pooled_h, attrs_.pooled_w,
        attrs_.spatial_scale, attrs_.sampling_ratio, attrs_.aligned,
        output->flat<float>().data(), GpuStream(ctx));
    OP_REQUIRES(ctx, err[0] == '\0', ::absl::InternalError(::absl::StrCat("MrcnnRoiAlign: ", err)));
  }

 private:
  Attrs attrs_;
};

class RoiAlignGradGpuOp : public OpKernel {
 public:
  explicit RoiAlignGradGpuOp(OpKernelConstruction* ctx) : OpKernel(ctx) { attrs_.Read(ctx); }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& grads = ctx->input(0);
    const Tensor& boxes = ctx->input(1);
    const Tensor& indices = ctx->input(2);
    const TensorShape& fshape = ctx->input(3).shape();
    int64_t n, h, w, c, k;
    OP_REQUIRES_OK(ctx, CheckInputs(fshape, boxes, indices, &n, &h, &w, &c, &k));
    Tensor* output = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, fshape, &output));
    if (output->NumElements() == 0) return;
    // Zeroes the output, then atomically adds each sample's share (GPU only: the
    // float atomics make the summation order, and so the last bits, vary run to run).
    const char* err = LaunchRoiAlignBackwardGpu(
        grads.flat<float>().data(), boxes.flat<float>().data(),
        indices.flat<int32_t>().data(), n, h, w, c, k, attrs_.pooled_h, attrs_.pooled_w,
        attrs_.spatial_scale, attrs_.sampling_ratio, attrs_.aligned,
        output->flat<float>().data(), GpuStream(ctx));
    OP_REQUIRES(ctx, err[0] == '\0',
                ::absl::InternalError(::absl::StrCat("MrcnnRoiAlignGrad: ", err)));
  }

 private:
  Attrs attrs_;
};

REGISTER_KERNEL_BUILDER(Name("MrcnnRoiAlign").Device(DEVICE_GPU), RoiAlignGpuOp);
REGISTER_KERNEL_BUILDER(Name("MrcnnRoiAlignGrad").Device(DEVICE_GPU), RoiAlignGradGpuOp);
#endif  // MRCNN_WITH_CUDA

}  // namespace
}  // namespace roi_align
}  // namespace mrcnn
