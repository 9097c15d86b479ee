"""Batched, fixed-shape non-maximum suppression.

Greedy NMS (suppress IoU > threshold, highest score first) per image, with
optional groups (FPN levels for proposals, classes for detections) kept apart by
torchvision's coordinate-offset trick: boxes of different groups are shifted so
that they never overlap, and one NMS call does every group at once.

Cost follows the number of *valid* candidates, not the padded size: invalid
entries are filtered out by the kernel's score threshold before the greedy scan
(as torchvision filters by score before calling NMS), and ``max_candidates``
bounds the scan by keeping only the best-scoring valid entries. An image with no
candidate above the detection threshold therefore costs almost nothing here,
where ``non_max_suppression_padded`` used to scan every (RoI, class) pair.
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
    max_candidates: int | None = None,
) -> tuple[tf.Tensor, tf.Tensor]:
    """NMS for each image of a batch.

    Args:
      boxes: [B, N, 4] (y1, x1, y2, x2). scores: [B, N]. valid: [B, N] bool,
        False entries never survive.
      max_output: boxes kept per image (static).
      groups: optional [B, N] int32; NMS runs independently within each group.
      max_candidates: optional bound on the valid entries that enter NMS per
        image (the best-scoring ones); None = all valid entries. A bound at or
        above the number of valid entries changes nothing.
    Returns:
      indices: [B, max_output] int32 into N, best first, 0 in padding slots.
      keep: [B, max_output] bool, True for real (non-padding) slots.
    """
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    scores = tf.where(valid, tf.cast(scores, tf.float32), _MASKED)
    if groups is not None:
        # A span larger than any box coordinate, so groups never overlap.
        span = tf.reduce_max(tf.abs(boxes), axis=[1, 2], keepdims=True) + 1.0
        boxes = boxes + tf.expand_dims(tf.cast(groups, tf.float32), -1) * span
    candidates = None
    if max_candidates is not None:
        k = tf.minimum(int(max_candidates), tf.shape(scores)[1])
        scores, candidates = tf.math.top_k(scores, k=k)
        boxes = tf.gather(boxes, candidates, batch_dims=1)

    def one_image(args):
        b, s = args
        # The score threshold drops the masked (invalid) entries inside the kernel,
        # before its sort and greedy scan, so their number costs nothing.
        # NonMaxSuppressionV4 with padding returns the count of real indices as its
        # own output: the count is never read from the indices' shape. LiteRT's
        # converter lowers tf.image.non_max_suppression (V3) to its V4 kernel,
        # whose indices are always max_output long (zero padded), so a count taken
        # from their shape there was always max_output, and the padding slots
        # (index 0) came back as detections (issue #27).
        idx, count = tf.raw_ops.NonMaxSuppressionV4(
            boxes=b, scores=s, max_output_size=max_output, iou_threshold=iou_threshold,
            score_threshold=_THRESHOLD, pad_to_max_output_size=True,
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
    if candidates is not None:
        indices = tf.gather(candidates, indices, batch_dims=1)
    keep = tf.range(max_output)[None, :] < counts[:, None]
    return tf.where(keep, indices, 0), keep
