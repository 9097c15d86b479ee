"""The RPN's losses read the head at the sampled anchors only (``RPNHead.at_anchors``)."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from conftest import traced_op_counts

from mrcnn.layers.rpn import RPNHead

LEVELS = [(12, 10), (6, 5), (3, 3), (2, 2), (1, 1)]


def _head_and_features(policy: str = "float32", channels: int = 16, seed: int = 0):
    import keras

    from mrcnn.layers.precision import dtype_policy_scope

    with dtype_policy_scope(policy):
        head = RPNHead(3, channels)
    rng = np.random.default_rng(seed)
    features = [tf.constant(rng.normal(size=(2, h, w, channels)).astype(np.float32)) for h, w in LEVELS]
    head.build([tuple(f.shape) for f in features])
    # Non-zero biases, so a bias read from the wrong place shows.
    for conv in (head.conv, head.cls_logits, head.bbox_pred):
        conv.bias.assign(rng.normal(0, 0.1, conv.bias.shape).astype(np.float32))
    keras.utils.set_random_seed(seed)
    return head, features, rng


def test_at_anchors_equals_the_dense_head_and_its_gradients():
    head, features, rng = _head_and_features()
    total = sum(h * w * 3 for h, w in LEVELS)
    # Image 0: distinct anchors on every level, the first and the last; image 1 repeats some.
    first = np.concatenate([[0, total - 1], rng.choice(np.arange(1, total - 1), 38, replace=False)])
    indices = tf.constant(np.stack([first, rng.integers(0, total, 40)]).astype(np.int32))
    weights_l = tf.constant(rng.normal(size=(2, 40)).astype(np.float32))
    weights_d = tf.constant(rng.normal(size=(2, 40, 4)).astype(np.float32))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(features)
        logits, deltas = head(features)
        dense_l = tf.gather(tf.concat(logits, 1), indices, batch_dims=1)
        dense_d = tf.gather(tf.concat(deltas, 1), indices, batch_dims=1)
        sparse_l, sparse_d = head.at_anchors(features, indices)
        loss_dense = tf.reduce_sum(dense_l * weights_l) + tf.reduce_sum(dense_d * weights_d)
        loss_sparse = tf.reduce_sum(sparse_l * weights_l) + tf.reduce_sum(sparse_d * weights_d)
    assert sparse_l.shape == (2, 40) and sparse_d.shape == (2, 40, 4)
    np.testing.assert_allclose(sparse_l, dense_l, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(sparse_d, dense_d, rtol=1e-5, atol=1e-5)
    sources = head.trainable_variables + features
    for var, g_dense, g_sparse in zip(sources, tape.gradient(loss_dense, sources),
                                      tape.gradient(loss_sparse, sources)):
        g_dense, g_sparse = tf.convert_to_tensor(g_dense), tf.convert_to_tensor(g_sparse)
        scale = float(np.abs(g_dense).max())
        assert scale > 0 or var.shape[0] == 2, getattr(var, "path", var.shape)
        np.testing.assert_allclose(g_sparse, g_dense, atol=1e-5 * max(scale, 1.0),
                                   err_msg=str(getattr(var, "path", var.shape)))


@pytest.mark.parametrize("policy", ["mixed_bfloat16"])
def test_at_anchors_under_mixed_precision_returns_float32(policy):
    head, features, _ = _head_and_features(policy)
    indices = tf.constant([[0, 5, 400], [7, 399, 3]], tf.int32)
    logits, deltas = head.at_anchors(features, indices)
    assert logits.dtype == deltas.dtype == tf.float32
    dense = tf.gather(tf.concat(head(features)[0], 1), indices, batch_dims=1)
    np.testing.assert_allclose(logits, dense, rtol=0.05, atol=0.05)  # bfloat16 rounding


def test_rpn_loss_gradient_has_no_dense_convolution_backward():
    """Training differentiates the head only at the sampled anchors: the traced gradient of
    the RPN losses holds no convolution backward op (it held two per level before)."""
    from mrcnn.config import Config
    from mrcnn.layers.anchors import AnchorGenerator
    from mrcnn.layers.rpn import RPN

    config = Config(NUM_CLASSES=3, IMAGE_MIN_DIM=64, IMAGE_MAX_DIM=64, FPN_CHANNELS=16)
    rpn = RPN.from_model_config(config)
    features = [tf.random.normal([1, 64 // s, 64 // s, 16]) for s in (4, 8, 16, 32, 64)]
    rpn.build([tuple(f.shape) for f in features])
    anchors = AnchorGenerator.from_model_config(config)(tf.zeros([1, 64, 64, 3]), features)
    targets = {"gt_boxes": tf.constant([[[8.0, 8.0, 40.0, 30.0]]]), "gt_class_ids": tf.constant([[1]])}

    @tf.function
    def step(features):
        with tf.GradientTape() as tape:
            tape.watch(features)
            proposals, _, values = rpn(features, anchors, tf.constant([[64, 64]]), targets=targets)
            loss = values["rpn_class_loss"] + values["rpn_box_loss"]
        return proposals, tape.gradient(loss, rpn.trainable_variables + features)

    ops = set(traced_op_counts(step, features))
    assert "Conv2D" in ops  # the dense head still runs (for the proposals)
    assert not {o for o in ops if o.startswith("Conv2DBackprop")}, sorted(ops)
    proposals, grads = step(features)
    assert all(g is not None for g in grads[: len(rpn.trainable_variables)])
    assert float(tf.reduce_sum(tf.abs(grads[0]))) > 0
