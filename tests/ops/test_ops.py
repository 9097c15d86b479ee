"""Unit tests of the tensor ops with hand-computed numbers."""

import math

import numpy as np
import pytest
import tensorflow as tf

from mrcnn.ops import anchors as anchor_ops
from mrcnn.ops import boxes as box_ops
from mrcnn.ops.masks import paste_masks
from mrcnn.ops.nms import batched_nms
from mrcnn.ops.sampling import sample_balanced


def test_iou_hand_computed():
    a = tf.constant([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0]])
    b = tf.constant([[5.0, 5.0, 15.0, 15.0], [20.0, 20.0, 30.0, 30.0], [0.0, 0.0, 10.0, 10.0]])
    iou = box_ops.box_iou(a, b).numpy()
    np.testing.assert_allclose(iou[0], [25 / 175, 0.0, 1.0], rtol=1e-6)
    assert iou.shape == (2, 3)
    # Degenerate boxes have IoU 0, not NaN.
    z = tf.zeros([1, 4])
    assert box_ops.box_iou(z, z).numpy()[0, 0] == 0.0


def test_box_coding_round_trip_and_known_values():
    ref = tf.constant([[10.0, 20.0, 30.0, 60.0]])  # h 20, w 40, centre (20, 40)
    box = tf.constant([[12.0, 25.0, 42.0, 65.0]])  # h 30, w 40, centre (27, 45)
    d = box_ops.encode_boxes(box, ref, (10.0, 10.0, 5.0, 5.0)).numpy()
    np.testing.assert_allclose(d[0], [10 * 7 / 20, 10 * 5 / 40, 5 * math.log(1.5), 0.0], rtol=1e-5, atol=1e-6)
    back = box_ops.decode_boxes(tf.constant(d), ref, (10.0, 10.0, 5.0, 5.0)).numpy()
    np.testing.assert_allclose(back, box.numpy(), atol=1e-4)
    rng = np.random.default_rng(0)
    y1x1 = rng.uniform(0, 100, (50, 2))
    boxes = np.concatenate([y1x1, y1x1 + rng.uniform(1, 50, (50, 2))], 1).astype(np.float32)
    refs = np.concatenate([y1x1 + 3, y1x1 + 3 + rng.uniform(2, 60, (50, 2))], 1).astype(np.float32)
    deltas = box_ops.encode_boxes(boxes, refs, (1.0, 1.0, 1.0, 1.0))
    np.testing.assert_allclose(box_ops.decode_boxes(deltas, refs, (1.0, 1.0, 1.0, 1.0)).numpy(), boxes, atol=1e-3)


def test_decode_clamps_scale():
    ref = tf.constant([[0.0, 0.0, 10.0, 10.0]])
    out = box_ops.decode_boxes(tf.constant([[0.0, 0.0, 100.0, 100.0]]), ref, (1.0, 1.0, 1.0, 1.0)).numpy()
    side = 10 * 1000 / 16
    np.testing.assert_allclose(out[0], [5 - side / 2, 5 - side / 2, 5 + side / 2, 5 + side / 2], rtol=1e-5)


def test_clip_boxes_per_image():
    boxes = tf.constant([[[-5.0, -5.0, 200.0, 50.0]], [[-5.0, -5.0, 200.0, 50.0]]])
    out = box_ops.clip_boxes(boxes, tf.constant([[100, 40], [300, 300]])).numpy()
    np.testing.assert_allclose(out[:, 0], [[0, 0, 100, 40], [0, 0, 200, 50]])


def test_base_anchors_match_torchvision():
    # torchvision: ws = size / sqrt(r), hs = size * sqrt(r); round([-w, -h, w, h] / 2)
    base = anchor_ops.base_anchors(32, (0.5, 1.0, 2.0))
    np.testing.assert_array_equal(base, [[-11, -23, 11, 23], [-16, -16, 16, 16], [-23, -11, 23, 11]])
    base = anchor_ops.base_anchors(128, (0.5, 1.0, 2.0))
    np.testing.assert_array_equal(base, [[-45, -91, 45, 91], [-64, -64, 64, 64], [-91, -45, 91, 45]])


def test_grid_anchors_order_and_shifts():
    levels = anchor_ops.multilevel_anchors(
        tf.constant([8, 12]), [tf.constant([2, 3])], sizes=(4,), ratios=(1.0,)
    )
    a = levels[0].numpy()
    assert a.shape == (6, 4)
    # Row-major locations, stride 4, no half-stride offset.
    np.testing.assert_array_equal(a[0], [-2, -2, 2, 2])
    np.testing.assert_array_equal(a[1], [-2, 2, 2, 6])
    np.testing.assert_array_equal(a[3], [2, -2, 6, 2])
    # Anchors of one location are consecutive, in ratio order.
    two = anchor_ops.multilevel_anchors(tf.constant([4, 4]), [tf.constant([1, 1])], (32,), (0.5, 1.0, 2.0))
    np.testing.assert_array_equal(two[0].numpy(), anchor_ops.base_anchors(32, (0.5, 1.0, 2.0)))


def test_batched_nms_known_result_and_groups():
    boxes = tf.constant([[[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60], [0, 0, 10, 10]]], tf.float32)
    scores = tf.constant([[0.9, 0.8, 0.7, 0.95]])
    valid = tf.constant([[True, True, True, False]])
    idx, keep = batched_nms(boxes, scores, valid, 4, 0.5)
    assert idx.numpy()[0][keep.numpy()[0]].tolist() == [0, 2]
    idx, keep = batched_nms(boxes, scores, valid, 4, 0.5, groups=tf.constant([[0, 1, 0, 0]]))
    assert idx.numpy()[0][keep.numpy()[0]].tolist() == [0, 1, 2]
    # IoU 0.68 survives a 0.7 threshold.
    idx, keep = batched_nms(boxes, scores, valid, 4, 0.7)
    assert idx.numpy()[0][keep.numpy()[0]].tolist() == [0, 1, 2]


@pytest.mark.parametrize("num_pos,num_neg,expect_pos,expect_neg", [
    (1000, 4000, 128, 128),
    (10, 4000, 10, 246),
    (0, 10, 0, 10),
    (300, 50, 128, 50),
])
def test_sampling_proportions(num_pos, num_neg, expect_pos, expect_neg):
    n = 5000
    pos = np.zeros((2, n), bool)
    neg = np.zeros((2, n), bool)
    rng = np.random.default_rng(1)
    for b in range(2):
        perm = rng.permutation(n)
        pos[b, perm[:num_pos]] = True
        neg[b, perm[num_pos : num_pos + num_neg]] = True
    idx, is_pos, valid = (t.numpy() for t in sample_balanced(tf.constant(pos), tf.constant(neg), 256, 0.5))
    for b in range(2):
        assert is_pos[b].sum() == expect_pos
        assert (valid[b] & ~is_pos[b]).sum() == expect_neg
        chosen = idx[b][valid[b]]
        assert len(set(chosen.tolist())) == len(chosen)  # no duplicates
        assert pos[b][idx[b][is_pos[b]]].all()
        assert neg[b][idx[b][valid[b] & ~is_pos[b]]].all()
        # positives occupy the first slots
        assert is_pos[b][: expect_pos].all()


def test_sampling_is_random():
    pos = tf.constant(np.ones((1, 1000), bool))
    neg = tf.constant(np.zeros((1, 1000), bool))
    a = sample_balanced(pos, neg, 10, 1.0)[0].numpy()
    b = sample_balanced(pos, neg, 10, 1.0)[0].numpy()
    assert set(a[0]) != set(b[0])


def test_paste_masks_fills_box():
    masks = np.ones((1, 28, 28), np.float32)
    out = paste_masks(masks, np.array([[10.0, 20.0, 30.0, 50.0]]), (64, 64))
    assert out.shape == (64, 64, 1)
    ys, xs = np.nonzero(out[..., 0])
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (10, 29, 20, 49)
    # A half-filled mask fills the left half of the box.
    half = np.zeros((1, 28, 28), np.float32)
    half[:, :, :14] = 1
    out = paste_masks(half, np.array([[0.0, 0.0, 28.0, 56.0]]), (28, 56))
    assert out[..., 0].sum() == 28 * 28
    assert out[:, :28, 0].all()


def test_detectron2_anchor_conventions():
    # Unrounded base anchors, half-stride offset, nominal strides.
    base = anchor_ops.base_anchors(32, (0.5,), round_to_int=False)
    np.testing.assert_allclose(base, [[-8 * math.sqrt(2), -16 * math.sqrt(2), 8 * math.sqrt(2), 16 * math.sqrt(2)]],
                               rtol=1e-6)
    levels = anchor_ops.multilevel_anchors(tf.constant([800, 800]), [tf.constant([13, 13])], (512,), (1.0,),
                                           strides=(64,), round_to_int=False, offset=0.5)
    a = levels[0].numpy()
    np.testing.assert_allclose(a[0], [32 - 256, 32 - 256, 32 + 256, 32 + 256])
    np.testing.assert_allclose(a[1], [32 - 256, 96 - 256, 32 + 256, 96 + 256])
    # torchvision's rule for the same grid: stride 800 // 13 = 61.
    tv = anchor_ops.multilevel_anchors(tf.constant([800, 800]), [tf.constant([13, 13])], (512,), (1.0,))
    np.testing.assert_allclose(tv[0].numpy()[1], [-256, 61 - 256, 256, 61 + 256])


def test_public_op_and_layer_names():
    import mrcnn.layers
    import mrcnn.ops
    from mrcnn.ops import roi_align

    for package in (mrcnn.ops, mrcnn.layers):
        assert package.__all__ and all(callable(getattr(package, name)) for name in package.__all__)
    # The function, not a module: a 2x2 map, one box covering it, 1x1 output = the mean.
    features = tf.reshape(tf.range(4, dtype=tf.float32), [1, 2, 2, 1])
    out = roi_align(features, tf.constant([[0.0, 0.0, 2.0, 2.0]]), tf.constant([0]), 1,
                    sampling_ratio=2, implementation="portable")
    assert out.shape == (1, 1, 1, 1) and abs(float(out[0, 0, 0, 0]) - 1.5) < 1e-6
