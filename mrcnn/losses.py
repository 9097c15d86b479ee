"""Loss functions of Mask R-CNN (torchvision's definitions), masked for padding.

Each returns a scalar averaged over the whole (per-replica) batch.
"""

from __future__ import annotations

import tensorflow as tf


def smooth_l1(diff: tf.Tensor, beta: float) -> tf.Tensor:
    """Elementwise smooth-L1 of ``diff`` (0.5 x^2 / beta below beta, |x| - beta/2 above)."""
    absdiff = tf.abs(diff)
    if beta <= 0:
        return absdiff
    return tf.where(absdiff < beta, 0.5 * tf.square(absdiff) / beta, absdiff - 0.5 * beta)


def _count(mask: tf.Tensor) -> tf.Tensor:
    return tf.maximum(tf.reduce_sum(tf.cast(mask, tf.float32)), 1.0)


def rpn_class_loss(logits: tf.Tensor, labels: tf.Tensor, valid: tf.Tensor) -> tf.Tensor:
    """Binary cross-entropy over the sampled anchors. All args [B, S]."""
    bce = tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits)
    return tf.reduce_sum(tf.where(valid, bce, 0.0)) / _count(valid)


def box_regression_loss(
    pred: tf.Tensor, target: tf.Tensor, positive: tf.Tensor, valid: tf.Tensor, beta: float
) -> tf.Tensor:
    """Smooth-L1 summed over positives, divided by the number of sampled entries.

    pred, target: [B, S, 4]; positive, valid: [B, S] bool.
    """
    loss = tf.reduce_sum(smooth_l1(pred - target, beta), axis=-1)
    return tf.reduce_sum(tf.where(positive, loss, 0.0)) / _count(valid)


def classifier_loss(logits: tf.Tensor, class_ids: tf.Tensor, valid: tf.Tensor) -> tf.Tensor:
    """Softmax cross-entropy over sampled RoIs. logits [B, S, K+1], class_ids [B, S]."""
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=class_ids, logits=logits)
    return tf.reduce_sum(tf.where(valid, ce, 0.0)) / _count(valid)


def mask_loss(logits: tf.Tensor, targets: tf.Tensor, positive: tf.Tensor) -> tf.Tensor:
    """Mean per-pixel BCE over positive RoIs (zero when there are none).

    logits: [B, S, mh, mw] of the ground-truth class channel; targets: same shape
    0/1; positive: [B, S] bool.
    """
    bce = tf.nn.sigmoid_cross_entropy_with_logits(labels=targets, logits=logits)
    per_roi = tf.reduce_mean(bce, axis=[2, 3])
    return tf.reduce_sum(tf.where(positive, per_roi, 0.0)) / _count(positive)
