"""Region Proposal Network: the shared head and the proposal stage."""

from __future__ import annotations

import keras
import tensorflow as tf

from mrcnn.ops import boxes as box_ops
from mrcnn.ops.nms import batched_nms


@keras.saving.register_keras_serializable(package="mrcnn")
class RPNHead(keras.layers.Layer):
    """3x3 conv + ReLU shared by all levels, then 1x1 convs to A logits and 4A deltas.

    Input: list of [B, h, w, C] maps. Output: (logits [B, sum(h*w*A)],
    deltas [B, sum(h*w*A), 4] as (dy, dx, dh, dw)), flattened level by level in
    anchor order (row, column, anchor).
    """

    def __init__(self, num_anchors: int = 3, channels: int = 256, **kwargs):
        super().__init__(**kwargs)
        self.num_anchors = num_anchors
        self.channels = channels
        init = keras.initializers.RandomNormal(stddev=0.01)
        self.conv = keras.layers.Conv2D(channels, 3, padding="same", activation="relu",
                                        kernel_initializer=init, name="rpn_conv")
        self.cls_logits = keras.layers.Conv2D(num_anchors, 1, kernel_initializer=init, name="rpn_cls_logits")
        self.bbox_pred = keras.layers.Conv2D(4 * num_anchors, 1, kernel_initializer=init, name="rpn_bbox_pred")

    def call(self, features):
        logits, deltas = [], []
        for feature_map in features:
            t = self.conv(feature_map)
            batch = tf.shape(t)[0]
            logits.append(tf.reshape(self.cls_logits(t), [batch, -1]))
            deltas.append(tf.reshape(self.bbox_pred(t), [batch, -1, 4]))
        return logits, deltas

    def get_config(self):
        return {**super().get_config(), "num_anchors": self.num_anchors, "channels": self.channels}


def generate_proposals(
    logits: list[tf.Tensor],
    deltas: list[tf.Tensor],
    anchors: list[tf.Tensor],
    image_sizes: tf.Tensor,
    pre_nms_top_n: int,
    post_nms_top_n: int,
    nms_threshold: float,
    min_size: float,
    weights: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0),
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """torchvision's RPN ``filter_proposals``, batched and fixed-shape.

    Per level: top ``pre_nms_top_n`` anchors by objectness; decode; clip to the
    image; drop boxes with a side < ``min_size``; NMS per level; keep the best
    ``post_nms_top_n`` of all levels by objectness probability.

    Args:
      logits: per level [B, N_l]; deltas: per level [B, N_l, 4];
      anchors: per level [N_l, 4]; image_sizes: [B, 2] valid (h, w).
    Returns:
      proposals [B, post_nms_top_n, 4] (no gradient), scores [B, post_nms_top_n]
      (probabilities), valid [B, post_nms_top_n] bool.
    """
    all_boxes, all_scores, all_levels = [], [], []
    for level, (lg, dl, an) in enumerate(zip(logits, deltas, anchors)):
        k = tf.minimum(pre_nms_top_n, tf.shape(lg)[1])
        top_logits, idx = tf.math.top_k(lg, k=k)
        top_deltas = tf.gather(dl, idx, batch_dims=1)
        top_anchors = tf.gather(an, idx)
        all_boxes.append(box_ops.decode_boxes(top_deltas, top_anchors, weights))
        all_scores.append(top_logits)
        all_levels.append(tf.fill(tf.shape(idx), level))
    boxes = tf.stop_gradient(tf.concat(all_boxes, axis=1))
    scores = tf.stop_gradient(tf.sigmoid(tf.concat(all_scores, axis=1)))
    levels = tf.concat(all_levels, axis=1)
    boxes = box_ops.clip_boxes(boxes, image_sizes)
    valid = box_ops.boxes_min_side(boxes) >= min_size
    keep, keep_valid = batched_nms(boxes, scores, valid, post_nms_top_n, nms_threshold, groups=levels)
    proposals = tf.gather(boxes, keep, batch_dims=1)
    kept_scores = tf.gather(scores, keep, batch_dims=1)
    proposals = tf.where(keep_valid[..., None], proposals, 0.0)
    return proposals, tf.where(keep_valid, kept_scores, 0.0), keep_valid
