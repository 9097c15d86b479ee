"""batched_nms against a NumPy greedy reference: groups, invalid entries, candidate bounds."""

import numpy as np
import pytest
import tensorflow as tf

from mrcnn.ops.nms import batched_nms


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    y1 = np.maximum(a[0], b[:, 0])
    x1 = np.maximum(a[1], b[:, 1])
    y2 = np.minimum(a[2], b[:, 2])
    x2 = np.minimum(a[3], b[:, 3])
    inter = np.clip(y2 - y1, 0, None) * np.clip(x2 - x1, 0, None)
    area = lambda t: (t[..., 2] - t[..., 0]) * (t[..., 3] - t[..., 1])  # noqa: E731
    return inter / np.maximum(area(a) + area(b) - inter, 1e-12)


def _greedy(boxes, scores, valid, groups, max_output, threshold):
    order = [i for i in np.argsort(-scores, kind="stable") if valid[i]]
    kept: list[int] = []
    for i in order:
        same = [j for j in kept if groups[j] == groups[i]]
        if same and np.any(_iou(boxes[i], boxes[same]) > threshold):
            continue
        kept.append(i)
        if len(kept) == max_output:
            break
    return kept


def _random_case(rng, n, num_groups, valid_fraction):
    yx = rng.uniform(0, 200, (n, 2))
    hw = rng.uniform(4, 60, (n, 2))
    boxes = np.concatenate([yx, yx + hw], axis=1).astype(np.float32)
    scores = rng.permutation(n).astype(np.float32) / n  # distinct: no ties to break
    valid = rng.uniform(size=n) < valid_fraction
    groups = rng.integers(0, num_groups, n).astype(np.int32)
    return boxes, scores, valid, groups


@pytest.mark.parametrize("valid_fraction", [0.0, 0.02, 0.3, 1.0])
def test_batched_nms_equals_greedy_reference(valid_fraction):
    rng = np.random.default_rng(int(valid_fraction * 100))
    cases = [_random_case(rng, 600, 7, valid_fraction) for _ in range(2)]
    boxes, scores, valid, groups = (np.stack(t) for t in zip(*cases))
    max_output = 50
    idx, keep = batched_nms(tf.constant(boxes), tf.constant(scores), tf.constant(valid),
                            max_output, 0.5, groups=tf.constant(groups))
    idx, keep = idx.numpy(), keep.numpy()
    for b in range(2):
        want = _greedy(boxes[b], scores[b], valid[b], groups[b], max_output, 0.5)
        assert idx[b][keep[b]].tolist() == want
        assert keep[b].sum() == len(want)
        assert np.all(idx[b][~keep[b]] == 0)


def test_max_candidates_bounds_the_scan_without_changing_results_when_large_enough():
    rng = np.random.default_rng(3)
    boxes, scores, valid, groups = _random_case(rng, 2000, 5, 0.1)
    args = (tf.constant(boxes[None]), tf.constant(scores[None]), tf.constant(valid[None]), 40, 0.6)
    full_idx, full_keep = batched_nms(*args, groups=tf.constant(groups[None]))
    # At or above the number of valid entries (about 200): identical.
    idx, keep = batched_nms(*args, groups=tf.constant(groups[None]), max_candidates=int(valid.sum()))
    np.testing.assert_array_equal(idx.numpy(), full_idx.numpy())
    np.testing.assert_array_equal(keep.numpy(), full_keep.numpy())
    # Below it: NMS over the best 25 valid entries only, indices still into N.
    idx, keep = batched_nms(*args, groups=tf.constant(groups[None]), max_candidates=25)
    top = np.argsort(-np.where(valid, scores, -np.inf), kind="stable")[:25]
    sub_valid = np.zeros_like(valid)
    sub_valid[top] = True
    want = _greedy(boxes, scores, sub_valid, groups, 40, 0.6)
    assert idx.numpy()[0][keep.numpy()[0]].tolist() == want


def test_batched_nms_inside_tf_function_with_dynamic_batch():
    fn = tf.function(
        lambda b, s, v: batched_nms(b, s, v, 8, 0.5),
        input_signature=[tf.TensorSpec([None, None, 4]), tf.TensorSpec([None, None]),
                         tf.TensorSpec([None, None], tf.bool)],
    )
    rng = np.random.default_rng(5)
    boxes, scores, valid, _ = _random_case(rng, 30, 1, 0.5)
    idx, keep = fn(boxes[None], scores[None], valid[None])
    want = _greedy(boxes, scores, valid, np.zeros(30, np.int32), 8, 0.5)
    assert idx.numpy()[0][keep.numpy()[0]].tolist() == want
