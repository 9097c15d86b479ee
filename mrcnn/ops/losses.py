"""Loss functions of Mask R-CNN (torchvision's definitions), masked for padding.

Normalisation:

- RPN and box-head losses (``rpn_class_loss``, ``rpn_box_loss``, ``class_loss``,
  ``box_loss``) are normalised per image (by that image's number of sampled
  entries) and averaged over the images. torchvision divides by the count over
  the whole batch; the two agree whenever every image fills its sample (256
  anchors, 512 RoIs: the usual case), and the per-image form needs no
  communication between replicas.
- Mask and keypoint losses are the mean over every positive RoI (labelled
  keypoint) of the whole global batch, as torchvision and Detectron2: the count
  of positives is summed over the replicas of a ``tf.distribute`` strategy
  (``all_reduce``), and each replica returns its sum divided by that global
  count, times the number of replicas. Keras divides each replica's loss by the
  number of replicas before summing the gradients, and averages the replicas'
  metric values, so both see exactly the global-batch mean: a MirroredStrategy
  step equals the single-device step on the same batch. (A per-image mean would
  let an image with one positive weigh as much as one with a hundred, and a
  batch's images without positives dilute the loss.)
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


def _global_count(mask: tf.Tensor) -> tuple[tf.Tensor, float]:
    """(number of True entries of ``mask`` over all replicas, number of replicas).

    Outside a replica context (no strategy, or a call in cross-replica context)
    the count is the local one.
    """
    count = tf.reduce_sum(tf.cast(tf.stop_gradient(mask), tf.float32))
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return count, 1.0
    return ctx.all_reduce(tf.distribute.ReduceOp.SUM, count), float(ctx.num_replicas_in_sync)


def _global_mean(values: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """This replica's share of the global-batch mean of ``values[mask]`` (see the module doc).

    values, mask: same shape. Zero when the global batch has no True entry.
    """
    total = tf.reduce_sum(tf.where(mask, values, 0.0))
    count, replicas = _global_count(mask)
    return total * replicas / tf.maximum(count, 1.0)


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
    """Per-pixel BCE averaged over the pixels of every positive RoI of the global batch.

    logits: [B, S, mh, mw] of the ground-truth class channel; targets: same shape
    0/1; positive: [B, S] bool. Zero when no RoI of the global batch is positive.
    """
    bce = tf.nn.sigmoid_cross_entropy_with_logits(labels=targets, logits=logits)
    return _global_mean(tf.reduce_mean(bce, axis=[2, 3]), positive)


def keypoint_loss(logits: tf.Tensor, targets: tf.Tensor, valid: tf.Tensor) -> tf.Tensor:
    """Softmax cross-entropy over the m x m heatmap positions, per labelled keypoint.

    logits: [B, S, m, m, K] heatmap logits; targets: [B, S, K] int32 cell index
    (row * m + col); valid: [B, S, K] bool (labelled, inside its positive RoI).
    Mean over the valid keypoints of the whole global batch (torchvision's
    ``keypointrcnn_loss``; zero without any); invalid keypoints contribute no
    gradient.
    """
    shape = tf.shape(logits)
    k = shape[4]
    per_kp = tf.transpose(logits, [0, 1, 4, 2, 3])  # [B, S, K, m, m]
    per_kp = tf.reshape(per_kp, tf.stack([shape[0], shape[1], k, shape[2] * shape[3]]))
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=targets, logits=per_kp)
    return _global_mean(ce, valid)  # ce: [B, S, K]
