"""Loss normalisation: mask and keypoint losses are means over the positives of the global batch."""

import numpy as np
import tensorflow as tf

from mrcnn.ops.losses import keypoint_loss, mask_loss


def _bce(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    return np.maximum(logits, 0) - logits * targets + np.log1p(np.exp(-np.abs(logits)))


def test_mask_loss_is_the_mean_over_all_positive_rois_of_the_batch():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, (2, 4, 3, 3)).astype(np.float32)
    targets = (rng.random((2, 4, 3, 3)) > 0.5).astype(np.float32)
    # Image 0: three positives; image 1: one. Padding slots hold garbage that must not count.
    positive = np.array([[True, True, True, False], [False, True, False, False]])
    per_roi = _bce(logits.astype(np.float64), targets).mean(axis=(2, 3))
    want = per_roi[positive].mean()  # torchvision: BCE over all positive RoIs' pixels
    per_image = np.mean([per_roi[0, :3].mean(), per_roi[1, 1]])  # the former normalisation
    assert abs(want - per_image) > 0.05  # the two differ on this batch
    got = float(mask_loss(tf.constant(logits), tf.constant(targets), tf.constant(positive)))
    assert abs(got - want) < 1e-5, (got, want)
    none = float(mask_loss(tf.constant(logits), tf.constant(targets), tf.zeros([2, 4], tf.bool)))
    assert none == 0.0


def test_keypoint_loss_is_the_mean_over_all_labelled_keypoints_of_the_batch():
    rng = np.random.default_rng(1)
    m, k = 4, 2
    logits = rng.normal(0, 1, (2, 3, m, m, k)).astype(np.float32)
    targets = rng.integers(0, m * m, (2, 3, k)).astype(np.int32)
    valid = np.zeros((2, 3, k), bool)
    valid[0, 0, :] = valid[0, 1, 0] = valid[0, 2, 1] = True  # 4 keypoints in image 0
    valid[1, 0, 1] = True  # 1 in image 1
    flat = logits.transpose(0, 1, 4, 2, 3).reshape(2, 3, k, m * m).astype(np.float64)
    log_softmax = flat - np.log(np.exp(flat).sum(-1, keepdims=True))
    ce = -np.take_along_axis(log_softmax, targets[..., None], -1)[..., 0]
    want = ce[valid].mean()
    got = float(keypoint_loss(tf.constant(logits), tf.constant(targets), tf.constant(valid)))
    assert abs(got - want) < 1e-5, (got, want)
    assert abs(want - np.mean([ce[0][valid[0]].mean(), ce[1][valid[1]].mean()])) > 0.01
