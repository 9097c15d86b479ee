"""detect() options: mask formats, DETECTION_MASK_MIN_SCORE, tiles, batches."""

import keras
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from mrcnn import MaskRCNN
from mrcnn.ops.mask_formats import box_masks_to_full
from tests.conftest import TinyConfig


class _Config(TinyConfig):
    DETECTION_MIN_CONFIDENCE = 0.0  # random weights: let every candidate through
    IMAGE_RESIZE_MODE = "pad32"


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(0)
    return MaskRCNN(_Config())


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, (96, 128, 3), dtype=np.uint8),
            rng.integers(0, 255, (128, 80, 3), dtype=np.uint8)]


def test_box_and_rle_mask_formats_equal_the_full_masks(model, images):
    full = model.detect(images)
    box = model.detect(images, mask_format="box")
    rle = model.detect(images, mask_format="rle")
    for f, b, r, image in zip(full, box, rle, images):
        assert len(f["scores"]) > 0
        np.testing.assert_array_equal(f["rois"], b["rois"])
        assert len(b["masks"]) == len(b["mask_offsets"]) == len(f["scores"])
        expanded = box_masks_to_full(b["masks"], b["mask_offsets"], image.shape[:2])
        assert np.array_equal(expanded, f["masks"])
        decoded = np.stack([mask_utils.decode(x) for x in r["masks"]], -1).astype(bool)
        assert np.array_equal(decoded, f["masks"])
    with pytest.raises(ValueError, match="mask_format"):
        model.detect(images, mask_format="png")


def test_mask_min_score_skips_masks_below_it_and_keeps_the_rest(model, images):
    full = model.detect(images)
    scores = np.concatenate([r["scores"] for r in full])
    cut = float(np.median(scores))
    gated = MaskRCNN(_Config(DETECTION_MASK_MIN_SCORE=cut))
    gated.set_weights(model.get_weights())
    out = gated.detect(images)
    for f, g in zip(full, out):
        np.testing.assert_array_equal(f["rois"], g["rois"])
        np.testing.assert_array_equal(f["scores"], g["scores"])
        high = g["scores"] >= cut
        assert 0 < high.sum() or not len(high)
        # At or above the cut: the same masks; below it: empty.
        assert np.array_equal(g["masks"][..., high], f["masks"][..., high])
        assert not g["masks"][..., ~high].any()
    # The graph itself gives zero mask probabilities below the cut.
    raw = gated({"images": np.stack([np.pad(images[0], ((0, 32), (0, 0), (0, 0)))]).astype(np.float32)})
    below = raw["scores"].numpy() < cut
    assert not raw["masks"].numpy()[below].any()


@pytest.mark.parametrize("field", ["DETECTION_MASK_MIN_SCORE", "DETECTION_MIN_CONFIDENCE"])
def test_an_image_without_masks_gives_empty_masks(model, images, field):
    # No detection reaches 1.0, so no RoI needs a mask head (this once
    # crashed: TensorFlow's CPU Conv2D returns its input for an empty batch).
    empty = MaskRCNN(_Config(**{field: 1.0}))
    empty.set_weights(model.get_weights())
    out = empty.detect(images)
    raw = empty({"images": np.stack([np.pad(images[0], ((0, 32), (0, 0), (0, 0)))]).astype(np.float32)})
    assert not raw["masks"].numpy().any()
    for r, image in zip(out, images):
        assert r["masks"].shape[:2] == image.shape[:2]
        assert not r["masks"].any()
    if field == "DETECTION_MIN_CONFIDENCE":
        assert all(len(r["scores"]) == 0 for r in out)
    else:
        assert all(len(r["scores"]) > 0 for r in out)


def test_detect_with_tiles_maps_back_to_the_image(model):
    """Every tiled detection is one the model makes on a tile run alone, shifted by that tile's
    offset: same class and score, its box the tile's box + (y0, x0) (or, for an instance merged
    across a seam, containing it), its mask crop the tile's at the shifted offset (unmerged). A
    wrong offset, swapped axes or an invented detection fails."""
    from mrcnn.inference.tiling import tile_grid

    rng = np.random.default_rng(1)
    image = rng.integers(0, 255, (200, 260, 3), dtype=np.uint8)
    out = model.detect(image, tile_size=128, tile_overlap=32, mask_format="box")[0]
    assert set(out) >= {"rois", "scores", "class_ids", "masks", "mask_offsets"}
    assert len(out["rois"]) > 0
    tiles = tile_grid(image.shape, 128, 32)
    alone = []  # (class, score, box in image coordinates, mask crop, offset in image coordinates)
    crops = [image[y0:y1, x0:x1] for y0, x0, y1, x1 in tiles]
    for (y0, x0, _, _), r in zip(tiles, model.detect(crops, mask_format="box")):
        for k in range(len(r["scores"])):
            alone.append((int(r["class_ids"][k]), float(r["scores"][k]), r["rois"][k] + [y0, x0, y0, x0],
                          r["masks"][k], r["mask_offsets"][k] + [y0, x0]))
    unmerged = 0
    for box, score, cid, crop, offset in zip(out["rois"], out["scores"], out["class_ids"], out["masks"],
                                             out["mask_offsets"]):
        same = [a for a in alone if a[0] == cid and abs(a[1] - score) <= 1e-4
                and np.all(a[2][:2] >= box[:2] - 1e-3) and np.all(a[2][2:] <= box[2:] + 1e-3)]
        assert same, (box, score, cid)
        exact = [a for a in same if np.abs(a[2] - box).max() <= 1e-3]
        if exact:
            unmerged += 1
            assert any(np.array_equal(a[4], offset) and np.array_equal(a[3], crop) for a in exact)
        y0, x0 = offset
        assert y0 + crop.shape[0] <= 200 and x0 + crop.shape[1] <= 260
    assert unmerged >= len(out["rois"]) // 2, (unmerged, len(out["rois"]))


def test_drawing_box_format_masks_equals_drawing_full_masks(model, images):
    from mrcnn.visualize import draw_instances

    full = model.detect(images[:1])[0]
    box = model.detect(images[:1], mask_format="box")[0]
    a = draw_instances(images[0], full["rois"], full["masks"], full["class_ids"], scores=full["scores"])
    b = draw_instances(images[0], box["rois"], box["masks"], box["class_ids"], scores=box["scores"],
                       mask_offsets=box["mask_offsets"])
    assert len(full["scores"]) > 0
    np.testing.assert_array_equal(a, b)
