"""Keypoint R-CNN: targets, flip, loss, head, data, COCO keypoints, evaluation, overfit."""

from __future__ import annotations

import json
import os
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from mrcnn import Config, MaskRCNN, visualize
from mrcnn.config import flip_map_from_names
from mrcnn.data.loader import load_instance
from mrcnn.data.pipeline import build_dataset
from mrcnn.evaluate import (
    KEYPOINT_METRIC_NAMES,
    coco_metrics,
    dataset_to_coco,
    detections_to_coco,
    evaluate_dataset,
    format_metrics,
)
from mrcnn.layers.targets import roi_targets
from mrcnn.ops.keypoints import (
    flip_keypoints,
    heatmap_targets_to_keypoints,
    heatmaps_to_keypoints,
    keypoints_to_heatmap_targets,
)
from mrcnn.ops.losses import keypoint_loss
from samples.keypoints.keypoints import FLIP_MAP, KEYPOINT_NAMES, SKELETON, StickFigureDataset
from tests.conftest import SHARED, TinyConfig

TINY_COCO = os.path.join(SHARED, "tiny_coco")
KP_FILE = os.path.join(TINY_COCO, "annotations", "person_keypoints_train2017.json")
COCO_NAMES = [
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
    "right_knee", "left_ankle", "right_ankle",
]


class KeypointTinyConfig(TinyConfig):
    NAME = "tiny_keypoints"
    NUM_CLASSES = 2
    NUM_KEYPOINTS = len(KEYPOINT_NAMES)
    KEYPOINT_NAMES = KEYPOINT_NAMES
    KEYPOINT_FLIP_MAP = FLIP_MAP
    KEYPOINT_SKELETON = SKELETON
    KEYPOINT_HEAD_CONV_CHANNELS = 64
    KEYPOINT_HEAD_NUM_CONVS = 4
    MASK_HEAD = False


def _figures(count=4, seed=1, **kwargs) -> StickFigureDataset:
    ds = StickFigureDataset()
    ds.load_figures(count, seed=seed, **kwargs)
    return ds


# ----- config ----------------------------------------------------------------------------
def test_config_defaults_unchanged_and_keypoint_loss_names():
    assert Config().LOSS_NAMES == ("rpn_class_loss", "rpn_box_loss", "class_loss", "box_loss", "mask_loss")
    assert Config().NUM_KEYPOINTS == 0 and Config().MASK_HEAD is True
    both = Config(NUM_KEYPOINTS=17, KEYPOINT_NAMES=tuple(COCO_NAMES))
    assert both.LOSS_NAMES[-2:] == ("mask_loss", "keypoint_loss")
    only = Config(NUM_KEYPOINTS=17, MASK_HEAD=False)
    assert "mask_loss" not in only.LOSS_NAMES and only.LOSS_NAMES[-1] == "keypoint_loss"
    Config(NUM_KEYPOINTS=17, LOSS_WEIGHTS={"keypoint_loss": 2.0})
    with pytest.raises(ValueError, match="LOSS_WEIGHTS"):
        Config(LOSS_WEIGHTS={"keypoint_loss": 2.0})
    # Round trip through to_dict (tuples of pairs come back as tuples).
    cfg = KeypointTinyConfig()
    again = KeypointTinyConfig.from_dict(json.loads(cfg.to_json()))
    assert again.KEYPOINT_FLIP_MAP == FLIP_MAP and again.LOSS_NAMES == cfg.LOSS_NAMES


@pytest.mark.parametrize(
    "fields, field",
    [
        ({"NUM_KEYPOINTS": -1}, "NUM_KEYPOINTS"),
        ({"NUM_KEYPOINTS": 3, "KEYPOINT_HEATMAP_SIZE": 28}, "KEYPOINT_HEATMAP_SIZE"),
        ({"NUM_KEYPOINTS": 3, "KEYPOINT_NAMES": ("a", "b")}, "KEYPOINT_NAMES"),
        ({"NUM_KEYPOINTS": 3, "KEYPOINT_FLIP_MAP": ((0, 3),)}, "KEYPOINT_FLIP_MAP"),
        ({"NUM_KEYPOINTS": 3, "KEYPOINT_FLIP_MAP": ((0, 1), (1, 2))}, "KEYPOINT_FLIP_MAP"),
        ({"NUM_KEYPOINTS": 3, "KEYPOINT_SKELETON": ((0, 5),)}, "KEYPOINT_SKELETON"),
        ({"MASK_HEAD": False}, "MASK_HEAD"),
    ],
)
def test_config_rejects_bad_keypoint_fields(fields, field):
    with pytest.raises(ValueError, match=f"Config.{field}"):
        Config(**fields)


def test_flip_map_from_coco_names():
    pairs = flip_map_from_names(COCO_NAMES)
    assert len(pairs) == 8
    named = {(COCO_NAMES[i], COCO_NAMES[j]) for i, j in pairs}
    assert ("left_eye", "right_eye") in named and ("left_ankle", "right_ankle") in named
    perm = Config(NUM_KEYPOINTS=17, KEYPOINT_NAMES=tuple(COCO_NAMES)).keypoint_flip_permutation()
    assert perm[0] == 0 and perm[1] == 2 and perm[2] == 1 and perm[16] == 15


# ----- targets ---------------------------------------------------------------------------
def test_heatmap_target_round_trip_within_half_a_cell():
    m = 56
    rois = tf.constant([[10.0, 20.0, 66.0, 132.0], [0.0, 0.0, 7.0, 300.0], [5.5, 3.25, 40.0, 90.5]])
    rng = np.random.default_rng(0)
    kps = np.zeros((3, 9, 3), np.float32)
    for r, (y1, x1, y2, x2) in enumerate(rois.numpy()):
        kps[r, :, 0] = rng.uniform(x1, x2, 9)
        kps[r, :, 1] = rng.uniform(y1, y2, 9)
        kps[r, :, 2] = 2
    kps[0, 0, :2] = [132.0, 66.0]  # exactly on the far edges: last cell
    kps[0, 1, :2] = [20.0, 10.0]  # on the near edges: first cell
    index, valid = keypoints_to_heatmap_targets(tf.constant(kps), rois, m)
    assert valid.numpy().all()
    assert index.numpy()[0, 0] == m * m - 1 and index.numpy()[0, 1] == 0
    back = heatmap_targets_to_keypoints(index, rois, m).numpy()
    r = rois.numpy()
    cell = np.stack([(r[:, 3] - r[:, 1]) / m, (r[:, 2] - r[:, 0]) / m], -1)
    err = np.abs(back - kps[..., :2])
    assert (err <= cell[:, None, :] / 2 + 1e-4).all(), err.max()

    # Decoding the head's output: a one-hot heatmap at the target cell decodes to
    # that cell's centre (no refinement for a symmetric peak) ...
    onehot = tf.one_hot(index, m * m, on_value=20.0, off_value=0.0)  # [R, K, m*m]
    logits = tf.transpose(tf.reshape(onehot, [3, 9, m, m]), [0, 2, 3, 1])
    decoded = heatmaps_to_keypoints(logits, rois).numpy()
    np.testing.assert_allclose(decoded[..., :2], back, atol=1e-3)
    assert (decoded[..., 2] > 0.99).all()


def test_subcell_refinement_recovers_gaussian_peak():
    m = 56
    roi = np.array([0.0, 0.0, 112.0, 112.0], np.float32)  # 2 px per cell
    true_xy = np.array([[37.3, 80.9], [50.0, 51.0], [3.1, 108.6]], np.float32)
    col = (np.arange(m) + 0.5) * 2.0
    xx, yy = np.meshgrid(col, col)
    logits = np.stack([-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 3.0**2) for x, y in true_xy], -1)
    out = heatmaps_to_keypoints(tf.constant(logits[None], tf.float32), tf.constant(roi[None])).numpy()[0]
    # A log-Gaussian is a parabola: the refinement is exact up to float error.
    np.testing.assert_allclose(out[:, :2], true_xy, atol=0.05)


def test_invisible_and_out_of_box_keypoints_are_not_targets():
    kps = np.array([[[5, 5, 2], [5, 5, 1], [5, 5, 0], [50, 5, 2]]], np.float32)
    index, valid = keypoints_to_heatmap_targets(tf.constant(kps), tf.constant([[0.0, 0.0, 10.0, 10.0]]), 56)
    assert valid.numpy().tolist() == [[True, True, False, False]]
    assert index.numpy()[0, 2] == 0 and index.numpy()[0, 3] == 0

    # Through roi_targets: only positive RoIs carry keypoint targets.
    proposals = tf.constant([[[0, 0, 20, 20], [60, 60, 80, 80]]], tf.float32)
    gt_boxes = tf.constant([[[0, 0, 20, 20], [0, 0, 0, 0]]], tf.float32)
    gt_classes = tf.constant([[1, 0]], tf.int32)
    gt_kps = np.zeros((1, 2, 2, 3), np.float32)
    gt_kps[0, 0] = [[10.5, 4.5, 2], [0, 0, 0]]
    t = roi_targets(proposals, tf.constant([[True, True]]), gt_boxes, gt_classes, None, num_samples=4,
                    positive_fraction=0.5, gt_keypoints=tf.constant(gt_kps), heatmap_size=56)
    assert t.masks is None
    cls, kv = t.class_ids.numpy()[0], t.keypoint_valid.numpy()[0]
    # Targets cover the first mask_slots slots: the positives (first), none beyond.
    assert kv.shape[0] == int(t.mask_slots) == int(np.sum(cls > 0)) == 2 and not np.any(cls[2:] > 0)
    for slot in range(kv.shape[0]):
        if cls[slot] > 0:
            assert kv[slot].tolist() == [True, False]
            col, row = t.keypoint_targets.numpy()[0, slot, 0] % 56, t.keypoint_targets.numpy()[0, slot, 0] // 56
            assert (col, row) == (int(10.5 * 56 / 20), int(4.5 * 56 / 20))
        else:
            assert not kv[slot].any()


def test_loss_ignores_invisible_keypoints():
    rng = np.random.default_rng(1)
    logits = tf.Variable(rng.normal(size=(2, 3, 8, 8, 4)).astype(np.float32))
    targets = tf.constant(rng.integers(0, 64, (2, 3, 4)), tf.int32)
    valid = np.zeros((2, 3, 4), bool)
    valid[0, 0, [0, 2]] = True
    valid[1, 2, 1] = True
    with tf.GradientTape() as tape:
        loss = keypoint_loss(logits, targets, tf.constant(valid))
    grad = tape.gradient(loss, logits).numpy()
    # No gradient reaches the heatmaps of ignored keypoints.
    for b, s, k in np.argwhere(~valid):
        assert not grad[b, s, :, :, k].any()
    # Changing an ignored heatmap leaves the loss unchanged.
    changed = logits.numpy().copy()
    changed[0, 0, :, :, 1] += rng.normal(size=(8, 8)) * 10
    changed[1, 0] = 0
    assert abs(float(keypoint_loss(tf.constant(changed), targets, tf.constant(valid))) - float(loss)) < 1e-5
    # Mean CE over the valid keypoints of the whole batch (torchvision's keypointrcnn_loss).
    flat = logits.numpy().transpose(0, 1, 4, 2, 3).reshape(2, 3, 4, 64)
    ce = -(flat - np.log(np.exp(flat).sum(-1, keepdims=True)))
    ce = np.take_along_axis(ce, targets.numpy()[..., None], -1)[..., 0]
    expect = ce[valid].mean()
    assert abs(float(loss) - expect) < 1e-4
    assert float(keypoint_loss(logits, targets, tf.zeros_like(valid))) == 0.0


# ----- flip ------------------------------------------------------------------------------
def test_flip_mirrors_and_swaps_left_right():
    kps = tf.constant([[[10.5, 3.5, 2], [30.5, 4.5, 2], [0, 0, 0], [20.5, 9.5, 1]]], tf.float32)
    out = flip_keypoints(kps, 40, (1, 0, 3, 2)).numpy()[0]
    np.testing.assert_allclose(out, [[9.5, 4.5, 2], [29.5, 3.5, 2], [19.5, 9.5, 1], [0, 0, 0]])


def test_pipeline_flip_keeps_left_on_the_figures_left():
    config = KeypointTinyConfig(IMAGES_PER_GPU=1, TRAIN_FLIP_PROB=1.0)
    plain = KeypointTinyConfig(IMAGES_PER_GPU=1, TRAIN_FLIP_PROB=0.0)
    ds = _figures(2, seed=3)
    flipped = next(iter(build_dataset(ds, config, training=True, shuffle=False, seed=0)))
    normal = next(iter(build_dataset(ds, plain, training=True, shuffle=False, seed=0)))
    a, b = normal["gt_keypoints"].numpy()[0], flipped["gt_keypoints"].numpy()[0]
    width = float(normal["image_sizes"].numpy()[0, 1])
    n = int((normal["gt_class_ids"].numpy()[0] > 0).sum())
    perm = config.keypoint_flip_permutation()
    for i in range(n):
        np.testing.assert_allclose(b[i, :, 0], width - a[i, perm, 0], atol=1e-4)
        np.testing.assert_allclose(b[i, :, 1:], a[i, perm, 1:], atol=1e-4)
        # The figure's left hand is on the image's right of its neck, before and after.
        assert a[i, 2, 0] > a[i, 1, 0] and b[i, 2, 0] > b[i, 1, 0]
    # Flipped keypoints stay inside their flipped boxes.
    boxes = flipped["gt_boxes"].numpy()[0][:n]
    assert (b[:n, :, 0] >= boxes[:, None, 1] - 1e-3).all() and (b[:n, :, 0] <= boxes[:, None, 3] + 1e-3).all()
    # The image itself was mirrored.
    np.testing.assert_array_equal(flipped["images"].numpy()[0], normal["images"].numpy()[0][:, ::-1])


def test_loader_and_pipeline_coordinates():
    ds = _figures(1, seed=2, unlabelled_prob=0.5)
    config = KeypointTinyConfig(IMAGE_MIN_DIM=96, IMAGE_MAX_DIM=96, IMAGES_PER_GPU=1)
    raw = ds.load_keypoints(0)
    record = load_instance(ds, 0, config)
    vis = raw[..., 2] > 0
    np.testing.assert_array_equal(record["keypoints"][..., :2][vis], raw[..., :2][vis] + 0.5)
    assert not record["keypoints"][~vis].any()
    batch = next(iter(build_dataset(ds, config, training=False)))
    kp = batch["gt_keypoints"].numpy()[0, : len(raw)]
    np.testing.assert_allclose(kp[..., :2][vis], (raw[..., :2][vis] + 0.5) * 0.75, atol=1e-4)


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros((1, 6, 3)), r"\[N, K, 3\]"),
        (np.array([[[1, 1, 3]] * 7], float), "visibility"),
        (np.array([[[np.nan, 1, 2]] * 7], float), "NaN"),
    ],
)
def test_loader_rejects_bad_keypoints(bad, match):
    class Bad(StickFigureDataset):
        def load_mask(self, image_id):
            masks, ids = super().load_mask(image_id)
            return masks[..., :1], ids[:1]

        def load_keypoints(self, image_id):
            return bad

    ds = Bad()
    ds.load_figures(1)
    with pytest.raises(ValueError, match=rf"image 0.*{match}"):
        load_instance(ds, 0, KeypointTinyConfig())


# ----- model -----------------------------------------------------------------------------
def test_model_outputs_with_and_without_mask_head():
    both = MaskRCNN(KeypointTinyConfig(MASK_HEAD=True, DETECTION_MIN_CONFIDENCE=0.0,
                                       KEYPOINT_HEAD_CONV_CHANNELS=16, KEYPOINT_HEAD_NUM_CONVS=1))
    out = both({"images": tf.random.uniform([2, 128, 128, 3], 0, 255),
                "image_sizes": tf.constant([[128, 128], [100, 64]])})
    d, k = both.config.DETECTION_MAX_INSTANCES, both.config.NUM_KEYPOINTS
    assert out["masks"].shape == (2, d, 28, 28) and out["keypoints"].shape == (2, d, k, 3)
    n = out["num_detections"].numpy()
    kp, boxes = out["keypoints"].numpy(), out["boxes"].numpy()
    for b in range(2):
        # Keypoints lie inside their boxes; padding rows are zero.
        assert (kp[b, : n[b], :, 0] >= boxes[b, : n[b], None, 1] - 1e-3).all()
        assert (kp[b, : n[b], :, 0] <= boxes[b, : n[b], None, 3] + 1e-3).all()
        assert not kp[b, n[b]:].any()
        assert ((kp[b, : n[b], :, 2] >= 0) & (kp[b, : n[b], :, 2] <= 1 + 1e-6)).all()

    only = MaskRCNN(KeypointTinyConfig(DETECTION_MIN_CONFIDENCE=0.0, KEYPOINT_HEAD_CONV_CHANNELS=16,
                                       KEYPOINT_HEAD_NUM_CONVS=1))
    assert only.roi_heads.mask_head is None and only.roi_heads.mask_pooler is None
    image = np.random.default_rng(0).integers(0, 255, (90, 150, 3), dtype=np.uint8)
    r = only.detect([image])[0]
    assert "masks" not in r and r["keypoints"].shape == (len(r["scores"]), k, 3)
    if len(r["scores"]):
        x, y = r["keypoints"][..., 0], r["keypoints"][..., 1]
        assert (x >= r["rois"][:, None, 1] - 0.5 - 1e-3).all() and (x <= r["rois"][:, None, 3] - 0.5 + 1e-3).all()
        assert (y >= -0.5).all() and (y <= 89.5 + 1e-3).all()
    batch = next(iter(build_dataset(_figures(2), only.config, training=True, seed=0)))
    losses = only.compute_losses(batch)
    assert set(losses) == set(only.config.LOSS_NAMES)
    assert np.isfinite(float(losses["keypoint_loss"])) and float(losses["keypoint_loss"]) > 0
    # With the last layer zeroed every heatmap cell has the same logit, so the softmax cross-entropy
    # of each visible keypoint is exactly log(cells): the loss is that, whatever RoIs were sampled.
    deconv = only.roi_heads.keypoint_head.deconv
    deconv.kernel.assign(tf.zeros_like(deconv.kernel))
    deconv.bias.assign(tf.zeros_like(deconv.bias))
    side = only.config.KEYPOINT_HEATMAP_SIZE
    uniform = float(only.compute_losses(batch)["keypoint_loss"])
    np.testing.assert_allclose(uniform, np.log(side * side), rtol=1e-5)


def test_tiny_keypoint_model_overfits_stick_figures():
    """About 1 minute on 2 CPU cores: 240 steps, 4 images of 128 px with 1-2 figures.

    The step decay lets the last steps settle, so the result does not hinge on where
    the (multi-threaded, not bit-repeatable) trajectory is at the end.
    """
    config = KeypointTinyConfig(TRAIN_FLIP_PROB=0.0, DETECTION_MIN_CONFIDENCE=0.3, WARMUP_STEPS=20,
                                LR_STEPS=(170,))
    keras.utils.set_random_seed(0)
    ds = _figures(4, seed=1)
    model = MaskRCNN(config)
    model.compile()
    model.fit(build_dataset(ds, config, training=True, seed=0), epochs=1, steps_per_epoch=STEPS, verbose=0)
    metrics = evaluate_dataset(model.detect, ds, progress=False)
    assert set(metrics) >= {"bbox", "keypoints"} and "segm" not in metrics
    assert metrics["keypoints"]["AP"] >= 0.9, metrics["keypoints"]


STEPS = 240


# ----- COCO person keypoints -------------------------------------------------------------
def _write(tmp_path, data):
    path = tmp_path / "kp.json"
    path.write_text(json.dumps(data))
    return path


def _tiny_keypoint_json():
    images = [{"id": 1, "file_name": "a.png", "height": 20, "width": 30}]
    cats = [{"id": 1, "name": "person", "keypoints": COCO_NAMES[:3], "skeleton": [[1, 2], [1, 3]]}]
    ann = {"id": 77, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 36.0, "bbox": [2, 2, 6, 6],
           "segmentation": [[2, 2, 8, 2, 8, 8, 2, 8]], "keypoints": [3, 3, 2, 7, 3, 1, 0, 0, 0],
           "num_keypoints": 2}
    return {"images": images, "categories": cats, "annotations": [ann]}


def test_coco_keypoint_file_metadata_and_values(tmp_path):
    from mrcnn.data.coco import CocoDataset

    ds = CocoDataset(_write(tmp_path, _tiny_keypoint_json()), tmp_path)
    assert ds.num_keypoints == 3 and ds.keypoint_skeleton == [(0, 1), (0, 2)]
    assert ds.keypoint_flip_map == [(1, 2)]
    np.testing.assert_array_equal(ds.load_keypoints(0), [[[3, 3, 2], [7, 3, 1], [0, 0, 0]]])


@pytest.mark.parametrize(
    "keypoints, match",
    [
        ([3, 3, 2, 7, 3, 1], r"annotation 77 .*6 numbers, expected 3\*K = 9"),
        ([3, 3, 2, 7, 3, 3, 0, 0, 0], r"annotation 77 .*visibility flag 3"),
        ([3, 3, -1, 7, 3, 1, 0, 0, 0], r"annotation 77 .*visibility flag -1"),
    ],
)
def test_coco_bad_keypoints_name_the_annotation(tmp_path, keypoints, match):
    from mrcnn.data.coco import CocoDataset

    data = _tiny_keypoint_json()
    data["annotations"][0]["keypoints"] = keypoints
    with pytest.raises(ValueError, match=match):
        CocoDataset(_write(tmp_path, data), tmp_path)


needs_tiny_coco = pytest.mark.skipif(not os.path.exists(KP_FILE), reason=f"{KP_FILE} not present")


@pytest.fixture(scope="module")
def tiny_people():
    from mrcnn.data.coco import CocoDataset

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return CocoDataset(KP_FILE, os.path.join(TINY_COCO, "train2017"))


@needs_tiny_coco
def test_tiny_coco_loader_returns_pycocotools_keypoints(tiny_people):
    from mrcnn.evaluate import load_coco

    coco = load_coco(KP_FILE)
    assert tiny_people.num_keypoints == 17 and tiny_people.keypoint_names == COCO_NAMES
    assert len(tiny_people.keypoint_flip_map) == 8
    total = 0
    for i in tiny_people.image_ids:
        masks, class_ids = tiny_people.load_mask(i)
        kps = tiny_people.load_keypoints(i)
        ann_ids = coco.getAnnIds(imgIds=[tiny_people.coco_image_id(i)])
        expect = np.array([coco.anns[a]["keypoints"] for a in ann_ids], np.float32).reshape(-1, 17, 3)
        assert kps.shape == (masks.shape[-1], 17, 3)
        np.testing.assert_array_equal(kps, expect)
        total += int((kps[..., 2] > 0).any(-1).sum())
    assert total == 57


@needs_tiny_coco
def test_tiny_coco_gt_keypoints_as_detections_score_one(tiny_people):
    gt = dataset_to_coco(tiny_people)
    results = []
    for i in tiny_people.image_ids:
        _, class_ids = tiny_people.load_mask(i)
        kps = tiny_people.load_keypoints(i)
        anns = [a for a in gt.imgToAnns[tiny_people.coco_image_id(i)]]
        keep = (kps[..., 2] > 0).any(-1)
        boxes = np.array([[a["bbox"][1], a["bbox"][0], a["bbox"][1] + a["bbox"][3], a["bbox"][0] + a["bbox"][2]]
                          for a in anns], np.float32).reshape(-1, 4)
        results.append({"rois": boxes[keep], "class_ids": np.abs(class_ids[keep]),
                        "scores": np.ones(int(keep.sum())), "keypoints": kps[keep]})
    dets = detections_to_coco(results, [tiny_people.coco_image_id(i) for i in tiny_people.image_ids])
    metrics = coco_metrics(gt, dets, iou_types=("keypoints",))
    assert list(metrics["keypoints"]) == list(KEYPOINT_METRIC_NAMES)
    assert metrics["keypoints"]["AP"] == pytest.approx(1.0)
    assert metrics["per_class"]["keypoints"] == {"person": pytest.approx(1.0)}
    assert "keypoints" in format_metrics(metrics)


# ----- evaluation and drawing on synthetic data ------------------------------------------
def _gt_detector(ds, shift=0.0):
    """A detect_fn returning the ground truth (keypoints shifted right by ``shift`` px)."""
    from mrcnn.data.loader import boxes_from_masks

    state = {"next": 0}

    def detect(images):  # evaluate_dataset walks the ids in order, one image per call
        i = state["next"]
        state["next"] += 1
        masks, ids = ds.load_mask(i)
        kps = ds.load_keypoints(i).copy()
        kps[..., 0] += shift * (kps[..., 2] > 0)
        return [{"rois": boxes_from_masks(masks), "class_ids": ids, "scores": np.ones(len(ids)),
                 "keypoints": kps}]

    return detect


def test_evaluate_dataset_scores_keypoints_with_dataset_sigmas():
    ds = _figures(3, seed=4, unlabelled_prob=0.3)
    metrics = evaluate_dataset(_gt_detector(ds), ds, progress=False)
    assert set(metrics) == {"bbox", "keypoints", "per_class"}
    assert metrics["keypoints"]["AP"] == pytest.approx(1.0)
    gt = dataset_to_coco(ds)
    ann = gt.dataset["annotations"][0]
    assert len(ann["keypoints"]) == 21 and ann["num_keypoints"] == int((ds.load_keypoints(0)[0, :, 2] > 0).sum())
    assert gt.dataset["categories"][0]["skeleton"][0] == [1, 2]

    # Keypoints 2 px off: fine for the dataset's sigmas (0.1), poor for tight ones.
    loose = evaluate_dataset(_gt_detector(ds, 2.0), ds, progress=False, iou_types=("keypoints",))
    ds.keypoint_sigmas = [0.01] * 7
    tight = evaluate_dataset(_gt_detector(ds, 2.0), ds, progress=False, iou_types=("keypoints",))
    assert tight["keypoints"]["AP"] < 0.5 < loose["keypoints"]["AP"]
    ds.keypoint_sigmas = None  # K = 7: COCO's 17 sigmas do not apply
    with pytest.raises(ValueError, match="sigmas"):
        evaluate_dataset(_gt_detector(ds), ds, progress=False)


def test_draw_instances_draws_skeleton():
    image = np.zeros((64, 64, 3), np.uint8)
    kps = np.array([[[10, 10, 2], [50, 10, 2], [30, 50, 0]]], np.float32)
    out = visualize.draw_instances(image, None, None, np.array([1]), keypoints=kps,
                                   skeleton=[(0, 1), (1, 2)])
    changed = np.any(out != 0, axis=2)
    assert changed[10, 10] and changed[10, 50] and changed[10, 30]  # both dots and the line between
    assert not changed[50, 30] and not changed[30, 40]  # unlabelled keypoint and its edge not drawn


# ----- export ----------------------------------------------------------------------------
def test_saved_model_keypoint_outputs_match_detect(tmp_path):
    from mrcnn.export.saved_model import export_saved_model

    model = MaskRCNN(KeypointTinyConfig(DETECTION_MIN_CONFIDENCE=0.0, KEYPOINT_HEAD_CONV_CHANNELS=16,
                                        KEYPOINT_HEAD_NUM_CONVS=1, ROI_ALIGN_IMPLEMENTATION="portable"))
    image = np.random.default_rng(3).integers(0, 255, (90, 150, 3), dtype=np.uint8)
    expected = model.detect([image])[0]
    path = export_saved_model(model, str(tmp_path / "sm"), version=None)
    out = tf.saved_model.load(path).signatures["serving_default"](input_tensor=tf.constant(image[None]))
    assert "detection_masks" not in out  # keypoint-only model
    n = int(out["num_detections"][0])
    assert n == len(expected["scores"]) and n > 0
    kp = out["detection_keypoints"].numpy()[0, :n]
    k = KeypointTinyConfig.NUM_KEYPOINTS
    assert kp.shape == (n, k, 2)
    # (y, x) normalised -> COCO pixel-centre coordinates, as detect() returns them.
    np.testing.assert_allclose(kp[..., 1] * 150 - 0.5, expected["keypoints"][..., 0], atol=0.05)
    np.testing.assert_allclose(kp[..., 0] * 90 - 0.5, expected["keypoints"][..., 1], atol=0.05)
    np.testing.assert_allclose(out["detection_keypoint_scores"].numpy()[0, :n], expected["keypoints"][..., 2],
                               atol=1e-4)
