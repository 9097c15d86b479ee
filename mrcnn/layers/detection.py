"""Test-time box post-processing: scores, class-specific decoding, class-wise NMS."""

from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf

from mrcnn.layers.box_coder import BoxCoder
from mrcnn.ops import boxes as box_ops
from mrcnn.ops.nms import batched_nms


class Detections(NamedTuple):
    boxes: tf.Tensor  # [B, D, 4] (y1, x1, y2, x2) input-image pixels, 0 in padding
    scores: tf.Tensor  # [B, D] float32, 0 in padding
    class_ids: tf.Tensor  # [B, D] int32 (1..K), 0 in padding
    valid: tf.Tensor  # [B, D] bool


def detect_boxes(
    rois: tf.Tensor,
    roi_valid: tf.Tensor,
    class_logits: tf.Tensor,
    box_deltas: tf.Tensor,
    image_sizes: tf.Tensor,
    *,
    box_coder: BoxCoder,
    score_threshold: float = 0.05,
    nms_threshold: float = 0.5,
    max_detections: int = 100,
    min_size: float = 1e-2,
    class_rule: str = "per_class",
) -> Detections:
    """torchvision's ``RoIHeads.postprocess_detections``, batched and fixed-shape.

    Every (RoI, foreground class) pair is a candidate: decoded with that class's
    deltas, clipped, kept if score > threshold and both sides >= min_size; then NMS
    per class and the best ``max_detections`` overall.

    ``class_rule="argmax"`` (matterport's ``refine_detections``): one candidate per RoI,
    its most probable class (background included), kept if that is a foreground class
    with score >= threshold; the rest as above.

    Args:
      rois: [B, R, 4]; roi_valid: [B, R]; class_logits: [B, R, K+1];
      box_deltas: [B, R, K+1, 4]; image_sizes: [B, 2] valid (h, w);
      box_coder: decodes the deltas (box-head weights).
    """
    if class_rule == "argmax":
        return _detect_argmax(rois, roi_valid, class_logits, box_deltas, image_sizes, box_coder=box_coder,
                              score_threshold=score_threshold, nms_threshold=nms_threshold,
                              max_detections=max_detections, min_size=min_size)
    batch = tf.shape(rois)[0]
    num_rois = tf.shape(rois)[1]
    num_fg = tf.shape(class_logits)[2] - 1
    probs = tf.nn.softmax(class_logits, axis=-1)[:, :, 1:]
    boxes = box_coder.decode(box_deltas[:, :, 1:], rois[:, :, None, :])
    boxes = tf.reshape(boxes, tf.stack([batch, num_rois * num_fg, 4]))
    boxes = box_ops.clip_boxes(boxes, image_sizes)
    scores = tf.reshape(probs, tf.stack([batch, -1]))
    class_ids = tf.tile(tf.range(1, num_fg + 1)[None, None, :], tf.stack([batch, num_rois, 1]))
    class_ids = tf.reshape(class_ids, tf.stack([batch, -1]))
    valid = (
        tf.reshape(tf.tile(roi_valid[:, :, None], tf.stack([1, 1, num_fg])), tf.stack([batch, -1]))
        & (scores > score_threshold)
        & (box_ops.boxes_min_side(boxes) >= min_size)
    )
    return _class_nms(boxes, scores, class_ids, valid, max_detections, nms_threshold)


def _detect_argmax(rois, roi_valid, class_logits, box_deltas, image_sizes, *, box_coder, score_threshold,
                   nms_threshold, max_detections, min_size) -> Detections:
    probs = tf.nn.softmax(class_logits, axis=-1)
    class_ids = tf.argmax(probs, axis=-1, output_type=tf.int32)
    scores = tf.reduce_max(probs, axis=-1)
    deltas = tf.gather(box_deltas, class_ids, batch_dims=2)
    boxes = box_ops.clip_boxes(box_coder.decode(deltas, rois), image_sizes)
    valid = (roi_valid & (class_ids > 0) & (scores >= score_threshold)
             & (box_ops.boxes_min_side(boxes) >= min_size))
    return _class_nms(boxes, scores, class_ids, valid, max_detections, nms_threshold)


def _class_nms(boxes, scores, class_ids, valid, max_detections, nms_threshold) -> Detections:
    """NMS within each class of the valid candidates [B, N], the best ``max_detections`` kept."""
    keep, keep_valid = batched_nms(boxes, scores, valid, max_detections, nms_threshold, groups=class_ids)
    return Detections(
        boxes=tf.where(keep_valid[..., None], tf.gather(boxes, keep, batch_dims=1), 0.0),
        scores=tf.where(keep_valid, tf.gather(scores, keep, batch_dims=1), 0.0),
        class_ids=tf.where(keep_valid, tf.gather(class_ids, keep, batch_dims=1), 0),
        valid=keep_valid,
    )
