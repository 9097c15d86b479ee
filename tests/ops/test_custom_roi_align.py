"""The custom RoIAlign op (mrcnn/ops/kernels) against the NumPy reference and the
stock-ops path. Skipped, with the reason, when the op cannot be built here."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from roi_align_reference import (
    ARANGE_BOX,
    ARANGE_EXPECTED,
    arange_features,
    random_case,
    roi_align_backward,
    roi_align_forward,
)

from mrcnn.ops import custom_roi_align
from mrcnn.ops.roi_pooling import multilevel_roi_align, roi_align

if not custom_roi_align.is_available():
    pytest.skip(
        f"custom RoIAlign op unavailable: {custom_roi_align.unavailable_reason()}",
        allow_module_level=True,
    )

ATOL = 1e-5


def custom(features, boxes, indices, size, scale, ratio, aligned):
    return roi_align(features, boxes, indices, size, scale, ratio, aligned, implementation="custom")


@pytest.mark.parametrize("sampling_ratio", [0, 1, 2])
@pytest.mark.parametrize("aligned", [False, True])
def test_forward_and_gradient_match_reference(sampling_ratio, aligned):
    rng = np.random.default_rng(20 + 3 * sampling_ratio + aligned)
    features, boxes, indices = random_case(rng, num_images=3, channels=19)  # odd channel count
    size = (3, 5)
    x = tf.constant(features)
    b = tf.constant(boxes)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([x, b])
        y = custom(x, b, indices, size, 0.5, sampling_ratio, aligned)
    want = roi_align_forward(features, boxes, indices, size, 0.5, sampling_ratio, aligned)
    np.testing.assert_allclose(y.numpy(), want, atol=ATOL, rtol=0)
    upstream = rng.standard_normal(want.shape).astype(np.float32)
    got = tape.gradient(y, x, output_gradients=tf.constant(upstream)).numpy()
    want_grad = roi_align_backward(upstream, features.shape, boxes, indices, size, 0.5,
                                   sampling_ratio, aligned)
    np.testing.assert_allclose(got, want_grad, atol=ATOL, rtol=0)
    assert tape.gradient(y, b) is None


@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_box_shapes_for_both_pass_orders(sampling_ratio):
    # The CPU kernels pick per box (and per band of gradient rows) which axis to pass
    # first; tall-thin boxes go y-first, flat-wide ones x-first. Tiny boxes put many bins
    # on one pixel and huge adaptive ones many pixels in one bin (weight lists > 4
    # entries); the 40-row maps are split into several row bands in the backward, so
    # boxes straddle band edges. 37 channels: vector loops with tails.
    rng = np.random.default_rng(40 + sampling_ratio)
    features = rng.standard_normal((2, 40, 34, 37)).astype(np.float32)
    boxes = np.array([
        [0, 10, 40, 13],  # tall, thin
        [-3, 2, 38, 4.5],  # tall, thin, across the top
        [12, -4, 15, 36],  # flat, wide, across left and right
        [20, 1, 21.5, 30],  # flat, wide
        [7.2, 9.1, 7.6, 9.3],  # tiny: many bins per pixel
        [-6, -5, 46, 41],  # huge, all four borders
        [30, 25, 39.9, 33.9],  # bottom-right corner
        [5, 5, 35, 30],
        [18.5, 3.25, 24.75, 28.5],
    ], np.float32)
    indices = np.array([0, 1, 0, 1, 0, 1, 1, 0, 1], np.int32)
    size = (7, 6)
    x = tf.constant(features)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = custom(x, boxes, indices, size, 1.0, sampling_ratio, True)
    want = roi_align_forward(features, boxes, indices, size, 1.0, sampling_ratio, True)
    np.testing.assert_allclose(y.numpy(), want, atol=ATOL, rtol=0)
    upstream = rng.standard_normal(want.shape).astype(np.float32)
    got = tape.gradient(y, x, output_gradients=tf.constant(upstream)).numpy()
    want_grad = roi_align_backward(upstream, features.shape, boxes, indices, size, 1.0,
                                   sampling_ratio, True)
    np.testing.assert_allclose(got, want_grad, atol=ATOL, rtol=0)


def test_adaptive_grid_large_boxes():
    # Big boxes on a small output: adaptive grids of several samples per bin.
    rng = np.random.default_rng(4)
    features = rng.standard_normal((2, 20, 24, 8)).astype(np.float32)
    boxes = np.array([[0, 0, 40, 48], [5, 3, 37, 30], [-8, -6, 30, 50]], np.float32)
    indices = np.array([1, 0, 1], np.int32)
    got = custom(features, boxes, indices, (2, 3), 1.0, 0, True).numpy()
    want = roi_align_forward(features, boxes, indices, (2, 3), 1.0, 0, True)
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)


@pytest.mark.parametrize("aligned", [False, True])
def test_compute_gradient(aligned):
    rng = np.random.default_rng(8)
    features, boxes, indices = random_case(rng, num_images=2, height=6, width=5, channels=3,
                                           num_boxes=3)

    def f(x):
        return custom(x, boxes, indices, (2, 3), 0.5, 0, aligned)

    theoretical, numerical = tf.test.compute_gradient(f, [tf.constant(features)])
    np.testing.assert_allclose(theoretical[0], numerical[0], atol=2e-3)


@pytest.mark.parametrize("aligned", [False, True])
def test_known_arange_values_adaptive(aligned):
    got = custom(arange_features(), ARANGE_BOX, [0], 4, 1.0, 0, aligned).numpy()[0, :, :, 0]
    np.testing.assert_allclose(got, ARANGE_EXPECTED[aligned], atol=ATOL, rtol=0)


def test_empty_box_gives_zeros_and_zero_gradient():
    x = tf.constant(arange_features())
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = custom(x, [[1.0, 1.0, 1.0, 3.0]], [0], 4, 1.0, 0, True)
    assert y.shape == (1, 4, 4, 1)
    assert not y.numpy().any()
    assert not tape.gradient(y, x).numpy().any()


def test_zero_boxes():
    x = tf.Variable(tf.random.normal([2, 5, 6, 3]))
    with tf.GradientTape() as tape:
        out = custom(x, tf.zeros([0, 4]), tf.zeros([0], tf.int32), (3, 4), 0.5, 0, True)
        loss = tf.reduce_sum(out)
    assert out.shape == (0, 3, 4, 3)
    assert not tape.gradient(loss, x).numpy().any()


@pytest.mark.parametrize("sampling_ratio", [1, 2, 3])
@pytest.mark.parametrize("aligned", [False, True])
def test_custom_equals_portable(sampling_ratio, aligned):
    rng = np.random.default_rng(30 + sampling_ratio)
    features, boxes, indices = random_case(rng, num_images=2, height=16, width=13, channels=40,
                                           num_boxes=30, scale=0.25)
    upstream = rng.standard_normal((len(boxes), 7, 6, 40)).astype(np.float32)
    results = {}
    for impl in ("custom", "portable"):
        x = tf.constant(features)
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = roi_align(x, boxes, indices, (7, 6), 0.25, sampling_ratio, aligned,
                          implementation=impl)
        results[impl] = (y.numpy(), tape.gradient(y, x, output_gradients=upstream).numpy())
    # Both compute sample positions in float32 but with different formulas (the portable
    # path goes through crop_and_resize's normalised coordinates); with values up to ~4
    # here that reaches ~1e-5, so 1e-5 relative is allowed on top of the absolute 1e-5.
    np.testing.assert_allclose(results["custom"][0], results["portable"][0], atol=ATOL, rtol=1e-5)
    # Gradients: TensorFlow's CPU CropAndResizeGradImage (behind the portable path) adds
    # boxes of one image from several threads without synchronisation, so its result
    # varies from run to run (docs/roi_align.md); the custom op's is compared with the
    # exact reference instead, and the portable one only where op determinism is on
    # (test_portable_gradient_is_exact_with_op_determinism).
    expected = roi_align_backward(upstream, features.shape, boxes, indices, (7, 6), 0.25,
                                  sampling_ratio, aligned)
    np.testing.assert_allclose(results["custom"][1], expected, atol=ATOL, rtol=1e-5)


def test_inside_tf_function_with_gradient():
    rng = np.random.default_rng(9)
    features, boxes, indices = random_case(rng, num_images=2)

    @tf.function(input_signature=[
        tf.TensorSpec([None, None, None, 3], tf.float32),
        tf.TensorSpec([None, 4], tf.float32),
        tf.TensorSpec([None], tf.int32),
    ])
    def f(x, b, i):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = custom(x, b, i, (2, 3), 0.5, 0, False)
            assert y.shape.as_list() == [None, 2, 3, 3]  # shape function
            loss = tf.reduce_sum(y)
        return y, tape.gradient(loss, x)

    y, g = f(features, boxes, indices)
    want = roi_align_forward(features, boxes, indices, (2, 3), 0.5, 0, False)
    np.testing.assert_allclose(y.numpy(), want, atol=ATOL, rtol=0)
    want_g = roi_align_backward(np.ones(want.shape), features.shape, boxes, indices, (2, 3), 0.5,
                                0, False)
    np.testing.assert_allclose(g.numpy(), want_g, atol=ATOL, rtol=0)


def test_second_order_gradient_is_forward_op():
    # d/d(upstream) of the gradient op is the forward op (the backward is its adjoint).
    rng = np.random.default_rng(10)
    features, boxes, indices = random_case(rng, num_images=1, channels=2, num_boxes=4)
    x = tf.constant(features)
    v = tf.constant(rng.standard_normal(features.shape).astype(np.float32))
    with tf.GradientTape() as outer:
        up = tf.zeros([len(boxes), 2, 2, 2])
        outer.watch(up)
        with tf.GradientTape() as inner:
            inner.watch(x)
            y = custom(x, boxes, indices, 2, 0.5, 2, True)
        g = inner.gradient(y, x, output_gradients=up)
        s = tf.reduce_sum(g * v)
    got = outer.gradient(s, up).numpy()
    want = roi_align_forward(v.numpy(), boxes, indices, 2, 0.5, 2, True)
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)


def test_bad_box_index_is_an_error():
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError)):
        custom(arange_features(), ARANGE_BOX, [1], 2, 1.0, 0, True)


def test_auto_picks_custom():
    with tf.Graph().as_default():
        out = roi_align(tf.zeros([1, 4, 4, 1]), tf.zeros([1, 4]), tf.zeros([1]), 2)
        assert out.op.type == "MrcnnRoiAlign"
        assert out.op.inputs[2].dtype == tf.int32  # float indices were cast


def test_multilevel_custom_equals_portable():
    rng = np.random.default_rng(14)
    strides = (4, 8, 16, 32)
    features = [tf.constant(rng.standard_normal((2, 128 // s, 128 // s, 3)).astype(np.float32))
                for s in strides]
    sizes = rng.choice([10, 40, 90, 200], (2, 8)) * rng.uniform(0.8, 1.2, (2, 8))
    corner = rng.uniform(-10, 100, (2, 8, 2))
    boxes = tf.constant(np.concatenate([corner, corner + sizes[..., None]], -1), tf.float32)
    got = {impl: tf.function(multilevel_roi_align)(features, boxes, 3, strides, 2, True,
                                                   implementation=impl).numpy()
           for impl in ("custom", "portable")}
    np.testing.assert_allclose(got["custom"], got["portable"], atol=ATOL, rtol=0)


def test_jit_compile_is_not_supported():
    # Documented limitation: no XLA kernel. Models using the op set jit_compile=False.
    @tf.function(jit_compile=True)
    def f(x):
        return custom(x, ARANGE_BOX, [0], 2, 1.0, 0, True)

    with pytest.raises(Exception):  # noqa: B017 - the exact XLA error type varies
        f(tf.constant(arange_features()))
