"""Data layer: resize rule, boxes, mini masks, flips, loader sanitising, tf.data pipeline."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import tensorflow as tf

from mrcnn.config import Config
from mrcnn.data import loader, transforms
from mrcnn.data.dataset import Dataset
from mrcnn.data.health import DataHealth
from mrcnn.data.pipeline import build_dataset
from mrcnn.inference.preprocess import prepare_image_batch
from samples.shapes.shapes import ShapesConfig, ShapesDataset


class ArrayDataset(Dataset):
    """Serves hand-made (image, masks, class_ids) triples; masks None = base placeholder."""

    def __init__(self, items):
        super().__init__()
        self.items = items
        self.add_class("t", 1, "a")
        self.add_class("t", 2, "b")
        for i in range(len(items)):
            self.add_image("t", image_id=i, path=f"/data/img{i}.png")
        self.prepare()

    def load_image(self, image_id):
        return self.items[image_id][0]

    def load_mask(self, image_id):
        _, masks, class_ids = self.items[image_id]
        if masks is None:
            return super().load_mask(image_id)
        return masks, class_ids


def small_config(**kw) -> Config:
    base = dict(NUM_CLASSES=3, IMAGE_MIN_DIM=64, IMAGE_MAX_DIM=64, MAX_GT_INSTANCES=5)
    base.update(kw)
    return Config(**base)


def rect_mask(h, w, y1, x1, y2, x2):
    m = np.zeros((h, w), bool)
    m[y1:y2, x1:x2] = True
    return m


# ----- resize rule ----------------------------------------------------------------------
def sizes(h, w, config):
    nh, nw = transforms.target_size(h, w, config)
    return int(nh), int(nw)


def test_target_size_torchvision_numbers():
    c = Config(NUM_CLASSES=2)  # 800 / 1333
    assert sizes(480, 640, c) == (800, 1066)
    assert sizes(640, 480, c) == (1066, 800)
    assert sizes(100, 1000, c) == (133, 1333)  # long side caps the scale
    assert sizes(800, 1333, c) == (800, 1333)
    s = ShapesConfig()
    assert sizes(128, 128, s) == (128, 128)
    assert sizes(96, 160, s) == (76, 128)
    assert sizes(256, 64, s) == (128, 32)


def test_target_size_matches_python_double_rule():
    c = Config(NUM_CLASSES=2)
    rng = np.random.default_rng(0)
    for h, w in rng.integers(1, 3000, size=(200, 2)):
        h, w = int(h), int(w)
        scale = min(800 / min(h, w), 1333 / max(h, w))
        expected = (max(math.floor(float(h) * scale), 1), max(math.floor(float(w) * scale), 1))
        assert sizes(h, w, c) == expected, (h, w)


def test_padded_size():
    c = Config(NUM_CLASSES=2)
    assert c.IMAGE_SHAPE == (1344, 1344, 3)
    assert [int(v) for v in transforms.padded_size(800, 1066, c)] == [1344, 1344]
    p = Config(NUM_CLASSES=2, IMAGE_RESIZE_MODE="pad32")
    assert [int(v) for v in transforms.padded_size(800, 1066, p)] == [800, 1088]
    assert [int(v) for v in transforms.padded_size(76, 128, p)] == [96, 128]
    assert [int(v) for v in transforms.padded_size(33, 1, p)] == [64, 32]


def test_resize_and_pad_bilinear_half_pixel_values():
    # 2x4 ramp, scale 2 -> 4x8; torch interpolate(align_corners=False) gives these.
    c = Config(NUM_CLASSES=2, IMAGE_MIN_DIM=4, IMAGE_MAX_DIM=8, IMAGE_RESIZE_MODE="pad32")
    ramp = np.tile(np.array([0, 10, 20, 30], np.uint8), (2, 1))
    image = np.stack([ramp] * 3, axis=-1)
    out, size, scale = transforms.resize_and_pad(image, c)
    assert out.dtype == tf.float32 and out.shape == (32, 32, 3)
    np.testing.assert_array_equal(size.numpy(), [4, 8])
    np.testing.assert_allclose(scale.numpy(), [2.0, 2.0])
    expected_row = [0, 2.5, 7.5, 12.5, 17.5, 22.5, 27.5, 30]
    for r in range(4):
        np.testing.assert_allclose(out[r, :8, 0].numpy(), expected_row, atol=1e-4)
    assert float(tf.reduce_max(tf.abs(out[4:]))) == 0 and float(tf.reduce_max(tf.abs(out[:, 8:]))) == 0


def test_resize_and_pad_square_static_and_constant():
    c = ShapesConfig()

    @tf.function(input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)])
    def f(x):
        return transforms.resize_and_pad(x, c)

    out, size, scale = f(np.full((96, 160, 3), 200, np.uint8))
    assert f.get_concrete_function().structured_outputs[0].shape == (128, 128, 3)
    np.testing.assert_array_equal(size.numpy(), [76, 128])
    np.testing.assert_allclose(scale.numpy(), [76 / 96, 128 / 160], rtol=1e-6)
    np.testing.assert_allclose(out[:76, :128].numpy(), 200.0, atol=1e-3)
    assert np.all(out[76:].numpy() == 0)


def test_resize_and_pad_masks_and_empty_stack():
    c = ShapesConfig()
    m = rect_mask(96, 160, 10, 20, 50, 100)[None].astype(np.uint8)
    out = transforms.resize_and_pad_masks(m, c)
    assert out.dtype == tf.uint8 and out.shape == (1, 128, 128)
    box = loader.boxes_from_masks(np.transpose(out.numpy(), (1, 2, 0)).astype(bool))[0]
    np.testing.assert_allclose(box, [10 * 0.8, 20 * 0.8, 50 * 0.8, 100 * 0.8], atol=1)
    empty = transforms.resize_and_pad_masks(np.zeros((0, 96, 160), np.uint8), c)
    assert empty.shape == (0, 128, 128)


# ----- boxes, mini masks, flips -----------------------------------------------------------
def test_boxes_from_masks_pixel_edge():
    h, w = 10, 12
    one = np.zeros((h, w), bool)
    one[2, 3] = True
    rect = rect_mask(h, w, 1, 2, 5, 7)
    ell = np.zeros((h, w), bool)
    ell[4:10, 0] = True
    ell[9, 0:12] = True
    empty = np.zeros((h, w), bool)
    boxes = loader.boxes_from_masks(np.stack([one, rect, ell, empty], axis=-1))
    assert boxes.dtype == np.float32 and boxes.shape == (4, 4)
    np.testing.assert_array_equal(
        boxes, [[2, 3, 3, 4], [1, 2, 5, 7], [4, 0, 10, 12], [0, 0, 0, 0]]
    )
    assert loader.boxes_from_masks(np.zeros((5, 5, 0), bool)).shape == (0, 4)


def test_mini_mask_round_trip_rectangle_and_pixel():
    h, w = 40, 50
    full = np.stack([rect_mask(h, w, 3, 7, 30, 19), rect_mask(h, w, 5, 5, 6, 6)], axis=-1)
    boxes = loader.boxes_from_masks(full)
    mini = loader.minimize_masks(full, boxes, (8, 8))
    assert mini.dtype == np.uint8 and mini.shape == (2, 8, 8)
    assert np.all(mini == 1)  # a rectangle fills its own box
    back = loader.expand_mini_masks(mini, boxes, h, w)
    assert back.shape == (h, w, 2) and back.dtype == bool
    np.testing.assert_array_equal(back, full)


def test_mini_mask_area_rule_and_disk_round_trip():
    m = np.zeros((4, 4, 1), bool)
    m[:, :2, 0] = True  # left half of a 4x4 box... box is only 4x2 though
    m[0, 3, 0] = True  # make the box the full 4x4
    mini = loader.minimize_masks(m, loader.boxes_from_masks(m), (2, 2))
    # top-right cell: 1 of 4 pixels -> 0; left cells fully covered -> 1
    np.testing.assert_array_equal(mini[0], [[1, 0], [1, 0]])

    yy, xx = np.mgrid[:100, :100]
    disk = ((yy - 50.5) ** 2 + (xx - 40.5) ** 2 <= 30**2)[:, :, None]
    boxes = loader.boxes_from_masks(disk)
    back = loader.expand_mini_masks(loader.minimize_masks(disk, boxes, (28, 28)), boxes, 100, 100)
    iou = (back & disk).sum() / (back | disk).sum()
    assert iou > 0.95


def test_flip_boxes_and_masks():
    h, w = 10, 10
    m = rect_mask(h, w, 1, 2, 5, 7)
    m[1, 2] = False
    box = loader.boxes_from_masks(m[:, :, None])
    fbox = transforms.flip_boxes(box, w).numpy()
    np.testing.assert_array_equal(fbox, [[1, 3, 5, 8]])
    fm = transforms.flip_masks(m[None]).numpy()[0]
    np.testing.assert_array_equal(fm, m[:, ::-1])
    np.testing.assert_array_equal(loader.boxes_from_masks(fm[:, :, None]), fbox)
    # A mini mask is flipped in its box frame: expanding it into the flipped box
    # gives the mirrored full mask.
    mini = loader.minimize_masks(m[:, :, None], box, (5, 5))
    flipped_mini = transforms.flip_masks(mini).numpy()
    np.testing.assert_array_equal(
        loader.expand_mini_masks(flipped_mini, fbox, h, w)[:, :, 0],
        loader.expand_mini_masks(mini, box, h, w)[:, ::-1, 0],
    )
    img = np.arange(2 * 3 * 3).reshape(2, 3, 3)
    np.testing.assert_array_equal(transforms.flip_image(img).numpy(), img[:, ::-1])


# ----- loader: images ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "image, expected",
    [
        (np.full((4, 5), 7, np.uint8), 7),
        (np.full((4, 5, 1), 9, np.uint8), 9),
        (np.full((4, 5, 4), 11, np.uint8), 11),
        (np.full((4, 5, 3), 65535, np.uint16), 255),
        (np.full((4, 5, 3), 257 * 3, np.uint16), 3),
        (np.full((4, 5, 3), 0.5, np.float32), 128),
        (np.full((4, 5, 3), 1.0, np.float64), 255),
        (np.full((4, 5, 3), 99.6, np.float32), 100),
        (np.full((4, 5, 3), 200, np.int64), 200),
        (np.full((4, 5, 3), 65535, np.int32), 255),
    ],
)
def test_image_conversions(image, expected):
    ds = ArrayDataset([(image, None, None)])
    rec = loader.load_instance(ds, 0, small_config())
    out = rec["image"]
    assert out.dtype == np.uint8 and out.shape == (4, 5, 3)
    assert np.all(out == expected)


def test_rgba_keeps_rgb_channels():
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2], rgba[..., 3] = 10, 20, 30, 40
    out = loader.sanitize_image(rgba)
    np.testing.assert_array_equal(out[0, 0], [10, 20, 30])


@pytest.mark.parametrize(
    "image",
    [
        np.ones((4, 5, 3), bool),
        np.full((4, 5, 3), -1.0, np.float32),
        np.full((4, 5, 3), 300.0, np.float32),
        np.full((4, 5, 3), np.nan, np.float32),
        np.full((4, 5, 3), -5, np.int16),
        np.zeros((4, 5, 2), np.uint8),
    ],
)
def test_bad_images_name_the_image(image):
    ds = ArrayDataset([(np.zeros((4, 5, 3), np.uint8), None, None), (image, None, None)])
    with pytest.raises(ValueError, match=r"image 1 \(path '/data/img1.png'\)"):
        loader.load_instance(ds, 1, small_config())


# ----- loader: masks and class ids ------------------------------------------------------------
def test_wrong_mask_size_names_image_and_shapes():
    ds = ArrayDataset([(np.zeros((20, 30, 3), np.uint8), np.ones((20, 31, 1), bool), [1])])
    with pytest.raises(ValueError) as err:
        loader.load_instance(ds, 0, small_config())
    msg = str(err.value)
    assert "image 0" in msg and "/data/img0.png" in msg
    assert "(20, 31, 1)" in msg and "(20, 30)" in msg


@pytest.mark.parametrize(
    "class_ids, pattern",
    [
        ([1], "one id per mask"),
        ([1, 2, 1], "one id per mask"),
        ([1, 0], "class id 0"),
        ([1, 3], "out of range"),
        ([1, -3], "out of range"),
        ([1.5, 1], "integers"),
    ],
)
def test_bad_class_ids_name_the_image(class_ids, pattern):
    masks = np.stack([rect_mask(20, 30, 0, 0, 5, 5), rect_mask(20, 30, 5, 5, 9, 9)], axis=-1)
    ds = ArrayDataset([(np.zeros((20, 30, 3), np.uint8), masks, np.asarray(class_ids))])
    with pytest.raises(ValueError, match=pattern) as err:
        loader.load_instance(ds, 0, small_config())
    assert "image 0" in str(err.value)


def test_empty_mask_dropped_and_warned_once():
    masks = np.stack([rect_mask(20, 30, 2, 3, 8, 9), np.zeros((20, 30), bool)], axis=-1)
    ds = ArrayDataset([(np.zeros((20, 30, 3), np.uint8), masks, np.array([1, 2]))] * 2)
    cfg = small_config(MINI_MASK_SHAPE=None)
    health = DataHealth()
    with pytest.warns(UserWarning, match=r"image 0 .*dropped 1 empty"):
        rec = loader.load_instance(ds, 0, cfg, health)
    np.testing.assert_array_equal(rec["class_ids"], [1])
    np.testing.assert_array_equal(rec["boxes"], [[2, 3, 8, 9]])
    assert rec["masks"].shape == (1, 20, 30) and rec["masks"].dtype == np.uint8
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second warning would raise
        loader.load_instance(ds, 1, cfg, health)
    assert health.counters["empty_masks_dropped"] == 2
    # Another pipeline's record starts at zero and warns again: nothing is per process.
    other = DataHealth()
    with pytest.warns(UserWarning, match=r"image 1 .*dropped 1 empty"):
        loader.load_instance(ds, 1, cfg, other)
    assert other.counters["empty_masks_dropped"] == 1 and health.counters["empty_masks_dropped"] == 2


def test_no_instance_image_kept_and_crowd_kept():
    image = np.zeros((20, 30, 3), np.uint8)
    ds = ArrayDataset([
        (image, None, None),  # base-class (0, 0, 0) placeholder
        (image, np.zeros((20, 30, 0), bool), np.zeros((0,), np.int32)),
        (image, rect_mask(20, 30, 1, 1, 4, 4)[:, :, None], np.array([-2])),
    ])
    cfg = small_config()
    for i in (0, 1):
        rec = loader.load_instance(ds, i, cfg)
        assert rec["boxes"].shape == (0, 4) and rec["class_ids"].shape == (0,)
        assert rec["masks"].shape == (0, 56, 56)
    rec = loader.load_instance(ds, 2, cfg)
    np.testing.assert_array_equal(rec["class_ids"], [-2])
    np.testing.assert_array_equal(rec["boxes"], [[1, 1, 4, 4]])


def test_truncation_keeps_largest_in_order():
    h, w = 30, 30
    masks = np.stack(
        [rect_mask(h, w, 0, 0, 3, 3), rect_mask(h, w, 0, 0, 1, 1), rect_mask(h, w, 10, 10, 20, 20),
         rect_mask(h, w, 5, 5, 7, 7)],
        axis=-1,
    )
    ds = ArrayDataset([(np.zeros((h, w, 3), np.uint8), masks, np.array([1, 2, 2, 1]))])
    health = DataHealth()
    with pytest.warns(UserWarning, match="MAX_GT_INSTANCES=2"):
        rec = loader.load_instance(ds, 0, small_config(MAX_GT_INSTANCES=2), health)
    np.testing.assert_array_equal(rec["class_ids"], [1, 2])
    np.testing.assert_array_equal(rec["boxes"], [[0, 0, 3, 3], [10, 10, 20, 20]])
    assert health.snapshot() == ({"empty_masks_dropped": 0, "instances_truncated": 2,
                                  "bad_samples_skipped": 0}, [])


# ----- tf.data pipeline -------------------------------------------------------------------
def test_pipeline_square_mini_masks_shapes_and_dtypes():
    cfg = ShapesConfig(MAX_GT_INSTANCES=6, MINI_MASK_SHAPE=(28, 28), TRAIN_PADDING="square")
    ds = ShapesDataset()
    ds.load_shapes(4, seed=1)
    data = build_dataset(ds, cfg, training=True, seed=3)
    spec = data.element_spec
    assert spec["images"].shape == (2, 128, 128, 3) and spec["images"].dtype == tf.float32
    assert spec["image_sizes"].shape == (2, 2) and spec["image_sizes"].dtype == tf.int32
    assert spec["gt_boxes"].shape == (2, 6, 4) and spec["gt_boxes"].dtype == tf.float32
    assert spec["gt_class_ids"].shape == (2, 6) and spec["gt_class_ids"].dtype == tf.int32
    assert spec["gt_masks"].shape == (2, 6, 28, 28) and spec["gt_masks"].dtype == tf.uint8
    batch = next(iter(data))
    images = batch["images"].numpy()
    assert 0 <= images.min() and images.max() <= 255
    np.testing.assert_array_equal(batch["image_sizes"].numpy(), [[128, 128]] * 2)
    cids = batch["gt_class_ids"].numpy()
    n = (cids != 0).sum(axis=1)
    assert np.all(n >= 1)
    for b in range(2):
        assert np.all(batch["gt_boxes"].numpy()[b, n[b]:] == 0)
        assert np.all(batch["gt_masks"].numpy()[b, : n[b]].max(axis=(1, 2)) == 1)
    # Same seed -> same stream (shuffle order and flips).
    again = next(iter(build_dataset(ds, cfg, training=True, seed=3)))
    np.testing.assert_array_equal(again["images"].numpy(), images)


def test_pipeline_full_masks_boxes_match_resized_masks_and_flip():
    # 96x160 images -> resized to 76x128 in a 128 square.
    cfg = ShapesConfig(MAX_GT_INSTANCES=4, MINI_MASK_SHAPE=None, TRAIN_FLIP_PROB=1.0, TRAIN_PADDING="square")
    ds = ShapesDataset()
    ds.load_shapes(2, height=96, width=160, seed=5)
    for training in (False, True):
        batch = next(iter(build_dataset(ds, cfg, training=training, shuffle=False, seed=0)))
        assert batch["gt_masks"].shape == (2, 4, 128, 128)
        np.testing.assert_array_equal(batch["image_sizes"].numpy(), [[76, 128]] * 2)
        for b in range(2):
            cids = batch["gt_class_ids"].numpy()[b]
            n = int((cids != 0).sum())
            masks = batch["gt_masks"].numpy()[b, :n].transpose(1, 2, 0).astype(bool)
            boxes = batch["gt_boxes"].numpy()[b, :n]
            np.testing.assert_allclose(boxes, loader.boxes_from_masks(masks), atol=1.0)
            # Compare against the loader's own boxes, scaled (and flipped when training).
            raw = loader.load_instance(ds, b, cfg)["boxes"]
            scale = np.array([76 / 96, 128 / 160] * 2, np.float32)
            expected = raw * scale
            if training:
                expected = transforms.flip_boxes(raw, 160).numpy() * scale
            np.testing.assert_allclose(boxes, expected, atol=1e-4)


def test_pipeline_pad32_and_negative_example():
    cfg = small_config(IMAGE_MIN_DIM=40, IMAGE_MAX_DIM=80, IMAGE_RESIZE_MODE="pad32")
    ds = ArrayDataset([
        (np.zeros((20, 30, 3), np.uint8), rect_mask(20, 30, 1, 2, 5, 6)[:, :, None], np.array([2])),
        (np.zeros((40, 20, 3), np.uint8), None, None),
        (np.zeros((20, 20, 3), np.uint8), None, None),
    ])
    batches = list(build_dataset(ds, cfg, training=False))
    assert len(batches) == 2  # evaluation keeps the remainder
    b = batches[0]
    # image 0 -> 40x60 (pad 64x64), image 1 -> 80x40 (pad 96x64): batch max 96x64
    assert b["images"].shape == (2, 96, 64, 3)
    np.testing.assert_array_equal(b["image_sizes"].numpy(), [[40, 60], [80, 40]])
    np.testing.assert_allclose(b["gt_boxes"].numpy()[0, 0], [2, 4, 10, 12])
    np.testing.assert_array_equal(b["gt_class_ids"].numpy(), [[2, 0, 0, 0, 0], [0] * 5])
    assert b["gt_masks"].shape == (2, 5, 56, 56)
    assert batches[1]["images"].shape == (1, 64, 64, 3)


def test_prepare_image_batch():
    cfg = small_config(IMAGE_MIN_DIM=40, IMAGE_MAX_DIM=80, IMAGE_RESIZE_MODE="pad32")
    images, sizes_, scales = prepare_image_batch(
        [np.full((20, 30), 50, np.uint8), np.full((40, 20, 3), 0.5, np.float32)], cfg
    )
    assert images.dtype == np.float32 and images.shape == (2, 96, 64, 3)
    np.testing.assert_array_equal(sizes_, [[40, 60], [80, 40]])
    np.testing.assert_allclose(scales, [[2, 2], [2, 2]])
    assert np.allclose(images[0, :40, :60], 50) and np.all(images[0, 40:] == 0)
    assert np.allclose(images[1, :80, :40], 128)


# ----- boxes supplied by the dataset ----------------------------------------------------------
class BoxDataset(ArrayDataset):
    def __init__(self, items, boxes, as_third=False):
        super().__init__(items)
        self.boxes, self.as_third = boxes, as_third

    def load_mask(self, image_id):
        masks, ids = super().load_mask(image_id)
        return (masks, ids, self.boxes) if self.as_third else (masks, ids)

    def load_boxes(self, image_id):
        return None if self.as_third else self.boxes


@pytest.mark.parametrize("as_third", [False, True])
def test_dataset_boxes_used_aligned_through_drops_and_clipped(as_third):
    image = np.zeros((20, 30, 3), np.uint8)
    masks = np.stack([rect_mask(20, 30, 2, 3, 8, 9), np.zeros((20, 30), bool), rect_mask(20, 30, 10, 5, 18, 25),
                      rect_mask(20, 30, 0, 0, 4, 4)], axis=-1)
    boxes = np.array([[1.5, 2.5, 8.5, 9.5], [0, 0, 5, 5], [np.nan, 0, 0, 0], [-3, -2, 4, 40]], np.float32)
    ds = BoxDataset([(image, masks, np.array([1, 2, 1, 2]))], boxes, as_third)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the empty mask is dropped (and warned about)
        record = loader.load_instance(ds, 0, small_config(MINI_MASK_SHAPE=(6, 6)))
    assert record["class_ids"].tolist() == [1, 1, 2]  # the empty second instance dropped with its box
    np.testing.assert_allclose(record["boxes"], [[1.5, 2.5, 8.5, 9.5], [10, 5, 18, 25], [0, 0, 4, 30]])
    # The mini mask is cut in the fractional box [1.5, 8.5) x [2.5, 9.5) (cells 7/6 px): the
    # border cells are 4/7 covered along one axis, the corner cells (4/7)^2 < 1/2.
    expected = np.ones((6, 6), np.uint8)
    expected[[0, 0, -1, -1], [0, -1, 0, -1]] = 0
    np.testing.assert_array_equal(record["masks"][0], expected)


def test_dataset_boxes_wrong_shape_names_the_image():
    image = np.zeros((20, 30, 3), np.uint8)
    ds = BoxDataset([(image, rect_mask(20, 30, 2, 3, 8, 9)[..., None], np.array([1]))], np.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"img0\.png.*\[1, 4\]"):
        loader.load_sample(ds, 0, small_config())


def test_training_batches_padded_to_their_largest_image_and_grouped_by_aspect():
    """TRAIN_PADDING="batch" (default): no square canvas; landscape and portrait never share a batch."""
    rng = np.random.default_rng(0)
    shapes = [(40, 70), (70, 40), (40, 60), (64, 40), (36, 64), (60, 30), (40, 72), (72, 40)]
    items = []
    for h, w in shapes:
        masks = rect_mask(h, w, 2, 3, 20, 25)[..., None]
        items.append((rng.integers(0, 255, (h, w, 3)).astype(np.uint8), masks, np.array([1])))
    cfg = small_config(IMAGE_MIN_DIM=64, IMAGE_MAX_DIM=128, MINI_MASK_SHAPE=(14, 14), TRAIN_FLIP_PROB=0.0)
    assert cfg.TRAIN_PADDING == "batch" and cfg.ASPECT_RATIO_GROUPING
    ds = ArrayDataset(items)
    seen = []
    for batch in build_dataset(ds, cfg, training=True, seed=4, batch_size=2).take(8):
        sizes = batch["image_sizes"].numpy()
        landscape = sizes[:, 1] > sizes[:, 0]
        assert landscape.all() or not landscape.any()  # one orientation per batch
        hp, wp = batch["images"].shape[1:3]
        assert (hp, wp) == (-(-sizes[:, 0].max() // 32) * 32, -(-sizes[:, 1].max() // 32) * 32)
        assert hp * wp < 128 * 128  # never the 128 square
        seen.append(bool(landscape[0]))
    assert set(seen) == {True, False}
    # Without grouping (or with the square canvas) the orientations mix / the canvas is fixed.
    square = build_dataset(ds, small_config(IMAGE_MIN_DIM=64, IMAGE_MAX_DIM=128, TRAIN_PADDING="square"),
                           training=True, seed=4, batch_size=2)
    assert square.element_spec["images"].shape[1:] == (128, 128, 3)
    # Evaluation pads by IMAGE_RESIZE_MODE ("square" here), whatever TRAIN_PADDING says.
    evaluation = build_dataset(ds, cfg, training=False, batch_size=2)
    assert evaluation.element_spec["images"].shape[1:] == (128, 128, 3)
