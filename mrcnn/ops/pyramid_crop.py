"""matterport's ``PyramidROIAlign``: multi-level ``tf.image.crop_and_resize`` of boxes.

Boxes are in matterport's frame scaled to pixels (``Config.BOX_COORDINATES =
"matterport"``: normalised coordinates times (canvas size - 1)). Each box is divided by
(canvas - 1) back to matterport's normalised box and cropped from the level

    k = clip(k0 + round(log2(sqrt(h * w) / (canonical_size / sqrt(H * W)))), 2, 5)

(h, w normalised, H x W the canvas; ``round`` halves to even, as ``tf.round``) with one
bilinear sample per output cell, the outer cells' centres on the box edges
(``crop_and_resize``'s rule: sample i of n at y1 + i * (y2 - y1) / (n - 1) of the
level's (size - 1)).
"""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf


def box_levels(boxes: tf.Tensor, canvas: tf.Tensor, canonical_level: int, canonical_size: float,
               min_level: int, max_level: int) -> tf.Tensor:
    """[..., 4] normalised boxes, canvas (H, W) float32 -> [...] int32 level (matterport's rule)."""
    h = boxes[..., 2] - boxes[..., 0]
    w = boxes[..., 3] - boxes[..., 1]
    area = tf.maximum(h * w, 1e-12)  # a zero box goes to the finest level, as log(0) does there
    level = tf.math.log(tf.sqrt(area) / (canonical_size / tf.sqrt(canvas[0] * canvas[1]))) / tf.math.log(2.0)
    level = canonical_level + tf.cast(tf.round(level), tf.int32)
    return tf.clip_by_value(level, min_level, max_level)


def multilevel_crop_and_resize(
    features: Sequence[tf.Tensor],
    boxes: tf.Tensor,
    output_size: Sequence[int],
    *,
    strides: Sequence[int] = (4, 8, 16, 32),
    canonical_level: int = 4,
    canonical_size: float = 224.0,
) -> tf.Tensor:
    """Pool each box from its level.

    Args:
      features: one [B, h_l, w_l, C] map per level, finest first (stride ``strides[l]``);
        the canvas is the finest map's size times its stride.
      boxes: [B, R, 4] (y1, x1, y2, x2) in matterport's frame scaled to pixels.
      output_size: (ph, pw).
    Returns:
      [B, R, ph, pw, C] float32.
    """
    features = [tf.cast(f, tf.float32) for f in features[: len(strides)]]
    shape = tf.shape(boxes)
    canvas = tf.cast(tf.shape(features[0])[1:3] * strides[0], tf.float32)
    scale = tf.tile(canvas - 1.0, [2])
    flat = tf.reshape(tf.cast(boxes, tf.float32), [-1, 4]) / scale
    batch_index = tf.reshape(tf.tile(tf.range(shape[0])[:, None], [1, shape[1]]), [-1])
    first = 2  # matterport's P2..P5 are levels 2..5
    levels = box_levels(flat, canvas, canonical_level, canonical_size, first, first + len(strides) - 1)
    pooled = None
    for i, feature in enumerate(features):
        # Every box is cropped from every level and the right one kept: a handful of levels,
        # no per-level gather/scatter (the boxes' order stays as given).
        crops = tf.image.crop_and_resize(feature, tf.stop_gradient(flat), batch_index, output_size,
                                         method="bilinear")
        chosen = tf.reshape(tf.equal(levels, first + i), [-1, 1, 1, 1])
        pooled = tf.where(chosen, crops, 0.0 if pooled is None else pooled)
    return tf.reshape(pooled, tf.concat([shape[:2], tf.shape(pooled)[1:]], axis=0))
