"""The stock-ops RoIAlign, the FPN level rule and the multi-level pooler against an
independent NumPy reference of torchvision RoIAlign (``roi_align_reference.py``)."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from roi_align_reference import (
    ARANGE_BOX,
    ARANGE_EXPECTED,
    arange_features,
    fpn_levels_reference,
    random_case,
    roi_align_backward,
    roi_align_forward,
)

from mrcnn.ops.roi_pooling import fpn_levels, multilevel_roi_align, roi_align, roi_align_portable

ATOL = 1e-5


def portable(features, boxes, indices, size, scale, ratio, aligned):
    return roi_align(features, boxes, indices, size, scale, ratio, aligned, implementation="portable")


@pytest.mark.parametrize("sampling_ratio", [1, 2, 3])
@pytest.mark.parametrize("aligned", [False, True])
def test_forward_matches_reference(sampling_ratio, aligned):
    rng = np.random.default_rng(10 * sampling_ratio + aligned)
    features, boxes, indices = random_case(rng, num_images=3)
    size = (3, 5)  # non-square
    got = portable(features, boxes, indices, size, 0.5, sampling_ratio, aligned).numpy()
    want = roi_align_forward(features, boxes, indices, size, 0.5, sampling_ratio, aligned)
    assert got.shape == (len(boxes), 3, 5, features.shape[-1])
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)


@pytest.mark.parametrize("sampling_ratio", [1, 2, 3])
@pytest.mark.parametrize("aligned", [False, True])
def test_gradient_matches_reference(sampling_ratio, aligned):
    rng = np.random.default_rng(100 + 10 * sampling_ratio + aligned)
    features, boxes, indices = random_case(rng, num_images=2)
    size = (4, 3)
    upstream = rng.standard_normal((len(boxes), *size, features.shape[-1])).astype(np.float32)
    x = tf.constant(features)
    b = tf.constant(boxes)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([x, b])
        y = portable(x, b, indices, size, 0.5, sampling_ratio, aligned)
    got = tape.gradient(y, x, output_gradients=tf.constant(upstream)).numpy()
    want = roi_align_backward(
        upstream, features.shape, boxes, indices, size, 0.5, sampling_ratio, aligned
    )
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)
    assert tape.gradient(y, b) is None  # no gradient to the boxes


@pytest.mark.parametrize("aligned", [False, True])
def test_compute_gradient(aligned):
    rng = np.random.default_rng(7)
    features, boxes, indices = random_case(rng, num_images=2, height=6, width=5, channels=2,
                                           num_boxes=3)

    def f(x):
        return portable(x, boxes, indices, (2, 3), 0.5, 2, aligned)

    theoretical, numerical = tf.test.compute_gradient(f, [tf.constant(features)])
    np.testing.assert_allclose(theoretical[0], numerical[0], atol=2e-3)


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [1, 2, 3])
def test_known_arange_values(aligned, sampling_ratio):
    # The published values are for sampling_ratio 0; the adaptive grid for this 2x2 box
    # and 4x4 output is ceil(2 / 4) = 1 sample per bin, and since the map is linear and
    # every sample is in range, any fixed grid gives the same values.
    got = portable(arange_features(), ARANGE_BOX, [0], 4, 1.0, sampling_ratio, aligned)
    np.testing.assert_allclose(got.numpy()[0, :, :, 0], ARANGE_EXPECTED[aligned], atol=ATOL,
                               rtol=0)
    ref = roi_align_forward(arange_features(), ARANGE_BOX, [0], 4, 1.0, 0, aligned)[0, :, :, 0]
    np.testing.assert_allclose(ref, ARANGE_EXPECTED[aligned], atol=1e-12, rtol=0)


@pytest.mark.parametrize("aligned", [False, True])
def test_empty_box_matches_reference(aligned):
    # x1 == x2: with a fixed sampling ratio the samples sit on the line x = x1 (the
    # kernels do not special-case it); the all-zero result needs the adaptive grid
    # (tested with the custom op). Here: the same values and gradient as the reference.
    features = np.random.default_rng(3).standard_normal((1, 6, 6, 2)).astype(np.float32)
    boxes = np.array([[1.0, 2.0, 4.0, 2.0], [3.0, 3.0, 3.0, 3.0]], np.float32)
    x = tf.constant(features)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = portable(x, boxes, [0, 0], 3, 1.0, 2, aligned)
    want = roi_align_forward(features, boxes, [0, 0], 3, 1.0, 2, aligned)
    np.testing.assert_allclose(y.numpy(), want, atol=ATOL, rtol=0)
    grad = tape.gradient(y, x).numpy()
    want_grad = roi_align_backward(np.ones(want.shape), features.shape, boxes, [0, 0], 3, 1.0, 2,
                                   aligned)
    np.testing.assert_allclose(grad, want_grad, atol=ATOL, rtol=0)


def test_empty_box_adaptive_reference_is_zero():
    # The reference's own check of the published rule: empty box, adaptive, aligned -> 0.
    out = roi_align_forward(arange_features(), [[1.0, 1.0, 1.0, 3.0]], [0], 4, 1.0, 0, True)
    assert not out.any()
    grad = roi_align_backward(np.ones((1, 4, 4, 1)), (1, 5, 5, 1), [[1.0, 1.0, 1.0, 3.0]], [0], 4,
                              1.0, 0, True)
    assert not grad.any()


def test_boxes_fully_outside_give_zeros():
    features = np.ones((1, 4, 4, 2), np.float32)
    boxes = np.array([[-10.0, 0.0, -5.0, 3.0], [0.0, 6.0, 3.0, 9.0]], np.float32)
    out = portable(features, boxes, [0, 0], 2, 1.0, 2, True).numpy()
    assert not out.any()


def test_zero_boxes():
    features = tf.random.normal([2, 5, 6, 3])
    x = tf.Variable(features)
    with tf.GradientTape() as tape:
        out = portable(x, tf.zeros([0, 4]), tf.zeros([0], tf.int32), (3, 4), 0.5, 2, True)
        loss = tf.reduce_sum(out)
    assert out.shape == (0, 3, 4, 3)
    assert not tape.gradient(loss, x).numpy().any()


@pytest.mark.parametrize("ratio", [0, -1])
def test_portable_needs_fixed_sampling_ratio(ratio):
    with pytest.raises(ValueError, match="sampling_ratio"):
        roi_align_portable(arange_features(), ARANGE_BOX, [0], (2, 2), 1.0, ratio, True)


def test_float_box_indices_are_cast():
    got = roi_align(arange_features(), ARANGE_BOX, tf.constant([0.0]), 4, 1.0, 2, True,
                    implementation="portable")
    np.testing.assert_allclose(got.numpy()[0, :, :, 0], ARANGE_EXPECTED[True], atol=ATOL)


def test_bad_implementation():
    with pytest.raises(ValueError, match="implementation"):
        roi_align(arange_features(), ARANGE_BOX, [0], 4, implementation="cuda")


def test_inside_tf_function_dynamic_shapes():
    rng = np.random.default_rng(5)
    features, boxes, indices = random_case(rng, num_images=2)

    @tf.function(input_signature=[
        tf.TensorSpec([None, None, None, 3], tf.float32),
        tf.TensorSpec([None, 4], tf.float32),
        tf.TensorSpec([None], tf.int32),
    ])
    def f(x, b, i):
        return portable(x, b, i, (2, 3), 0.5, 2, False)

    want = roi_align_forward(features, boxes, indices, (2, 3), 0.5, 2, False)
    np.testing.assert_allclose(f(features, boxes, indices).numpy(), want, atol=ATOL, rtol=0)


# ----------------------------------------------------------------------------- FPN levels


def _square(size):
    return [10.0, 20.0, 10.0 + size, 20.0 + size]


@pytest.mark.parametrize(
    "size,level",
    [(224, 4), (112, 3), (448, 5), (56, 2), (4, 2), (1, 2), (0, 2), (5000, 5),
     (223.9, 3), (111.9, 2), (447.9, 4), (300, 4), (160, 3)],
)
def test_fpn_levels_values(size, level):
    assert int(fpn_levels(tf.constant([_square(size)], tf.float32))[0]) == level


def test_fpn_levels_eps_boundary():
    # Just below a boundary by less than the 1e-6 (in log2 units) margin -> rounds up, as
    # torchvision's LevelMapper; further below -> the lower level.
    sizes = np.array([112, 112 * 2 ** -0.4e-6, 112 * 2 ** -3e-6, 224 * 2 ** -0.5e-6,
                      224 * 2 ** -3e-6, 448 * 2 ** -3e-6], np.float64)
    boxes = np.stack([np.zeros_like(sizes), np.zeros_like(sizes), sizes, sizes], 1)
    boxes32 = boxes.astype(np.float32)
    got = fpn_levels(tf.constant(boxes32)).numpy()
    np.testing.assert_array_equal(got, fpn_levels_reference(boxes32))
    np.testing.assert_array_equal(got, [3, 3, 2, 4, 3, 4])


def test_fpn_levels_batched_and_custom_range():
    rng = np.random.default_rng(0)
    boxes = rng.uniform(0, 600, (3, 7, 4)).astype(np.float32)
    boxes = np.concatenate([np.minimum(boxes[..., :2], boxes[..., 2:]),
                            np.maximum(boxes[..., :2], boxes[..., 2:])], -1)
    got = fpn_levels(tf.constant(boxes), 3, 6, 5, 200.0).numpy()
    assert got.shape == (3, 7) and got.dtype == np.int32
    np.testing.assert_array_equal(got, fpn_levels_reference(boxes, 3, 6, 5, 200.0))


# ------------------------------------------------------------------------- multilevel pooler


def _pyramid(rng, batch, image=256, channels=4, strides=(4, 8, 16, 32)):
    return [rng.standard_normal((batch, image // s, image // s, channels)).astype(np.float32)
            for s in strides]


def _multilevel_boxes(rng, batch, rois, image=256):
    sizes = rng.choice([8, 30, 60, 100, 150, 230, 300, 500], (batch, rois)).astype(np.float64)
    sizes *= rng.uniform(0.8, 1.2, (batch, rois))
    y1 = rng.uniform(-20, image - 20, (batch, rois))
    x1 = rng.uniform(-20, image - 20, (batch, rois))
    aspect = rng.uniform(0.5, 2.0, (batch, rois))
    boxes = np.stack([y1, x1, y1 + sizes * aspect, x1 + sizes / aspect], -1)
    return boxes.astype(np.float32)


def _expected_multilevel(features, boxes, size, strides, ratio, aligned):
    batch, rois = boxes.shape[:2]
    levels = fpn_levels_reference(boxes, 2, 1 + len(features))
    out = np.zeros((batch, rois, *size, features[0].shape[-1]))
    for b in range(batch):
        for r in range(rois):
            lvl = levels[b, r] - 2
            out[b, r] = roi_align_forward(features[lvl], boxes[b, r][None], [b], size,
                                          1.0 / strides[lvl], ratio, aligned)[0]
    return out


def test_multilevel_matches_per_box_reference():
    rng = np.random.default_rng(11)
    strides = (4, 8, 16, 32)
    features = _pyramid(rng, 2)
    boxes = _multilevel_boxes(rng, 2, 10)
    assert len(set(fpn_levels_reference(boxes).ravel())) == 4  # every level used

    @tf.function
    def pool(feats, b):
        return multilevel_roi_align(feats, b, (3, 2), strides, sampling_ratio=2, aligned=True,
                                    implementation="portable")

    got = pool([tf.constant(f) for f in features], tf.constant(boxes)).numpy()
    want = _expected_multilevel(features, boxes, (3, 2), strides, 2, True)
    assert got.shape == (2, 10, 3, 2, 4)
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)


def test_multilevel_equals_single_level_calls_and_gradient():
    rng = np.random.default_rng(12)
    strides = (4, 8, 16, 32)
    features = [tf.constant(f) for f in _pyramid(rng, 3, image=128, channels=2)]
    boxes = tf.constant(_multilevel_boxes(rng, 3, 6, image=128))
    with tf.GradientTape() as tape:
        tape.watch(features)
        got = multilevel_roi_align(features, boxes, 2, strides, sampling_ratio=1, aligned=False,
                                   implementation="portable")
        loss = tf.reduce_sum(got * tf.random.stateless_normal(got.shape, [1, 2]))
    grads = tape.gradient(loss, features)
    assert all(g is not None for g in grads)
    levels = fpn_levels(boxes).numpy()
    for b in range(3):
        for r in range(6):
            lvl = levels[b, r] - 2
            single = roi_align(features[lvl], boxes[b, r][None], [b], 2, 1.0 / strides[lvl], 1,
                               False, implementation="portable")
            np.testing.assert_allclose(got[b, r].numpy(), single[0].numpy(), atol=ATOL)


def test_multilevel_with_empty_levels():
    # All boxes on one level: the other levels pool zero boxes.
    rng = np.random.default_rng(13)
    features = _pyramid(rng, 1, image=128, channels=2)
    boxes = np.array([[[10, 10, 60, 60], [20, 30, 70, 90]]], np.float32)
    got = multilevel_roi_align(features, boxes, 2, sampling_ratio=2,
                               implementation="portable").numpy()
    want = _expected_multilevel(features, boxes, (2, 2), (4, 8, 16, 32), 2, True)
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)


def test_portable_gradient_is_exact_with_op_determinism():
    """TF's CPU CropAndResizeGradImage races between threads unless op determinism is on.

    Runs in a subprocess because enable_op_determinism is process-wide.
    """
    import os
    import subprocess
    import sys
    import textwrap

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    script = textwrap.dedent(
        """
        import sys
        import numpy as np
        import tensorflow as tf
        tf.config.experimental.enable_op_determinism()
        sys.path.insert(0, "tests")
        from roi_align_reference import roi_align_backward
        from mrcnn.ops.roi_pooling import roi_align
        rng = np.random.default_rng(0)
        f = rng.standard_normal((1, 24, 24, 32)).astype(np.float32)
        y1x1 = rng.uniform(0, 70, (300, 2))
        b = np.concatenate([y1x1, y1x1 + rng.uniform(8, 28, (300, 2))], 1).astype(np.float32)
        i = np.zeros(300, np.int32)
        up = rng.standard_normal((300, 7, 7, 32)).astype(np.float32)
        grads = []
        for _ in range(3):
            x = tf.constant(f)
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = roi_align(x, b, i, 7, 0.25, 2, True, implementation="portable")
            grads.append(tape.gradient(y, x, output_gradients=up).numpy())
        want = roi_align_backward(up, f.shape, b, i, 7, 0.25, 2, True)
        print("ERR", max(float(np.abs(g - want).max()) for g in grads))
        """
    )
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=root)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                          cwd=root, timeout=600)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("ERR ")]
    assert lines, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert float(lines[0].split()[1]) < 1e-3


@pytest.mark.parametrize("aligned", [False, True])
def test_single_map_gather_form_matches_reference_and_compiles_with_xla(aligned):
    # The mask targets of the XLA-compiled step (Config.JIT_COMPILE): XLA has no CropAndResize.
    from mrcnn.ops.roi_align_gather import roi_align_gather

    rng = np.random.default_rng(7 + aligned)
    features, boxes, indices = random_case(rng, num_images=3)
    want = roi_align_forward(features, boxes, indices, (3, 5), 0.5, 2, aligned)
    got = roi_align_gather(features, boxes, indices, (3, 5), 0.5, 2, aligned).numpy()
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)
    compiled = tf.function(lambda f, b, i: roi_align_gather(f, b, i, (3, 5), 0.5, 2, aligned), jit_compile=True)
    np.testing.assert_allclose(compiled(features, boxes, indices).numpy(), want, atol=ATOL, rtol=0)


def test_single_map_gather_form_gives_the_portable_mask_targets_at_ties():
    # A RoI equal to its GT box puts samples exactly between mini-mask cells: bins average
    # to exactly 0.5 there, and the 0.5 threshold of the mask targets follows the rounding.
    # The gather form rounds as CropAndResize does, so the thresholded targets are equal.
    from mrcnn.ops.roi_align_gather import roi_align_gather

    rng = np.random.default_rng(3)
    masks = np.pad((rng.random((4, 56, 56, 1)) > 0.5).astype(np.float32), [[0, 0], [1, 1], [1, 1], [0, 0]])
    boxes = np.tile(np.array([[1.0, 1.0, 57.0, 57.0]], np.float32), (4, 1))
    indices = np.arange(4, dtype=np.int32)
    want = portable(masks, boxes, indices, (28, 28), 1.0, 2, True).numpy()
    got = roi_align_gather(masks, boxes, indices, (28, 28), 1.0, 2, True).numpy()
    assert np.mean(want == 0.5) > 0.05  # the ties are there
    np.testing.assert_array_equal(got >= 0.5, want >= 0.5)
