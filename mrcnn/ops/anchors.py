"""Anchors exactly as torchvision's ``AnchorGenerator``.

Per level: base anchors centred on 0 with h = size * sqrt(ratio),
w = size / sqrt(ratio), rounded to integers (round half to even, as torch.round);
shifted by (y * stride_h, x * stride_w) with no half-stride offset. The stride of a
level is ``input_size // grid_size`` (integer division, torchvision's rule), which
is the nominal stride whenever the padded input is a multiple of it.

Order: location-major (row, then column), then the anchors of one location in
ratio order — the order in which the RPN head's outputs are flattened.
Boxes are (y1, x1, y2, x2) in input-image pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf


def base_anchors(size: float, ratios: Sequence[float], round_to_int: bool = True) -> np.ndarray:
    """[len(ratios), 4] float32 anchors centred on (0, 0) for one level.

    ``round_to_int`` as torchvision; Detectron2 keeps them fractional.
    """
    ratios = np.asarray(ratios, dtype=np.float32)
    h_ratios = np.sqrt(ratios)
    w_ratios = np.float32(1.0) / h_ratios
    hs = h_ratios * np.float32(size)
    ws = w_ratios * np.float32(size)
    anchors = np.stack([-hs, -ws, hs, ws], axis=1) / np.float32(2.0)
    return (np.round(anchors) if round_to_int else anchors).astype(np.float32)


def grid_anchors(
    grid_h: tf.Tensor, grid_w: tf.Tensor, stride_h: tf.Tensor, stride_w: tf.Tensor, base: np.ndarray,
    offset: float = 0.0,
) -> tf.Tensor:
    """Anchors of one level: [grid_h * grid_w * A, 4] float32, shifted by (i + offset) * stride."""
    shift_y = (tf.cast(tf.range(grid_h), tf.float32) + offset) * tf.cast(stride_h, tf.float32)
    shift_x = (tf.cast(tf.range(grid_w), tf.float32) + offset) * tf.cast(stride_w, tf.float32)
    sy, sx = tf.meshgrid(shift_y, shift_x, indexing="ij")
    sy = tf.reshape(sy, [-1])
    sx = tf.reshape(sx, [-1])
    shifts = tf.stack([sy, sx, sy, sx], axis=1)
    anchors = shifts[:, None, :] + tf.constant(base)[None, :, :]
    return tf.reshape(anchors, [-1, 4])


def multilevel_anchors(
    input_shape: tf.Tensor,
    feature_shapes: Sequence[tf.Tensor],
    sizes: Sequence[float],
    ratios: Sequence[float],
    strides: Sequence[int] | None = None,
    round_to_int: bool = True,
    offset: float = 0.0,
) -> list[tf.Tensor]:
    """Anchors for each level.

    Args:
      input_shape: (H, W) of the padded network input, int32.
      feature_shapes: per level, (h, w) of the feature map, int32.
      sizes: one anchor size per level; ratios: aspect ratios h / w.
      strides: nominal stride per level (Detectron2); None derives it as
        input_size // grid_size (torchvision).
    Returns:
      A list of [h * w * A, 4] float32 tensors, one per level.
    """
    out = []
    for level, (shape, size) in enumerate(zip(feature_shapes, sizes)):
        if strides is None:
            stride_h = input_shape[0] // shape[0]
            stride_w = input_shape[1] // shape[1]
        else:
            stride_h = stride_w = strides[level]
        base = base_anchors(size, ratios, round_to_int)
        out.append(grid_anchors(shape[0], shape[1], stride_h, stride_w, base, offset))
    return out
