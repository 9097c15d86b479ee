"""Loss functions of Mask R-CNN (torchvision's definitions), masked for padding.

Each loss is normalised per image (by that image's number of sampled entries)
and then averaged over the images of the batch. torchvision normalises by the
count over the whole batch instead; both agree whenever every image fills its
sample (256 anchors, 512 RoIs: the usual case), and the per-image form makes the
loss independent of how a batch is split across replicas (``tf.distribute``).
"""

from __future__ import annotations

import tensorflow as tf


def smooth_l1(diff: tf.Tensor, beta: float) -> tf.Tensor:
    """Elementwise smooth-L1 of ``diff`` (0.5 x^2 / beta below beta, |x| - beta/2 above)."""
    absdiff = tf.abs(diff)
    if beta <= 0:
        return absdiff
    return tf.where(absdiff < beta, 0.5 * tf.square(absdiff) / beta, absdiff - 0.5 * beta)


def _masked_mean(values: tf.Tensor, sum_mask: tf.Tensor, count_mask: tf.Tensor) -> tf.Tensor:
    """Per image sum(values[sum_mask]) / max(count(count_mask), 1), averaged over images.

    values, masks: [B, S].
    """
    total = tf.reduce_sum(tf.where(sum_mask, values, 0.0), axis=1)
    count = tf.maximum(tf.reduce_sum(tf.cast(count_mask, tf.float32), axis=1), 1.0)
    return tf.reduce_mean(total / count)


def rpn_class_loss(logits: tf.Tensor, labels: tf.Tensor, valid: tf.Tensor) -> tf.Tensor:
    """Binary cross-entropy over the sampled anchors. All args [B, S]."""
    bce = tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits)
    return _masked_mean(bce, valid, valid)


def box_regression_loss(
    pred: tf.Tensor, target: tf.Tensor, positive: tf.Tensor, valid: tf.Tensor, beta: float
) -> tf.Tensor:
    """Smooth-L1 summed over positives, divided by the number of sampled entries.

    pred, target: [B, S, 4]; positive, valid: [B, S] bool.
    """
    loss = tf.reduce_sum(smooth_l1(pred - target, beta), axis=-1)
    return _masked_mean(loss, positive, valid)


def classifier_loss(logits: tf.Tensor, class_ids: tf.Tensor, valid: tf.Tensor) -> tf.Tensor:
    """Softmax cross-entropy over sampled RoIs. logits [B, S, K+1], class_ids [B, S]."""
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=class_ids, logits=logits)
    return _masked_mean(ce, valid, valid)


def mask_loss(logits: tf.Tensor, targets: tf.Tensor, positive: tf.Tensor) -> tf.Tensor:
    """Mean per-pixel BCE over positive RoIs (zero for an image without positives).

    logits: [B, S, mh, mw] of the ground-truth class channel; targets: same shape
    0/1; positive: [B, S] bool.
    """
    bce = tf.nn.sigmoid_cross_entropy_with_logits(labels=targets, logits=logits)
    return _masked_mean(tf.reduce_mean(bce, axis=[2, 3]), positive, positive)


def keypoint_loss(logits: tf.Tensor, targets: tf.Tensor, valid: tf.Tensor) -> tf.Tensor:
    """Softmax cross-entropy over the m x m heatmap positions, per labelled keypoint.

    logits: [B, S, m, m, K] heatmap logits; targets: [B, S, K] int32 cell index
    (row * m + col); valid: [B, S, K] bool (labelled, inside its positive RoI).
    Mean over the valid keypoints of each image, averaged over images (zero for
    an image without any); invalid keypoints contribute no gradient.
    """
    shape = tf.shape(logits)
    k = shape[4]
    per_kp = tf.transpose(logits, [0, 1, 4, 2, 3])  # [B, S, K, m, m]
    per_kp = tf.reshape(per_kp, tf.stack([shape[0], shape[1], k, shape[2] * shape[3]]))
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=targets, logits=per_kp)
    flat = tf.stack([shape[0], -1])
    valid = tf.reshape(valid, flat)
    return _masked_mean(tf.reshape(ce, flat), valid, valid)
