"""RPN anchor labelling and RoI sampling/targets."""

import numpy as np
import tensorflow as tf

from mrcnn.layers.targets import roi_targets, rpn_targets
from mrcnn.ops import boxes as box_ops


def _gt(boxes, classes, g=4):
    b = np.zeros((1, g, 4), np.float32)
    c = np.zeros((1, g), np.int32)
    if len(boxes):
        b[0, : len(boxes)] = boxes
    c[0, : len(classes)] = classes
    return tf.constant(b), tf.constant(c)


def test_rpn_labels_thresholds_and_low_quality_matches():
    anchors = tf.constant(
        [
            [0, 0, 10, 10],  # IoU 1 with GT 0 -> positive, zero deltas
            [0, 0, 10, 12],  # IoU 0.833 -> positive
            [0, 0, 10, 20],  # IoU 0.5 -> ignored (between 0.3 and 0.7)
            [50, 50, 60, 60],  # IoU 0 -> negative
            [100, 100, 118, 118],  # best anchor of GT 1 (IoU 0.309) -> positive (low quality)
        ],
        tf.float32,
    )
    gt_boxes, gt_classes = _gt([[0, 0, 10, 10], [100, 100, 110, 110]], [1, 2])
    t = rpn_targets(anchors, gt_boxes, gt_classes, num_samples=16, positive_fraction=0.5)
    idx, lab, valid = t.indices.numpy()[0], t.labels.numpy()[0], t.valid.numpy()[0]
    labels = {int(i): float(v) for i, v, ok in zip(idx, lab, valid) if ok}
    assert labels == {0: 1.0, 1: 1.0, 3: 0.0, 4: 1.0}
    deltas = t.deltas.numpy()[0]
    np.testing.assert_allclose(deltas[list(idx).index(0)], 0.0, atol=1e-6)
    # The low-quality match regresses towards its own GT box.
    d4 = deltas[list(idx).index(4)]
    back = box_ops.decode_boxes(tf.constant(d4[None]), anchors[4:5], (1.0, 1.0, 1.0, 1.0)).numpy()
    np.testing.assert_allclose(back[0], [100, 100, 110, 110], atol=1e-3)


def test_rpn_without_gt_is_all_negative_and_crowd_is_not_negative():
    anchors = tf.constant([[0, 0, 10, 10], [50, 50, 60, 60], [200, 200, 210, 210]], tf.float32)
    gt_boxes, gt_classes = _gt([], [])
    t = rpn_targets(anchors, gt_boxes, gt_classes, num_samples=8)
    assert t.valid.numpy().sum() == 3 and t.labels.numpy().sum() == 0
    gt_boxes, gt_classes = _gt([[45, 45, 70, 70]], [-1])  # a crowd region
    t = rpn_targets(anchors, gt_boxes, gt_classes, num_samples=8)
    chosen = set(t.indices.numpy()[0][t.valid.numpy()[0]].tolist())
    assert chosen == {0, 2} and t.labels.numpy().sum() == 0


def test_roi_targets_add_gt_boxes_and_build_mask_targets():
    proposals = tf.constant([[[0, 0, 20, 20], [60, 60, 80, 80], [0, 0, 10, 20]]], tf.float32)
    valid = tf.constant([[True, True, True]])
    gt_boxes, gt_classes = _gt([[0, 0, 20, 40]], [3], g=2)
    # Mini mask of the GT: the left half of its box is the object.
    masks = np.zeros((1, 2, 56, 56), np.uint8)
    masks[0, 0, :, :28] = 1
    t = roi_targets(proposals, valid, gt_boxes, gt_classes, tf.constant(masks), num_samples=8,
                    positive_fraction=0.5, mask_shape=(28, 28), mini_mask=True)
    rois, cls, ok = t.rois.numpy()[0], t.class_ids.numpy()[0], t.valid.numpy()[0]
    pos = ok & (cls > 0)
    # Positives: the GT box itself (IoU 1) and [0,0,20,20] (IoU 0.5); both class 3.
    pos_boxes = sorted(map(tuple, rois[pos].tolist()))
    assert pos_boxes == [(0, 0, 20, 20), (0, 0, 20, 40)]
    assert set(cls[pos]) == {3}
    assert (ok & (cls == 0)).sum() == 2  # [60,60,80,80] and [0,0,10,20] (IoU 0.25)
    # Box targets decode back onto the GT box.
    back = box_ops.decode_boxes(t.deltas[0][pos], rois[pos], (10.0, 10.0, 5.0, 5.0)).numpy()
    np.testing.assert_allclose(back, [[0, 0, 20, 40]] * 2, atol=1e-3)
    m = t.masks.numpy()[0]
    for slot in np.nonzero(pos)[0]:
        if tuple(rois[slot]) == (0, 0, 20, 40):
            assert m[slot][:, :14].all() and not m[slot][:, 14:].any()
        else:  # [0,0,20,20] is the left half of the GT: all object
            assert m[slot].all()
