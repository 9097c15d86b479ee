"""FPN RoIAlign from Gather and arithmetic only (``ROI_ALIGN_IMPLEMENTATION="gather"``).

The conversion-friendly form used by the OpenVINO and LiteRT exports: LiteRT has no
CropAndResize builtin and OpenVINO's CropAndResize conversion fails on an FPN level
that receives no box, while Gather, Floor and elementwise ops exist everywhere. It
computes torchvision's ``roi_align`` (and Detectron2's ``ROIAlignV2`` with
``aligned=True``) directly:

* sample ``i`` of a box along y (``i = 0 .. s*ph-1``) sits at
  ``y1 + (i + 0.5) * roi_h / (s * ph)`` (box in feature pixels, minus 0.5 when aligned);
* a sample outside ``[-1, H]`` contributes 0; otherwise it is clamped to ``[0, H-1]``
  and interpolated bilinearly from its 4 neighbours (the reference kernels' rule);
* each output bin is the mean of its ``s x s`` samples.

All FPN levels are flattened into one ``[sum_l B*Hl*Wl, C]`` table and each box reads
from its level's slice (its row offset), so there is one gather per corner for all
levels, no per-level split (no empty tensors) and no stitching.

Levels follow :func:`mrcnn.ops.roi_pooling.fpn_levels`, computed in float32 by comparing
the box area with the level thresholds (the float64 formula and this agree except for
areas within ~1e-7 relative of a threshold). No float64 op is used.
"""

from __future__ import annotations

import math

import tensorflow as tf


def _pair(output_size) -> tuple[int, int]:
    if isinstance(output_size, (list, tuple)):
        return int(output_size[0]), int(output_size[1])
    return int(output_size), int(output_size)


def fpn_levels_float32(
    boxes: tf.Tensor, min_level: int, max_level: int, canonical_level: int, canonical_size: float
) -> tf.Tensor:
    """[..., 4] boxes -> [...] int32 levels in [min_level, max_level]; see module docstring.

    ``floor(k0 + log2(sqrt(area) / s0) + 1e-6) >= k`` is ``area >= s0^2 * 4^(k - k0 - 1e-6)``.
    """
    boxes = tf.cast(boxes, tf.float32)
    area = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
    level = tf.fill(tf.shape(area), tf.constant(min_level, tf.int32))
    for k in range(min_level + 1, max_level + 1):
        threshold = canonical_size**2 * math.pow(4.0, k - canonical_level - 1e-6)
        level = level + tf.cast(area >= threshold, tf.int32)
    return level


def multilevel_roi_align_gather(
    features,
    boxes: tf.Tensor,
    output_size: int | tuple[int, int],
    strides: tuple[int, ...] = (4, 8, 16, 32),
    sampling_ratio: int = 2,
    aligned: bool = True,
    canonical_level: int = 4,
    canonical_size: float = 224.0,
) -> tf.Tensor:
    """The FPN pooler (as :func:`mrcnn.ops.roi_pooling.multilevel_roi_align`).

    Args:
      features: one [B, Hl, Wl, C] float32 map per level, finest first (P2..).
      boxes: [B, R, 4] (y1, x1, y2, x2) input-image pixels.
      output_size: ph or (ph, pw). sampling_ratio: s > 0 samples per bin and axis.
    Returns:
      [B, R, ph, pw, C] float32.
    """
    if sampling_ratio <= 0:
        raise ValueError(f"the gather RoIAlign needs a fixed sampling_ratio > 0, got {sampling_ratio}")
    ph, pw = _pair(output_size)
    s = int(sampling_ratio)
    features = [tf.convert_to_tensor(f, tf.float32) for f in features]
    boxes = tf.cast(boxes, tf.float32)
    batch, num_rois = tf.shape(boxes)[0], tf.shape(boxes)[1]
    channels = features[0].shape[-1] or tf.shape(features[0])[-1]
    min_level = 2
    levels = fpn_levels_float32(
        boxes, min_level, min_level + len(features) - 1, canonical_level, canonical_size
    ) - min_level  # [B, R] in 0..L-1

    # Per-level tables: height, width, 1 / stride, first row in the flat table.
    heights, widths, bases, table = [], [], [], []
    base = tf.constant(0, tf.int32)
    for f in features:
        shape = tf.shape(f)
        heights.append(shape[1])
        widths.append(shape[2])
        bases.append(base)
        base = base + shape[0] * shape[1] * shape[2]
        table.append(tf.reshape(f, [-1, channels]))
    table = tf.concat(table, axis=0)
    height = tf.gather(tf.stack(heights), levels)  # [B, R]
    width = tf.gather(tf.stack(widths), levels)
    row0 = tf.gather(tf.stack(bases), levels) + tf.expand_dims(tf.range(batch), -1) * height * width
    scale = tf.gather(tf.constant([1.0 / st for st in strides[: len(features)]], tf.float32), levels)

    y, x = _sample_positions(boxes * tf.expand_dims(scale, -1), ph, pw, s, aligned)
    samples = _bilinear_bins(table, row0, height, width, y, x, s)
    return tf.reshape(samples, tf.stack([batch, num_rois, ph, pw, channels]))


def roi_align_gather(
    features: tf.Tensor,
    boxes: tf.Tensor,
    box_indices: tf.Tensor,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = 2,
    aligned: bool = True,
) -> tf.Tensor:
    """Single-map RoIAlign from Gather and arithmetic (as :func:`mrcnn.ops.roi_pooling.roi_align`).

    XLA has no CropAndResize kernel, so the XLA-compiled training step
    (``Config.JIT_COMPILE``) crops the mask targets with this form.

    Args:
      features: [N, H, W, C] float32. boxes: [K, 4] (y1, x1, y2, x2) input pixels.
      box_indices: [K] int32, the image of each box in ``features``.
      output_size: ph or (ph, pw). spatial_scale: feature pixels per input pixel.
      sampling_ratio: s > 0 samples per bin and axis.
    Returns:
      [K, ph, pw, C] float32.
    """
    if sampling_ratio <= 0:
        raise ValueError(f"the gather RoIAlign needs a fixed sampling_ratio > 0, got {sampling_ratio}")
    ph, pw = _pair(output_size)
    features = tf.convert_to_tensor(features, tf.float32)
    channels = features.shape[-1] or tf.shape(features)[-1]
    shape = tf.shape(features)
    table = tf.reshape(features, [-1, channels])
    # One leading "batch" of K boxes: the [B, R] layout the multi-level form uses.
    row0 = tf.expand_dims(tf.cast(box_indices, tf.int32) * shape[1] * shape[2], 0)  # [1, K]
    height = tf.fill(tf.shape(row0), shape[1])
    width = tf.fill(tf.shape(row0), shape[2])
    s = int(sampling_ratio)
    y1, x1, roi_h, roi_w = _roi_frame(tf.expand_dims(tf.cast(boxes, tf.float32), 0) * float(spatial_scale), aligned)

    def positions(start, extent, bins):
        # The custom op's float arithmetic (start + p * bin + (i + 0.5) * bin / s): mask
        # targets are thresholded at 0.5, and a RoI equal to its GT box puts samples
        # exactly between mask cells, so the rounding decides ties; this order gives the
        # custom op's and CropAndResize's targets there.
        bin_size = extent / float(bins)
        p = tf.repeat(tf.range(bins, dtype=tf.float32), s)
        i = tf.tile(tf.range(s, dtype=tf.float32) + 0.5, [bins])
        ex = tf.expand_dims
        return ex(start, -1) + ex(bin_size, -1) * p + i * ex(bin_size, -1) / float(s)

    samples = _bilinear_bins(table, row0, height, width, positions(y1, roi_h, ph), positions(x1, roi_w, pw), s)
    return samples[0]


def _roi_frame(boxes: tf.Tensor, aligned: bool) -> tuple[tf.Tensor, ...]:
    """boxes [..., 4] (y1, x1, y2, x2) feature pixels -> (y1, x1, height, width), each [...]:
    shifted by half a pixel when ``aligned``, else at least one pixel tall and wide."""
    offset = 0.5 if aligned else 0.0
    y1, x1, y2, x2 = tf.unstack(boxes - offset, axis=-1)
    roi_h, roi_w = y2 - y1, x2 - x1
    if not aligned:
        roi_h, roi_w = tf.maximum(roi_h, 1.0), tf.maximum(roi_w, 1.0)
    return y1, x1, roi_h, roi_w


def _sample_positions(boxes, ph: int, pw: int, s: int, aligned: bool) -> tuple[tf.Tensor, tf.Tensor]:
    """Sample positions (the module docstring's rule): boxes [B, R, 4] in feature pixels
    -> y [B, R, s*ph], x [B, R, s*pw]."""
    y1, x1, roi_h, roi_w = _roi_frame(boxes, aligned)
    grid_y = (tf.range(s * ph, dtype=tf.float32) + 0.5) / float(s * ph)  # [Sy]
    grid_x = (tf.range(s * pw, dtype=tf.float32) + 0.5) / float(s * pw)
    # tf.expand_dims rather than [..., None]: LiteRT has no strided slice with a new axis.
    ex = tf.expand_dims
    y = ex(y1, -1) + ex(roi_h, -1) * grid_y  # [B, R, Sy]
    x = ex(x1, -1) + ex(roi_w, -1) * grid_x  # [B, R, Sx]
    return y, x


def _bilinear_bins(table, row0, height, width, y, x, s: int) -> tf.Tensor:
    """The RoIAlign bins of samples read from a flat feature table (the module docstring's rule).

    table: [rows, C], each map stored row-major from its first row ``row0``; row0,
    height, width: [B, R] int32 per box; y [B, R, s*ph], x [B, R, s*pw]: sample
    positions in feature pixels of the box's map. Returns [B, R, ph, pw, C].
    """
    ex = tf.expand_dims

    def axis_terms(v, size):
        """Low/high indices and weights along one axis, the reference kernels' rule."""
        sizef = ex(tf.cast(size, tf.float32), -1)
        inside = (v >= -1.0) & (v <= sizef)
        v = tf.maximum(v, 0.0)
        low = tf.floor(v)
        at_end = low >= sizef - 1.0
        low = tf.where(at_end, sizef - 1.0, low)
        high = tf.where(at_end, low, low + 1.0)
        v = tf.where(at_end, low, v)
        frac = v - low
        weight = tf.cast(inside, tf.float32)
        return tf.cast(low, tf.int32), tf.cast(high, tf.int32), (1.0 - frac) * weight, frac * weight

    y_lo, y_hi, wy_lo, wy_hi = axis_terms(y, height)  # [B, R, Sy]
    x_lo, x_hi, wx_lo, wx_hi = axis_terms(x, width)  # [B, R, Sx]
    rows_lo = ex(row0, -1) + y_lo * ex(width, -1)  # [B, R, Sy]
    rows_hi = ex(row0, -1) + y_hi * ex(width, -1)

    def corner(rows, cols, wy, wx):
        index = ex(rows, -1) + ex(cols, -2)  # [B, R, Sy, Sx]
        values = tf.gather(table, index)  # [B, R, Sy, Sx, C]
        return values * ex(ex(wy, -1) * ex(wx, -2), -1)

    samples = (
        corner(rows_lo, x_lo, wy_lo, wx_lo)
        + corner(rows_lo, x_hi, wy_lo, wx_hi)
        + corner(rows_hi, x_lo, wy_hi, wx_lo)
        + corner(rows_hi, x_hi, wy_hi, wx_hi)
    )
    if s > 1:
        # Mean of each bin's s x s samples as a sum of strided slices: LiteRT's default
        # (XNNPACK) delegate cannot take a MEAN over two axes of a rank-7 tensor.
        total = None
        for i in range(s):
            for j in range(s):
                part = samples[:, :, i::s, j::s, :]
                total = part if total is None else total + part
        samples = total / float(s * s)
    return samples
