// Shared host/device math of RoIAlign (torchvision / Detectron2 semantics).
//
// Included by the C++ CPU kernel (roi_align_op.cc), the CUDA kernels
// (roi_align_kernels.cu.cc) and the standalone CUDA harness, so that the CPU and
// GPU paths cannot drift. Plain C++17 with no TensorFlow, STL or CUDA headers.
//
// Conventions: features NHWC; a box is (y1, x1, y2, x2) in input-image pixels and
// `spatial_scale` maps it onto the feature map. Semantics (shared/docs/reference.md §4):
//   start = box * spatial_scale - (aligned ? 0.5 : 0); no rounding; when not aligned
//   the RoI height/width are forced to >= 1.
//   bin = roi_size / pooled_size; grid = sampling_ratio if > 0 else ceil(roi / pooled)
//   (adaptive; a grid <= 0 means no samples and an all-zero bin).
//   sample y = start_y + py * bin_h + (iy + 0.5) * bin_h / grid_h (x alike).
//   output = sum of bilinear values / max(grid_h * grid_w, 1).
//   A sample with y < -1 or y > H (x alike) contributes 0; otherwise y <= 0 is set
//   to 0 and when floor(y) >= H - 1 both neighbours are row H - 1.
//   Backward: each sample adds grad * w_i / count to its four neighbours.
#ifndef MRCNN_CUSTOM_OPS_ROI_ALIGN_MATH_H_
#define MRCNN_CUSTOM_OPS_ROI_ALIGN_MATH_H_

#if defined(__CUDACC__)
#define MRCNN_HD __host__ __device__ __forceinline__
#else
#define MRCNN_HD inline
#endif

namespace mrcnn {
namespace roi_align {

// Per-box sampling geometry, computed once per box (or per bin on the GPU).
struct RoiGeometry {
  float start_y;
  float start_x;
  float bin_h;
  float bin_w;
  int grid_h;  // samples per bin along y; may be <= 0 (then the bin is empty)
  int grid_w;
  float inv_count;  // 1 / max(grid_h * grid_w, 1)
};

MRCNN_HD int CeilToInt(float v) {
  const int t = static_cast<int>(v);  // truncates toward zero
  return (static_cast<float>(t) < v) ? t + 1 : t;
}

// box: (y1, x1, y2, x2) in input-image pixels.
MRCNN_HD RoiGeometry ComputeGeometry(const float* box, int pooled_h, int pooled_w,
                                     float spatial_scale, int sampling_ratio,
                                     bool aligned) {
  const float offset = aligned ? 0.5f : 0.0f;
  const float y1 = box[0] * spatial_scale - offset;
  const float x1 = box[1] * spatial_scale - offset;
  const float y2 = box[2] * spatial_scale - offset;
  const float x2 = box[3] * spatial_scale - offset;
  float roi_h = y2 - y1;
  float roi_w = x2 - x1;
  if (!aligned) {  // malformed RoIs are forced to 1x1
    roi_h = roi_h > 1.0f ? roi_h : 1.0f;
    roi_w = roi_w > 1.0f ? roi_w : 1.0f;
  }
  RoiGeometry g;
  g.start_y = y1;
  g.start_x = x1;
  g.bin_h = roi_h / static_cast<float>(pooled_h);
  g.bin_w = roi_w / static_cast<float>(pooled_w);
  g.grid_h = sampling_ratio > 0 ? sampling_ratio : CeilToInt(roi_h / pooled_h);
  g.grid_w = sampling_ratio > 0 ? sampling_ratio : CeilToInt(roi_w / pooled_w);
  const int count = g.grid_h * g.grid_w;
  g.inv_count = 1.0f / static_cast<float>(count > 1 ? count : 1);
  return g;
}

// Position of sample `i` (0..grid-1) of bin `p` along one axis.
MRCNN_HD float SamplePos(float start, float bin, int p, int i, int grid) {
  return start + static_cast<float>(p) * bin +
         (static_cast<float>(i) + 0.5f) * bin / static_cast<float>(grid);
}

// One axis of the bilinear rule: the two neighbours of a sample at `v` on an axis of
// `size` pixels and their weights. Returns false (no contribution) when v < -1 or
// v > size. Otherwise v <= 0 is read as 0, and when floor(v) >= size - 1 both
// neighbours are size - 1 (weights 1 and 0). The 2-D rule is the product of the two
// axes' rules (so RoIAlign is separable; the CPU kernel uses that).
MRCNN_HD bool AxisTap(float v, int size, int* lo, int* hi, float* w_lo, float* w_hi) {
  if (v < -1.0f || v > static_cast<float>(size)) return false;
  if (v <= 0.0f) v = 0.0f;
  int low = static_cast<int>(v);
  int high;
  if (low >= size - 1) {
    high = low = size - 1;
    v = static_cast<float>(low);
  } else {
    high = low + 1;
  }
  const float l = v - static_cast<float>(low);
  *lo = low;
  *hi = high;
  *w_lo = 1.0f - l;
  *w_hi = l;
  return true;
}

// The four neighbours of one sample and their weights; offsets are pixel indices
// (y * W + x) within one image, to be scaled by the channel count for NHWC.
struct Taps {
  int p00, p01, p10, p11;  // (y_low,x_low) (y_low,x_high) (y_high,x_low) (y_high,x_high)
  float w00, w01, w10, w11;
};

// Returns false (no contribution) when the sample falls outside [-1, H] x [-1, W].
MRCNN_HD bool BilinearTaps(float y, float x, int height, int width, Taps* t) {
  int y_low, y_high, x_low, x_high;
  float hy, ly, hx, lx;
  if (!AxisTap(y, height, &y_low, &y_high, &hy, &ly)) return false;
  if (!AxisTap(x, width, &x_low, &x_high, &hx, &lx)) return false;
  t->p00 = y_low * width + x_low;
  t->p01 = y_low * width + x_high;
  t->p10 = y_high * width + x_low;
  t->p11 = y_high * width + x_high;
  t->w00 = hy * hx;
  t->w01 = hy * lx;
  t->w10 = ly * hx;
  t->w11 = ly * lx;
  return true;
}

// Forward value of one bin for one channel `c` of an NHWC image `image` (already
// offset to the box's image). Used by the CUDA kernel and the harness' CPU loop; the
// CPU op kernel runs the same taps with the channel loop innermost.
MRCNN_HD float BinValue(const float* image, int height, int width, int channels, int c,
                        const RoiGeometry& g, int py, int px) {
  float sum = 0.0f;
  for (int iy = 0; iy < g.grid_h; ++iy) {
    const float y = SamplePos(g.start_y, g.bin_h, py, iy, g.grid_h);
    for (int ix = 0; ix < g.grid_w; ++ix) {
      const float x = SamplePos(g.start_x, g.bin_w, px, ix, g.grid_w);
      Taps t;
      if (!BilinearTaps(y, x, height, width, &t)) continue;
      sum += t.w00 * image[t.p00 * channels + c] + t.w01 * image[t.p01 * channels + c] +
             t.w10 * image[t.p10 * channels + c] + t.w11 * image[t.p11 * channels + c];
    }
  }
  return sum * g.inv_count;
}

}  // namespace roi_align
}  // namespace mrcnn

#endif  // MRCNN_CUSTOM_OPS_ROI_ALIGN_MATH_H_
