"""Augmentation inside tf.data: image, masks (full and mini), boxes and keypoints move together."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from mrcnn.config import Config
from mrcnn.data import loader
from mrcnn.data.dataset import Dataset
from mrcnn.data.pipeline import build_dataset

SIDE = 100
# Axis-aligned rectangles (y1, x1, y2, x2) in original pixels, class 1.
RECTS = [(5, 5, 25, 30), (40, 10, 90, 35), (20, 50, 60, 95), (70, 60, 98, 98), (45, 45, 55, 55)]


class GradientDataset(Dataset):
    """Image pixel (y, x) = (2y, 2x, 7): the output image tells where it came from.

    Keypoints (K = 2): the rectangle's top-left pixel and its centre pixel (COCO
    pixel-index convention).
    """

    def __init__(self, count=4):
        super().__init__()
        self.add_class("g", 1, "rect")
        for i in range(count):
            self.add_image("g", image_id=i, path=None)
        self.prepare()

    def load_image(self, image_id):
        y, x = np.mgrid[:SIDE, :SIDE]
        return np.stack([2 * y, 2 * x, np.full_like(y, 7)], axis=-1).astype(np.uint8)

    def load_mask(self, image_id):
        masks = np.zeros((SIDE, SIDE, len(RECTS)), bool)
        for i, (y1, x1, y2, x2) in enumerate(RECTS):
            masks[y1:y2, x1:x2, i] = True
        return masks, np.ones(len(RECTS), np.int32)

    def load_keypoints(self, image_id):
        kp = np.zeros((len(RECTS), 2, 3), np.float32)
        for i, (y1, x1, y2, x2) in enumerate(RECTS):
            kp[i, 0] = (x1, y1, 2)
            kp[i, 1] = ((x1 + x2) // 2, (y1 + y2) // 2, 2)
        return kp


def config(**kw) -> Config:
    base = dict(NUM_CLASSES=2, IMAGE_MIN_DIM=SIDE, IMAGE_MAX_DIM=SIDE, IMAGE_RESIZE_MODE="pad32",
                MAX_GT_INSTANCES=8, MINI_MASK_SHAPE=None, TRAIN_FLIP_PROB=0.0, IMAGES_PER_GPU=1)
    base.update(kw)
    return Config(**base)


def batches(cfg, n, seed=0, **kw):
    ds = build_dataset(GradientDataset(), cfg, training=True, seed=seed, batch_size=1, **kw)
    return [{k: v.numpy()[0] for k, v in b.items()} for b in ds.take(n)]


def valid(b):
    keep = b["gt_class_ids"] != 0
    out = {k: b[k][keep] for k in ("gt_boxes", "gt_masks", "gt_class_ids")}
    if "gt_keypoints" in b:
        out["gt_keypoints"] = b["gt_keypoints"][keep]
    return out


def test_crop_at_scale_one_is_exact_for_image_boxes_masks_keypoints():
    """Scale 1 (no resampling): the window offset is read off the image, everything else follows."""
    cfg = config(TRAIN_CROP_SIZE=48, NUM_KEYPOINTS=2)
    seen_drop = False
    for b in batches(cfg, 8):
        h, w = b["image_sizes"]
        assert (h, w) == (48, 48) and b["images"].shape == (64, 64, 3)
        y0, x0 = int(b["images"][0, 0, 0]) // 2, int(b["images"][0, 0, 1]) // 2
        # The image is exactly the window of the original.
        np.testing.assert_array_equal(b["images"][:h, :w], GradientDataset().load_image(0)[y0:y0 + h, x0:x0 + w])
        assert np.all(b["images"][h:] == 0) and np.all(b["images"][:, w:] == 0)
        expected = []
        for i, (y1, x1, y2, x2) in enumerate(RECTS):
            box = np.clip(np.array([y1 - y0, x1 - x0, y2 - y0, x2 - x0], np.float32), 0, [h, w, h, w])
            if box[2] > box[0] and box[3] > box[1]:
                expected.append((i, box))
        seen_drop |= len(expected) < len(RECTS)
        v = valid(b)
        assert len(v["gt_boxes"]) == len(expected)
        for (i, box), got_box, mask, kp in zip(expected, v["gt_boxes"], v["gt_masks"], v["gt_keypoints"]):
            np.testing.assert_allclose(got_box, box, atol=1e-5)
            y1, x1, y2, x2 = box.astype(int)
            want = np.zeros((64, 64), np.uint8)
            want[y1:y2, x1:x2] = 1
            np.testing.assert_array_equal(mask, want)
            ry1, rx1, ry2, rx2 = RECTS[i]
            for k, (x, y) in enumerate([(rx1, ry1), ((rx1 + rx2) // 2, (ry1 + ry2) // 2)]):
                cx, cy = x + 0.5 - x0, y + 0.5 - y0  # pixel-edge frame, shifted
                if 0 <= cx <= w and 0 <= cy <= h:
                    np.testing.assert_allclose(kp[k], [cx, cy, 2], atol=1e-5)
                else:
                    np.testing.assert_array_equal(kp[k], [0, 0, 0])
    assert seen_drop  # some windows cut instances out entirely


def _box_of(mask):
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return np.array([rows[0], cols[0], rows[-1] + 1, cols[-1] + 1], np.float32)


def test_jitter_and_crop_full_masks_agree_with_boxes_and_image():
    cfg = config(TRAIN_SCALE_JITTER=(0.5, 2.0), TRAIN_CROP_SIZE=64)
    sizes = set()
    for b in batches(cfg, 8, seed=3):
        h, w = b["image_sizes"]
        sizes.add((int(h), int(w)))
        v = valid(b)
        # The image tells the original position of every output pixel: (2y, 2x) scaled.
        for box, mask in zip(v["gt_boxes"], v["gt_masks"]):
            assert mask.any() and not mask[h:].any() and not mask[:, w:].any()
            # Axis-aligned rectangles: the clipped box is the tight box of the cut mask (+-1 px
            # for the bilinear mask resize).
            np.testing.assert_allclose(_box_of(mask), box, atol=1.01)
    assert len(sizes) > 1 and max(max(s) for s in sizes) <= 64


def test_mini_masks_follow_the_same_geometry_as_full_masks():
    full = batches(config(TRAIN_SCALE_JITTER=(0.6, 1.8), TRAIN_CROP_SIZE=64), 6, seed=5)
    mini = batches(config(TRAIN_SCALE_JITTER=(0.6, 1.8), TRAIN_CROP_SIZE=64, MINI_MASK_SHAPE=(28, 28)), 6, seed=5)
    ious = []
    for bf, bm in zip(full, mini):
        np.testing.assert_array_equal(bf["images"], bm["images"])  # same seed, same draws
        vf, vm = valid(bf), valid(bm)
        by_box = {tuple(np.round(b, 3)): m for b, m in zip(vm["gt_boxes"], vm["gt_masks"])}
        for box, mask in zip(vf["gt_boxes"], vf["gt_masks"]):
            mini_mask = by_box[tuple(np.round(box, 3))]  # every full-mask instance is in the mini run
            expanded = loader.expand_mini_masks(mini_mask[None], box[None], 64, 64)[:, :, 0]
            inter = np.logical_and(expanded, mask).sum()
            ious.append(inter / np.logical_or(expanded, mask).sum())
    print(f"mini vs full mask IoU: min {min(ious):.3f} mean {np.mean(ious):.3f} over {len(ious)}")
    assert len(ious) >= 10 and min(ious) > 0.95 and np.mean(ious) > 0.99


def test_unclipped_mini_mask_kept_bit_for_bit():
    from mrcnn.data.augment import _resample_mini_masks

    rng = np.random.default_rng(0)
    masks = tf.constant(rng.integers(0, 2, (3, 28, 28)).astype(np.uint8))
    boxes = tf.constant([[0, 0, 10, 20], [5, 5, 50, 9], [1, 2, 3, 4]], tf.float32)
    np.testing.assert_array_equal(_resample_mini_masks(masks, boxes, boxes).numpy(), masks.numpy())
    # Left half of a box: the left half of the cells, resampled x2 along x.
    half = tf.constant([[0, 0, 10, 10], [5, 5, 50, 7], [1, 2, 3, 3]], tf.float32)
    out = _resample_mini_masks(tf.constant(np.tile(np.arange(28) < 14, (3, 28, 1)).astype(np.uint8)), boxes, half)
    assert out.numpy().min() == 1


def test_multi_scale_short_side_choices_and_inference_size():
    cfg = config(IMAGE_MIN_DIM=(32, 48, 64))
    got = {int(b["image_sizes"][0]) for b in batches(cfg, 16, seed=1)}
    assert got == {32, 48, 64}
    evaluation = build_dataset(GradientDataset(), cfg, training=False, batch_size=1)
    assert next(iter(evaluation))["image_sizes"].numpy()[0].tolist() == [64, 64]


def test_seeded_pipeline_is_reproducible():
    cfg = config(TRAIN_SCALE_JITTER=(0.5, 1.5), TRAIN_CROP_SIZE=48, IMAGE_MIN_DIM=(60, 80, 100),
                 MINI_MASK_SHAPE=(14, 14), TRAIN_FLIP_PROB=0.5)
    a, b, c = batches(cfg, 5, seed=9), batches(cfg, 5, seed=9), batches(cfg, 5, seed=10)
    for x, y in zip(a, b):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])
    assert any(not np.array_equal(x["images"], z["images"]) for x, z in zip(a, c))


def invert(sample, seed):
    """A user hook: photometric inversion plus a seeded random brightness shift."""
    shift = tf.random.stateless_uniform([], seed, 0, 10, tf.int32)
    image = 245 - tf.cast(sample["image"], tf.int32) + shift
    return {**sample, "image": tf.cast(image, tf.uint8)}


def test_user_hook_runs_in_training_only_and_is_seeded():
    cfg = config()
    original = GradientDataset().load_image(0).astype(np.float32)
    first = batches(cfg, 3, seed=2, augment=invert)
    again = batches(cfg, 3, seed=2, augment=invert)
    for b, b2 in zip(first, again):
        delta = b["images"][:SIDE, :SIDE] - (245 - original)
        assert np.all(delta == delta.flat[0]) and 0 <= delta.flat[0] < 10
        np.testing.assert_array_equal(b["images"], b2["images"])
    evaluation = next(iter(build_dataset(GradientDataset(), cfg, training=False, batch_size=1, augment=invert)))
    np.testing.assert_array_equal(evaluation["images"].numpy()[0, :SIDE, :SIDE], original)


def test_augment_spec_and_bad_values():
    from mrcnn.data.augment import resolve_augment

    assert resolve_augment("mrcnn.data.transforms:flip_image").__name__ == "flip_image"
    with pytest.raises(ValueError, match="AUGMENT"):
        resolve_augment("mrcnn.data.transforms:nope")
    with pytest.raises(ValueError, match="TRAIN_SCALE_JITTER"):
        config(TRAIN_SCALE_JITTER=(2.0, 1.0))
    with pytest.raises(ValueError, match="IMAGE_MIN_DIM"):
        config(IMAGE_MIN_DIM=(64, 200))
    with pytest.raises(ValueError, match="TRAIN_CROP_SIZE"):
        config(TRAIN_CROP_SIZE=8)


def test_large_scale_jitter_on_the_square_canvas():
    """torchvision's lsj recipe in small: square canvas, jitter (0.1, 2.0), crops implied by the canvas."""
    cfg = config(IMAGE_MIN_DIM=64, IMAGE_MAX_DIM=64, TRAIN_PADDING="square", TRAIN_SCALE_JITTER=(0.1, 2.0))
    ds = build_dataset(GradientDataset(), cfg, training=True, seed=7, batch_size=1)
    assert ds.element_spec["images"].shape[1:] == (64, 64, 3)  # static: the crop is the canvas
    sides = []
    for b in batches(cfg, 12, seed=7):
        h, w = (int(v) for v in b["image_sizes"])
        sides.append(h)
        assert h == w and 6 <= h <= 64  # square input: 100 * 0.64 * [0.1, 2.0], cropped at 64
        v = valid(b)
        assert np.all(v["gt_boxes"][:, 2:] <= h + 1e-4) and np.all(v["gt_boxes"] >= 0)
    assert min(sides) < 32 and max(sides) == 64  # both shrunk and cropped samples
