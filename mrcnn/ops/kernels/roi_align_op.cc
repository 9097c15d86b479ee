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
// CPU kernels (details above RoiAlignCpuOp): RoIAlign is separable, so per box the
// output is Ay * f * Ax^T with sparse per-axis weights, evaluated in two passes over
// contiguous NHWC channel vectors, in the cheaper axis order per box. The geometry and
// weights are computed in baseline code; the channel loops are cloned for AVX-512,
// AVX2+FMA and baseline x86-64 (GCC target_clones, picked at load time), so the
// portable library uses the wide vectors where the CPU has them.
// CPU forward: ParallelFor (TensorFlow's intra-op pool) over blocks of boxes; every
// output element is written once. CPU backward: no write races and no atomics. The
// gradient rows (N * H of them) are cut into ranges of about equal estimated cost, a
// few per thread; each range is zeroed and then accumulated by one task, which walks
// its image's boxes in input order and runs the adjoint of the two passes in gather
// form for its rows only. Deterministic (independent of the thread count), and no
// per-thread copies of the gradient.
#include <algorithm>
#include <cmath>
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

// ------------------------------------------------------------------------ CPU kernels
//
// RoIAlign is separable: the sample lattice and the bilinear/border rules factor per
// axis, so per box out[py, px] = sum_{row, col} Ay[py][row] * Ax[px][col] * f[row, col]
// with sparse per-axis weights (AxisTable: each bin's samples' AxisTap weights / grid,
// merged per pixel). Both kernels evaluate that product in two passes whose innermost
// loops run over contiguous NHWC channel vectors, and pick per box the cheaper order:
//   x first: T[row][px] = sum_col Ax[px][col] f[row, col] (each feature row read once),
//            out[py] = sum_row Ay[py][row] T[row]          (rows of pw * C floats);
//   y first: U[col] = sum_row Ay[py][row] f[row, col]      (rows of cols * C floats),
//            out[py][px] = sum_col Ax[px][col] U[col].
// The backward runs the adjoint of the same passes in gather form (per pixel, its list
// of (bin, weight)), so each gradient element is read-modified-written once per box.
// The geometry and weights are computed in baseline code (identical on every CPU);
// only the channel loops (ForwardBox / BackwardBox) are cloned for AVX-512 / AVX2+FMA
// / baseline x86-64 and picked at load time (GCC function multiversioning, ifunc).

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11 && \
    defined(__GLIBC__) && !defined(MRCNN_NO_TARGET_CLONES)
#define MRCNN_CPU_CLONES \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define MRCNN_CPU_CLONES
#endif
#define MRCNN_ALWAYS_INLINE inline __attribute__((always_inline))

// Sparse weights of one box along one axis, both ways round:
//   by bin p:    entries [bin_begin[p], bin_begin[p + 1]) of (bin_pix, bin_w)
//   by pixel q:  entries [pix_begin[q], pix_begin[q + 1]) of (pix_bin, pix_w)
// Pixels are relative to `lo` (the first pixel touched); `extent` pixels are spanned
// (0 when the box touches none), `used` of them have entries.
struct AxisTable {
  std::vector<int> bin_begin, bin_pix, pix_begin, pix_bin;
  std::vector<float> bin_w, pix_w;
  int lo = 0, extent = 0, used = 0;

  int bin_entries() const { return bin_begin.back(); }

  void Build(float start, float bin, int grid, int pooled, int size) {
    bin_begin.assign(pooled + 1, 0);
    bin_pix.clear();
    bin_w.clear();
    int lo_px = size, hi_px = -1;
    const float inv = grid > 0 ? 1.0f / static_cast<float>(grid) : 0.0f;
    for (int p = 0; p < pooled; ++p) {
      const int first = static_cast<int>(bin_pix.size());
      for (int i = 0; i < grid; ++i) {
        int l, h;
        float wl, wh;
        if (!AxisTap(SamplePos(start, bin, p, i, grid), size, &l, &h, &wl, &wh)) continue;
        Add(first, l, wl * inv, &lo_px, &hi_px);
        Add(first, h, wh * inv, &lo_px, &hi_px);
      }
      bin_begin[p + 1] = static_cast<int>(bin_pix.size());
    }
    lo = hi_px >= lo_px ? lo_px : 0;
    extent = hi_px >= lo_px ? hi_px - lo_px + 1 : 0;
    for (int& px : bin_pix) px -= lo;
    // Transpose (counting sort by pixel; bins stay in increasing order per pixel).
    pix_begin.assign(extent + 1, 0);
    for (int px : bin_pix) ++pix_begin[px + 1];
    used = 0;
    for (int q = 0; q < extent; ++q) {
      used += pix_begin[q + 1] > 0;
      pix_begin[q + 1] += pix_begin[q];
    }
    pix_bin.resize(bin_pix.size());
    pix_w.resize(bin_pix.size());
    std::vector<int>& fill = scratch_;
    fill.assign(pix_begin.begin(), pix_begin.end() - 1);
    for (int p = 0; p < pooled; ++p) {
      for (int e = bin_begin[p]; e < bin_begin[p + 1]; ++e) {
        const int at = fill[bin_pix[e]]++;
        pix_bin[at] = p;
        pix_w[at] = bin_w[e];
      }
    }
  }

 private:
  std::vector<int> scratch_;

  void Add(int first, int px, float w, int* lo_px, int* hi_px) {
    if (w == 0.0f) return;  // clamped neighbour (weight 0)
    // Samples are monotonic, so a repeated pixel is one of the last two entries.
    const int n = static_cast<int>(bin_pix.size());
    for (int j = n - 1; j >= first && j >= n - 2; --j) {
      if (bin_pix[j] == px) {
        bin_w[j] += w;
        return;
      }
    }
    bin_pix.push_back(px);
    bin_w.push_back(w);
    *lo_px = std::min(*lo_px, px);
    *hi_px = std::max(*hi_px, px);
  }
};

// Raw view of an AxisTable for the cloned kernels.
struct AxisView {
  const int* bin_begin;
  const int* bin_pix;
  const float* bin_w;
  const int* pix_begin;
  const int* pix_bin;
  const float* pix_w;
  int lo, extent;

  explicit AxisView(const AxisTable& t)
      : bin_begin(t.bin_begin.data()), bin_pix(t.bin_pix.data()), bin_w(t.bin_w.data()),
        pix_begin(t.pix_begin.data()), pix_bin(t.pix_bin.data()), pix_w(t.pix_w.data()),
        lo(t.lo), extent(t.extent) {}
};

// dst[i] (=, or += with kAcc) sum_{j < K} w[j] * (base + idx[j] * stride)[i], i < len.
template <int K, bool kAcc>
MRCNN_ALWAYS_INLINE void CombineK(const int* idx, const float* w, const float* base,
                                  int64_t stride, float* __restrict dst, int64_t len) {
  const float* __restrict s0 = base + idx[0] * stride;
  const float* __restrict s1 = base + idx[K > 1 ? 1 : 0] * stride;
  const float* __restrict s2 = base + idx[K > 2 ? 2 : 0] * stride;
  const float* __restrict s3 = base + idx[K > 3 ? 3 : 0] * stride;
  const float w0 = w[0], w1 = w[K > 1 ? 1 : 0], w2 = w[K > 2 ? 2 : 0],
              w3 = w[K > 3 ? 3 : 0];
#pragma omp simd
  for (int64_t i = 0; i < len; ++i) {
    float v = w0 * s0[i];
    if constexpr (K > 1) v += w1 * s1[i];
    if constexpr (K > 2) v += w2 * s2[i];
    if constexpr (K > 3) v += w3 * s3[i];
    if constexpr (kAcc) {
      dst[i] += v;
    } else {
      dst[i] = v;
    }
  }
}

template <bool kAcc>
MRCNN_ALWAYS_INLINE void CombineHead(int m, const int* idx, const float* w, const float* base,
                                     int64_t stride, float* __restrict dst, int64_t len) {
  switch (m) {
    case 1: CombineK<1, kAcc>(idx, w, base, stride, dst, len); break;
    case 2: CombineK<2, kAcc>(idx, w, base, stride, dst, len); break;
    case 3: CombineK<3, kAcc>(idx, w, base, stride, dst, len); break;
    default: CombineK<4, kAcc>(idx, w, base, stride, dst, len); break;
  }
}

// dst (=, or += with kAcc) sum_{j < n} w[j] * row(idx[j]); n == 0 zeroes (or keeps) dst.
template <bool kAcc>
MRCNN_ALWAYS_INLINE void Combine(int n, const int* idx, const float* w, const float* base,
                                 int64_t stride, float* __restrict dst, int64_t len) {
  if (n <= 0) {
    if (!kAcc) std::memset(dst, 0, sizeof(float) * len);
    return;
  }
  const int m = n < 4 ? n : 4;
  CombineHead<kAcc>(m, idx, w, base, stride, dst, len);
  for (int e = m; e < n; e += 4) {
    CombineHead<true>(std::min(4, n - e), idx + e, w + e, base, stride, dst, len);
  }
}

// One box's output [ph][pw][C] from its image (NHWC, row stride width * c). Scratch:
// x first, ay.extent * pw * c floats; y first, ax.extent * c floats.
MRCNN_CPU_CLONES
void ForwardBox(const AxisView& ay, const AxisView& ax, bool x_first, const float* image,
                int64_t width, int64_t c, int ph, int pw, float* scratch, float* out) {
  const int64_t row_len = pw * c;
  if (x_first) {
    for (int q = 0; q < ay.extent; ++q) {
      if (ay.pix_begin[q] == ay.pix_begin[q + 1]) continue;  // row not read
      const float* frow = image + ((ay.lo + q) * width + ax.lo) * c;
      float* trow = scratch + q * row_len;
      for (int px = 0; px < pw; ++px) {
        const int b = ax.bin_begin[px];
        Combine<false>(ax.bin_begin[px + 1] - b, ax.bin_pix + b, ax.bin_w + b, frow, c,
                       trow + px * c, c);
      }
    }
    for (int py = 0; py < ph; ++py) {
      const int b = ay.bin_begin[py];
      Combine<false>(ay.bin_begin[py + 1] - b, ay.bin_pix + b, ay.bin_w + b, scratch, row_len,
                     out + py * row_len, row_len);
    }
  } else {
    const int64_t span = ax.extent * c;
    const float* base = image + (ay.lo * width + ax.lo) * c;
    for (int py = 0; py < ph; ++py) {
      const int b = ay.bin_begin[py];
      Combine<false>(ay.bin_begin[py + 1] - b, ay.bin_pix + b, ay.bin_w + b, base, width * c,
                     scratch, span);
      for (int px = 0; px < pw; ++px) {
        const int bx = ax.bin_begin[px];
        Combine<false>(ax.bin_begin[px + 1] - bx, ax.bin_pix + bx, ax.bin_w + bx, scratch, c,
                       out + (py * pw + px) * c, c);
      }
    }
  }
}

// Adds one box's contribution to the gradient rows [r0, r1) of its image (image_grad:
// NHWC, row stride width * c) from its upstream gradient `grad` [ph][pw][C]. Scratch:
// x first, pw * c floats; y first, ph * ax.extent * c floats.
MRCNN_CPU_CLONES
void BackwardBox(const AxisView& ay, const AxisView& ax, bool x_first, const float* grad,
                 int64_t width, int64_t c, int ph, int pw, int r0, int r1, float* scratch,
                 float* image_grad) {
  const int64_t row_len = pw * c;
  const int q0 = std::max(r0 - ay.lo, 0), q1 = std::min(r1 - ay.lo, ay.extent);
  if (q0 >= q1) return;
  if (x_first) {
    // dT = sum_py Ay[py][row] g[py] (pw * C); df[row, col] += sum_px Ax[px][col] dT[px].
    for (int q = q0; q < q1; ++q) {
      const int b = ay.pix_begin[q], n = ay.pix_begin[q + 1] - b;
      if (n == 0) continue;
      Combine<false>(n, ay.pix_bin + b, ay.pix_w + b, grad, row_len, scratch, row_len);
      float* drow = image_grad + ((ay.lo + q) * width + ax.lo) * c;
      for (int col = 0; col < ax.extent; ++col) {
        const int bx = ax.pix_begin[col], nx = ax.pix_begin[col + 1] - bx;
        if (nx == 0) continue;
        Combine<true>(nx, ax.pix_bin + bx, ax.pix_w + bx, scratch, c, drow + col * c, c);
      }
    }
  } else {
    // dU[py][col] = sum_px Ax[px][col] g[py][px] for the bins these rows read;
    // df[row, :] += sum_py Ay[py][row] dU[py] (rows of extent * C floats).
    const int64_t span = ax.extent * c;
    const int e0 = ay.pix_begin[q0], e1 = ay.pix_begin[q1];
    if (e0 == e1) return;
    int p_lo = ph, p_hi = -1;
    for (int e = e0; e < e1; ++e) {
      p_lo = std::min(p_lo, ay.pix_bin[e]);
      p_hi = std::max(p_hi, ay.pix_bin[e]);
    }
    for (int py = p_lo; py <= p_hi; ++py) {
      const float* gy = grad + py * row_len;
      float* u = scratch + py * span;
      for (int col = 0; col < ax.extent; ++col) {
        const int bx = ax.pix_begin[col];
        Combine<false>(ax.pix_begin[col + 1] - bx, ax.pix_bin + bx, ax.pix_w + bx, gy, c,
                       u + col * c, c);
      }
    }
    for (int q = q0; q < q1; ++q) {
      const int b = ay.pix_begin[q], n = ay.pix_begin[q + 1] - b;
      if (n == 0) continue;
      Combine<true>(n, ay.pix_bin + b, ay.pix_w + b, scratch, span,
                    image_grad + ((ay.lo + q) * width + ax.lo) * c, span);
    }
  }
}

// Per-thread scratch (TensorFlow's pool threads live as long as the process), so that
// large scratch buffers are not reallocated (and page-faulted) box after box.
float* Scratch(int64_t floats) {
  static thread_local std::vector<float> buffer;
  if (static_cast<int64_t>(buffer.size()) < floats) buffer.resize(floats);
  return buffer.data();
}

using ThreadPool = ::tensorflow::thread::ThreadPool;

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

    // Every output element is written exactly once (no zero-fill beforehand).
    auto work = [&](int64_t begin, int64_t end) {
      AxisTable ty, tx;
      for (int64_t kk = begin; kk < end; ++kk) {
        const RoiGeometry g = ComputeGeometry(box + 4 * kk, a.pooled_h, a.pooled_w,
                                              a.spatial_scale, a.sampling_ratio, a.aligned);
        float* dst = out + kk * box_size;
        if (g.grid_h <= 0 || g.grid_w <= 0) {
          std::memset(dst, 0, sizeof(float) * box_size);
          continue;
        }
        ty.Build(g.start_y, g.bin_h, g.grid_h, a.pooled_h, ih);
        tx.Build(g.start_x, g.bin_w, g.grid_w, a.pooled_w, iw);
        if (ty.extent == 0 || tx.extent == 0) {
          std::memset(dst, 0, sizeof(float) * box_size);
          continue;
        }
        // Cost of each order in channel-vector operations.
        const int64_t x_first_cost =
            int64_t{ty.used} * tx.bin_entries() + int64_t{ty.bin_entries()} * a.pooled_w;
        const int64_t y_first_cost =
            int64_t{ty.bin_entries()} * tx.extent + int64_t{a.pooled_h} * tx.bin_entries();
        const bool x_first = x_first_cost <= y_first_cost;
        float* scratch =
            Scratch(x_first ? int64_t{ty.extent} * a.pooled_w * c : int64_t{tx.extent} * c);
        ForwardBox(AxisView(ty), AxisView(tx), x_first, feat + idx[kk] * image_size, w, c,
                   a.pooled_h, a.pooled_w, scratch, dst);
      }
    };
    ThreadPool* pool = ctx->device()->tensorflow_cpu_worker_threads()->workers;
    const int64_t threads = std::max(1, pool->NumThreads());
    // Small fixed blocks of boxes, handed out dynamically (box costs vary a lot).
    const int64_t block = std::max<int64_t>(1, std::min<int64_t>(8, k / (8 * threads)));
    pool->ParallelFor(k, ThreadPool::SchedulingParams::Fixed(block), work);
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

    const float* grad = grads.flat<float>().data();
    const float* box = boxes.flat<float>().data();
    float* out = output->flat<float>().data();
    const Attrs a = attrs_;
    const int ih = static_cast<int>(h), iw = static_cast<int>(w);
    const int64_t box_size = int64_t{a.pooled_h} * a.pooled_w * c;

    // Boxes grouped by image, each group in input order (a counting sort), with their
    // geometry and a conservative range of rows they can touch ([row_lo, row_hi),
    // empty for boxes without samples).
    std::vector<int64_t> start(n + 1, 0), order(k);
    for (int64_t i = 0; i < k; ++i) ++start[idx[i] + 1];
    for (int64_t i = 0; i < n; ++i) start[i + 1] += start[i];
    {
      std::vector<int64_t> fill(start.begin(), start.end() - 1);
      for (int64_t i = 0; i < k; ++i) order[fill[idx[i]]++] = i;
    }
    std::vector<RoiGeometry> geom(k);
    std::vector<int> row_lo(k), row_hi(k);
    // Row costs (channel-vector operations) over the N * H rows of the gradient, as a
    // difference array: zeroing each row, plus per box and row ~ (pw + box columns).
    std::vector<double> row_cost(n * h + 1, 0.0);
    for (int64_t i = 0; i < k; ++i) {
      const RoiGeometry g = ComputeGeometry(box + 4 * i, a.pooled_h, a.pooled_w,
                                            a.spatial_scale, a.sampling_ratio, a.aligned);
      geom[i] = g;
      row_lo[i] = row_hi[i] = 0;
      if (g.grid_h <= 0 || g.grid_w <= 0) continue;
      // Samples lie in [start, start + roi] and read rows floor(max(v, 0)) and the next;
      // one row of margin each side covers rounding.
      const float y_end = g.start_y + g.bin_h * a.pooled_h;
      const float x_end = g.start_x + g.bin_w * a.pooled_w;
      if (y_end < -1.0f || g.start_y > static_cast<float>(h) || x_end < -1.0f ||
          g.start_x > static_cast<float>(w)) {
        continue;  // every sample out of range
      }
      const int lo = std::max<int>(0, static_cast<int>(std::floor(std::max(g.start_y, 0.0f))) - 1);
      const int hi = std::min<int>(
          ih, static_cast<int>(std::floor(std::min(std::max(y_end, 0.0f), float(h)))) + 3);
      if (hi <= lo) continue;
      row_lo[i] = lo;
      row_hi[i] = hi;
      const double cols = std::min<double>(w, std::max(0.0f, g.bin_w * a.pooled_w) + 2.0);
      const double per_row = static_cast<double>(a.pooled_w) + 2.0 * cols;
      row_cost[idx[i] * h + lo] += per_row;
      row_cost[idx[i] * h + hi] -= per_row;
    }
    {
      double run = 0.0;
      const double zero_row = static_cast<double>(w) / 4.0;
      for (int64_t r = 0; r < n * h; ++r) {
        run += row_cost[r];
        row_cost[r] = run + zero_row;
      }
    }
    // Shards: disjoint ranges of the N * H gradient rows with about equal cost, several
    // per thread, handed out dynamically; a shard writes only its rows (zeroing them,
    // then adding its images' boxes in input order), so there are no write races and
    // the result does not depend on the thread count. A box spanning several shards is
    // visited by each, for its rows there.
    ThreadPool* pool = ctx->device()->tensorflow_cpu_worker_threads()->workers;
    const int64_t threads = std::max(1, pool->NumThreads());
    const int64_t shards = std::min<int64_t>(n * h, threads > 1 ? 6 * threads : 1);
    std::vector<int64_t> cut(shards + 1, n * h);
    {
      double total = 0.0;
      for (int64_t r = 0; r < n * h; ++r) total += row_cost[r];
      double acc = 0.0;
      int64_t s = 1;
      cut[0] = 0;
      for (int64_t r = 0; r < n * h && s < shards; ++r) {
        acc += row_cost[r];
        while (s < shards && acc >= total * static_cast<double>(s) / shards) {
          cut[s] = std::max(r + 1, cut[s - 1]);
          ++s;
        }
      }
    }

    auto work = [&](int64_t begin, int64_t end) {
      AxisTable ty, tx;
      for (int64_t shard = begin; shard < end; ++shard) {
        for (int64_t r = cut[shard]; r < cut[shard + 1];) {
          const int64_t img = r / h;
          const int r0 = static_cast<int>(r - img * h);
          const int r1 = static_cast<int>(std::min<int64_t>(cut[shard + 1] - img * h, h));
          r = img * h + r1;
          float* dst = out + img * h * w * c;
          std::memset(dst + r0 * w * c, 0, sizeof(float) * (r1 - r0) * w * c);
          for (int64_t s = start[img]; s < start[img + 1]; ++s) {
            const int64_t kk = order[s];
            if (row_hi[kk] <= r0 || row_lo[kk] >= r1) continue;
            const RoiGeometry& g = geom[kk];
            ty.Build(g.start_y, g.bin_h, g.grid_h, a.pooled_h, ih);
            if (ty.extent == 0 || ty.lo + ty.extent <= r0 || ty.lo >= r1) continue;
            tx.Build(g.start_x, g.bin_w, g.grid_w, a.pooled_w, iw);
            if (tx.extent == 0) continue;
            // Cost of each order for the whole box, in channel-vector operations (per
            // box, not per row range, so the summation order, and so every bit of the
            // result, does not depend on how the rows were cut into shards).
            const int64_t x_first_cost = int64_t{ty.bin_entries()} * a.pooled_w +
                                         int64_t{ty.used} * tx.bin_entries();
            const int64_t y_first_cost =
                int64_t{a.pooled_h} * std::max<int64_t>(tx.bin_entries(), tx.extent) +
                int64_t{ty.bin_entries()} * tx.extent;
            const bool x_first = x_first_cost <= y_first_cost;
            float* scratch = Scratch(x_first ? int64_t{a.pooled_w} * c
                                             : int64_t{a.pooled_h} * tx.extent * c);
            BackwardBox(AxisView(ty), AxisView(tx), x_first, grad + kk * box_size, w, c,
                        a.pooled_h, a.pooled_w, r0, r1, scratch, dst);
          }
        }
      }
    };
    pool->ParallelFor(shards, ThreadPool::SchedulingParams::Fixed(1), work);
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
