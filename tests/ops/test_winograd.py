"""Winograd F(4x4, 3x3) convolutions: the op, the Conv3x3 layer, and where training uses them."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from conftest import TinyConfig, traced_op_counts

from mrcnn.layers.conv import Conv3x3, resolve_training_conv, winograd_scope
from mrcnn.layers.precision import dtype_policy_scope
from mrcnn.ops import conv3x3_winograd


def _rel(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / np.max(np.abs(np.asarray(b))))


@pytest.mark.parametrize("shape,filters", [((1, 1, 1, 8), 8), ((3, 5, 7, 16), 24), ((2, 37, 53, 32), 48),
                                           ((4, 14, 14, 16), 16), ((1, 6, 9, 3), 5)])
def test_equals_the_direct_convolution_with_gradients(shape, filters):
    rng = np.random.default_rng(sum(shape))
    x = tf.constant(rng.normal(size=shape).astype(np.float32))
    kernel = tf.constant(rng.normal(0, 0.1, (3, 3, shape[-1], filters)).astype(np.float32))
    weights = tf.constant(rng.normal(size=(*shape[:3], filters)).astype(np.float32))

    def value_and_grads(conv, x, kernel):
        with tf.GradientTape() as tape:
            tape.watch([x, kernel])
            y = conv(x, kernel)
            loss = tf.reduce_sum(y * weights)
        return (y, *tape.gradient(loss, [x, kernel]))

    # Traced with unknown batch, height and width, as inference traces detect().
    winograd = tf.function(lambda x, k: value_and_grads(conv3x3_winograd, x, k),
                           input_signature=[tf.TensorSpec([None, None, None, shape[-1]]),
                                            tf.TensorSpec(kernel.shape)])
    got = winograd(x, kernel)
    want = value_and_grads(lambda x, k: tf.nn.conv2d(x, k, 1, "SAME"), x, kernel)
    assert got[0].shape == want[0].shape
    for name, g, w in zip(("output", "input gradient", "kernel gradient"), got, want):
        assert _rel(g, w) < 5e-5, (name, _rel(g, w))


def test_bad_kernels_are_refused():
    with pytest.raises(ValueError, match="3x3"):
        conv3x3_winograd(tf.zeros([1, 8, 8, 4]), tf.zeros([5, 5, 4, 4]))


def test_conv3x3_is_direct_outside_the_scope_and_winograd_inside():
    layer = Conv3x3(16, activation="relu", name="c")
    x = tf.random.stateless_normal([2, 20, 24, 8], seed=[1, 2])
    direct = layer(x)
    reference = tf.nn.relu(tf.nn.conv2d(x, layer.kernel, 1, "SAME") + layer.bias)
    np.testing.assert_array_equal(direct, reference)  # the plain Keras convolution, bit for bit
    with dtype_policy_scope("mixed_bfloat16"):
        half_layer = Conv3x3(16, activation="relu", name="h")
    half_layer.build(x.shape)
    half_layer.set_weights(layer.get_weights())
    half_direct = half_layer(x)
    with winograd_scope(True):
        fast = layer(x)
        half = half_layer(x)  # computes in bfloat16: direct
    assert 0 < _rel(fast, direct) < 5e-5
    assert half.dtype == tf.bfloat16
    np.testing.assert_array_equal(half, half_direct)
    assert layer.get_config()["filters"] == 16 and "kernel_size" not in layer.get_config()
    assert Conv3x3.from_config(layer.get_config()).kernel_size == (3, 3)


def test_auto_resolves_by_precision_and_device():
    assert not tf.config.list_logical_devices("GPU")  # the CPU test machines
    assert resolve_training_conv("auto", None) == "winograd-large"
    assert resolve_training_conv("auto", "bfloat16") == "direct"
    assert resolve_training_conv("direct", None) == "direct"
    assert resolve_training_conv("winograd", "float16") == "winograd"


def test_auto_computes_by_winograd_only_where_it_pays():
    """"winograd-large" (what "auto" resolves to on a CPU): >= 128 channels in and out on a
    map of >= 14x14 (or of unknown size); smaller layers were measured slower by Winograd."""
    cases = [((2, 32, 32, 128), 128, True), ((40, 14, 14, 256), 256, True), ((2, 32, 32, 64), 128, False),
             ((2, 32, 32, 128), 64, False), ((4, 8, 8, 256), 256, False)]
    for shape, filters, expected in cases:
        layer = Conv3x3(filters)
        layer.build(shape)
        with winograd_scope("winograd-large"):
            assert layer._computes_by_winograd(tf.zeros(shape)) is expected, (shape, filters)
        with winograd_scope("winograd"):
            assert layer._computes_by_winograd(tf.zeros(shape))
        assert not layer._computes_by_winograd(tf.zeros(shape))  # outside any scope

    layer = Conv3x3(128)
    layer.build((None, None, None, 128))
    decisions = []
    traced = tf.function(lambda x: decisions.append(layer._computes_by_winograd(x)) or x)
    with winograd_scope("winograd-large"):
        traced.get_concrete_function(tf.TensorSpec([None, None, None, 128]))
    assert decisions == [True]  # a map of unknown size (inference-like tracing) counts as large
    with pytest.raises(ValueError, match="mode"):
        with winograd_scope("fast"):
            pass


def test_small_networks_train_direct_under_auto():
    """The tests' and the demo's narrow networks (<= 64 channels) have no layer where
    Winograd pays: "auto" traces the same step as "direct"."""
    from mrcnn.model import MaskRCNN

    model = MaskRCNN(TinyConfig(IMAGE_MIN_DIM=64, IMAGE_MAX_DIM=64, MINI_MASK_SHAPE=None))
    model.compile()
    assert model.training_conv_algorithm == "winograd-large"
    masks = np.zeros([2, 6, 64, 64], np.float32)
    masks[:, 0, 8:40, 10:30] = 1
    batch = {"images": tf.zeros([2, 64, 64, 3]), "image_sizes": tf.constant([[64, 64], [64, 64]]),
             "gt_boxes": tf.constant([[[8, 10, 40, 30]] + [[0, 0, 0, 0]] * 5] * 2, tf.float32),
             "gt_class_ids": tf.constant([[1, 0, 0, 0, 0, 0]] * 2), "gt_masks": tf.constant(masks)}
    counts = traced_op_counts(tf.function(model.train_step), batch)
    assert counts["BatchMatMulV2"] == 0 and counts["Conv2DBackpropFilter"] > 0


def test_config_rejects_an_unknown_algorithm():
    from mrcnn.config import Config

    with pytest.raises(ValueError, match="TRAINING_CONV_ALGORITHM"):
        Config(TRAINING_CONV_ALGORITHM="fft")


def test_train_step_uses_winograd_and_inference_the_direct_convolution():
    """Under "winograd" the training step's 3x3 stride-1 convolutions (ResNet blocks, FPN
    outputs, RPN head, mask head) run as batched matmuls, their backward too; the same
    model's inference graph has the direct convolutions only, and both settings train
    to the same losses and weights."""
    from mrcnn.config import Config
    from mrcnn.model import MaskRCNN

    config = dict(NUM_CLASSES=3, BACKBONE="resnet18", IMAGE_MIN_DIM=64, IMAGE_MAX_DIM=64, IMAGES_PER_GPU=2,
                  FPN_CHANNELS=32, MASK_HEAD_CONV_CHANNELS=16, FPN_FC_LAYERS_SIZE=64, MAX_GT_INSTANCES=2,
                  BACKBONE_NORM="frozen_bn", FREEZE_BACKBONE_STAGES=0, WARMUP_STEPS=0, LEARNING_RATE=0.02,
                  MINI_MASK_SHAPE=None, TRAIN_ROIS_PER_IMAGE=32,
                  RPN_TRAIN_ANCHORS_PER_IMAGE=64)
    masks = np.zeros([2, 2, 64, 64], np.float32)
    masks[:, 0, 8:40, 10:30] = 1
    masks[:, 1, 30:60, 28:60] = 1
    batch = {"images": tf.random.stateless_uniform([2, 64, 64, 3], [3, 4], 0, 255),
             "image_sizes": tf.constant([[64, 64], [64, 64]]),
             "gt_boxes": tf.constant([[[8, 10, 40, 30], [30, 28, 60, 60]]] * 2, tf.float32),
             "gt_class_ids": tf.constant([[1, 2], [2, 1]]), "gt_masks": tf.constant(masks)}
    results = {}
    for algorithm in ("direct", "winograd"):
        tf.keras.utils.set_random_seed(0)
        model = MaskRCNN(Config(TRAINING_CONV_ALGORITHM=algorithm, **config))
        model.compile()
        assert model.training_conv_algorithm == algorithm
        counts = traced_op_counts(tf.function(model.train_step), batch)
        inference = traced_op_counts(tf.function(lambda x, m=model: m({"images": x})), batch["images"])
        results[algorithm] = (counts, inference, model)
        # Same sampling in both runs: the op-level RNG is seeded per model by set_random_seed.
        tf.keras.utils.set_random_seed(0)
        results[algorithm] += (model.train_on_batch(batch, return_dict=True),
                               [v.numpy() for v in model.trainable_variables])
    direct, winograd = results["direct"], results["winograd"]
    assert direct[0]["BatchMatMulV2"] == 0 < winograd[0]["BatchMatMulV2"]
    for kind in ("Conv2D", "Conv2DBackpropInput", "Conv2DBackpropFilter"):
        assert winograd[0][kind] < direct[0][kind], (kind, winograd[0][kind], direct[0][kind])
    assert direct[1] == winograd[1] and winograd[1]["BatchMatMulV2"] == 0  # inference: direct in both
    for name, value in direct[3].items():
        assert abs(winograd[3][name] - value) <= 1e-4 * max(abs(value), 1e-3), (name, value, winograd[3][name])
    for a, b in zip(direct[4], winograd[4]):
        np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-5)
