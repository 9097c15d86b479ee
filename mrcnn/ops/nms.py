"""Batched, fixed-shape non-maximum suppression.

Greedy NMS (suppress IoU > threshold, highest score first) per image, with
optional groups (FPN levels for proposals, classes for detections) kept apart by
torchvision's coordinate-offset trick: boxes of different groups are shifted so
that they never overlap, and one NMS call does every group at once.
"""

from __future__ import annotations

import tensorflow as tf

_MASKED = -3.0e38
_THRESHOLD = -1.0e38


def batched_nms(
    boxes: tf.Tensor,
    scores: tf.Tensor,
    valid: tf.Tensor,
    max_output: int,
    iou_threshold: float,
    groups: tf.Tensor | None = None,
) -> tuple[tf.Tensor, tf.Tensor]:
    """NMS for each image of a batch.

    Args:
      boxes: [B, N, 4] (y1, x1, y2, x2). scores: [B, N]. valid: [B, N] bool,
        False entries never survive.
      max_output: boxes kept per image (static).
      groups: optional [B, N] int32; NMS runs independently within each group.
    Returns:
      indices: [B, max_output] int32 into N, best first, 0 in padding slots.
      keep: [B, max_output] bool, True for real (non-padding) slots.
    """
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    scores = tf.where(valid, tf.cast(scores, tf.float32), _MASKED)
    if groups is not None:
        # A span larger than any box coordinate, so groups never overlap.
        span = tf.reduce_max(tf.abs(boxes), axis=[1, 2], keepdims=True) + 1.0
        boxes = boxes + tf.cast(groups, tf.float32)[..., None] * span

    def one_image(args):
        b, s = args
        idx, count = tf.image.non_max_suppression_padded(
            b,
            s,
            max_output_size=max_output,
            iou_threshold=iou_threshold,
            score_threshold=_THRESHOLD,
            pad_to_max_output_size=True,
        )
        return idx, count

    indices, counts = tf.map_fn(
        one_image,
        (boxes, scores),
        fn_output_signature=(
            tf.TensorSpec([max_output], tf.int32),
            tf.TensorSpec([], tf.int32),
        ),
    )
    keep = tf.range(max_output)[None, :] < counts[:, None]
    return tf.where(keep, indices, 0), keep
