"""Tiled detection with a model trained on the synthetic shapes (issue #27 item 2).

Mosaics of 32 shapes pictures (128x128 each, 512x1024, as in the issue) are detected
by 128-pixel tiles overlapping by 48 with the trained shapes model
(``tests/fixtures/shapes_model``). Many instances are larger than the overlap, some
are cut by two seams and seen whole by no tile, and same-class instances touch. Two
untiled references:

* the issue's, untiled detection of the same region: the whole mosaic in one
  ``detect()`` at its own scale (the same weights, ``IMAGE_MIN_DIM`` 512 /
  ``IMAGE_MAX_DIM`` 1024, proposal and detection budgets 32 pictures' worth);
* a stricter one: each picture detected alone, where the model never sees the
  borders between pictures.

Counted against the ground truth (a detection matches an instance of its class at
mask IoU >= 0.5):

* tiled detection reports no more detections per instance than the untiled
  reference, overall and among the instances at seams (measured over 6 mosaics at
  score thresholds 0.05 to 0.9: 0.038 vs 0.206 at 0.05, 0.017 vs 0.044 at 0.5; the
  earlier merge had 0.086 vs 0.074 at 0.3);
* the merge loses no more than 0.02 of recall against what the tiles' own
  detections found (any tile's detection matching the instance);
* recall within 0.02 of the whole mosaic detected untiled (measured 2026-12-07 over
  mosaic seeds 0-5: tiled 0.936 / 0.976 / 1.000 / 0.988 / 0.972 / 0.890, whole mosaic
  0.897 / 0.918 / 0.937 / 0.925 / 0.917 / 0.841: tiling finds more, not less), and
  no more detections per instance than it (0.038 vs 0.154 on seed 0);
* recall within 0.04 of the pictures detected alone. The gap there (0.02 to 0.036
  over seeds 0-2, 0.11 on seed 5) is the same for the earlier merge rule and every
  variant tried, because it is the model's, as the whole-mosaic reference shows:
  this 20-minute CPU model misreads some shapes next to the border of two pictures
  (wrong class, or fragments), tiled or not, which no merge can recover.
  docs/inference.md.
"""

import numpy as np
import pytest

from mrcnn.data.synthetic import ShapesDemoConfig, render_shapes
from mrcnn.inference.tiling import detect_tiled, tile_grid
from mrcnn.ops.mask_formats import box_masks_to_full, crop_full_masks
from tests.shapes_model import load_shapes_model

TILE, OVERLAP, ROWS, COLS = 128, 48, 4, 8
SEEDS = (0, 1, 2)


class WholeMosaic(ShapesDemoConfig):
    """The fixture model at the mosaic's own scale, with 32 pictures' proposal and detection budgets."""

    IMAGE_MIN_DIM = ROWS * 128
    IMAGE_MAX_DIM = COLS * 128
    PRE_NMS_LIMIT_INFERENCE = ShapesDemoConfig.PRE_NMS_LIMIT_INFERENCE * ROWS * COLS
    POST_NMS_ROIS_INFERENCE = ShapesDemoConfig.POST_NMS_ROIS_INFERENCE * ROWS * COLS
    DETECTION_MAX_INSTANCES = ShapesDemoConfig.DETECTION_MAX_INSTANCES * ROWS * COLS


@pytest.fixture(scope="module")
def model():
    return load_shapes_model(ShapesDemoConfig())


@pytest.fixture(scope="module")
def whole_model():
    return load_shapes_model(WholeMosaic())


def _mosaic(seed: int):
    """ROWS x COLS shapes pictures side by side; ground truth in box format (crops, offsets)."""
    image = np.zeros((ROWS * 128, COLS * 128, 3), np.uint8)
    pictures, crops, offsets, class_ids = [], [], [], []
    for r in range(ROWS):
        for c in range(COLS):
            sample = render_shapes(seed, r * COLS + c, 128, 128)
            image[r * 128:(r + 1) * 128, c * 128:(c + 1) * 128] = sample["image"]
            pictures.append(((r * 128, c * 128), sample["image"]))
            for crop, off, cid in zip(*crop_full_masks(sample["masks"]), sample["class_ids"]):
                if crop.any():
                    crops.append(crop)
                    offsets.append(off + (r * 128, c * 128))
                    class_ids.append(int(cid))
    return image, pictures, crops, np.array(offsets), np.array(class_ids)


def _iou(a_crop, a_off, b_crop, b_off) -> float:
    r0, c0 = min(a_off[0], b_off[0]), min(a_off[1], b_off[1])
    r1 = max(a_off[0] + a_crop.shape[0], b_off[0] + b_crop.shape[0])
    c1 = max(a_off[1] + a_crop.shape[1], b_off[1] + b_crop.shape[1])
    if r1 - r0 >= a_crop.shape[0] + b_crop.shape[0] or c1 - c0 >= a_crop.shape[1] + b_crop.shape[1]:
        return 0.0  # apart
    shape = (r1 - r0, c1 - c0)
    a = box_masks_to_full([a_crop], [np.subtract(a_off, (r0, c0))], shape)[..., 0]
    b = box_masks_to_full([b_crop], [np.subtract(b_off, (r0, c0))], shape)[..., 0]
    return np.count_nonzero(a & b) / max(np.count_nonzero(a | b), 1)


def _matches(detections, crops, offsets, class_ids) -> np.ndarray:
    """Per ground-truth instance, the number of detections (crop, offset, class) matching it."""
    count = np.zeros(len(crops), int)
    for crop, off, cid in detections:
        for g in np.flatnonzero(class_ids == cid):
            if _iou(crops[g], offsets[g], crop, off) >= 0.5:
                count[g] += 1
    return count


def _detections(result, shift=(0, 0)):
    return [(c, o + shift, k) for c, o, k in zip(result["masks"], result["mask_offsets"], result["class_ids"])]


def _kinds(image_shape, crops, offsets, class_ids):
    """Boolean per instance: at a seam (seen by 2+ tiles), whole in no tile, cut by two
    seams (crosses a vertical and a horizontal tile border), larger than the overlap;
    and the number of same-class pairs that touch with one of them at a seam."""
    tiles = np.array(tile_grid(image_shape, TILE, OVERLAP))
    boxes = np.concatenate([offsets, offsets + np.array([c.shape for c in crops])], axis=1)
    seen = np.array([np.sum((tiles[:, 0] < b[2]) & (b[0] < tiles[:, 2]) & (tiles[:, 1] < b[3]) & (b[1] < tiles[:, 3]))
                     for b in boxes])
    whole = np.array([np.sum((tiles[:, 0] <= b[0]) & (b[2] <= tiles[:, 2]) & (tiles[:, 1] <= b[1]) & (b[3] <= tiles[:, 3]))
                      for b in boxes])
    rows = {int(v) for v in tiles[:, [0, 2]].ravel()} - {0, image_shape[0]}
    cols = {int(v) for v in tiles[:, [1, 3]].ravel()} - {0, image_shape[1]}
    two_seams = np.array([any(b[0] < y < b[2] for y in rows) and any(b[1] < x < b[3] for x in cols) for b in boxes])
    large = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) > OVERLAP
    touching = 0
    for i in range(len(crops)):
        for j in range(i + 1, len(crops)):
            if class_ids[i] == class_ids[j] and max(seen[i], seen[j]) >= 2:
                grown = np.pad(crops[i], 1)  # one pixel around i: touching = sharing an edge or corner
                grown = grown | np.roll(grown, 1, 0) | np.roll(grown, -1, 0)
                grown = grown | np.roll(grown, 1, 1) | np.roll(grown, -1, 1)
                touching += _iou(grown, offsets[i] - 1, crops[j], offsets[j]) > 0
    return seen >= 2, whole == 0, two_seams, large, touching


@pytest.mark.slow
def test_tiles_add_no_detections_per_instance_and_keep_recall(model, whole_model):
    tiled_counts, untiled_counts, raw_counts, whole_counts, kinds = [], [], [], [], []
    touching = 0
    for seed in SEEDS:
        image, pictures, crops, offsets, class_ids = _mosaic(seed)
        seen_by_tiles = []

        def recorded(tiles, mask_format="box", seen_by_tiles=seen_by_tiles):
            results = model.detect(tiles, mask_format=mask_format)
            seen_by_tiles.append(results)
            return results

        tiled = detect_tiled(recorded, image, tile_size=TILE, tile_overlap=OVERLAP, batch_size=8)
        tiled_counts.append(_matches(_detections(tiled), crops, offsets, class_ids))
        tiles = tile_grid(image.shape, TILE, OVERLAP)
        raw = [d for (y0, x0, _, _), r in zip(tiles, (r for batch in seen_by_tiles for r in batch))
               for d in _detections(r, (y0, x0))]
        raw_counts.append(_matches(raw, crops, offsets, class_ids))
        alone = model.detect([p for _, p in pictures], mask_format="box", batch_size=8)
        untiled = [d for (shift, _), r in zip(pictures, alone) for d in _detections(r, shift)]
        untiled_counts.append(_matches(untiled, crops, offsets, class_ids))
        whole = whole_model.detect([image], mask_format="box")[0]
        whole_counts.append(_matches(_detections(whole), crops, offsets, class_ids))
        *k, t = _kinds(image.shape[:2], crops, offsets, class_ids)
        kinds.append(k)
        touching += t
    tiled_n, untiled_n, raw_n, whole_n = (np.concatenate(c) for c in (tiled_counts, untiled_counts, raw_counts,
                                                                       whole_counts))
    at_seam, whole_in_none, two_seams, large = (np.concatenate(k) for k in zip(*kinds))
    # The hard cases are there.
    assert at_seam.sum() >= 80 and (at_seam & large).sum() >= 30, (at_seam.sum(), (at_seam & large).sum())
    assert whole_in_none.sum() >= 5 and two_seams.sum() >= 50, (whole_in_none.sum(), two_seams.sum())
    assert touching >= 5, touching

    def extra(n):
        return np.maximum(n - 1, 0).sum() / len(n)

    recall_t, recall_u, recall_raw = np.mean(tiled_n >= 1), np.mean(untiled_n >= 1), np.mean(raw_n >= 1)
    recall_w = np.mean(whole_n >= 1)
    print(f"instances {len(tiled_n)} (at seams {at_seam.sum()}, whole in no tile {whole_in_none.sum()}, "
          f"two seams {two_seams.sum()}, touching pairs {touching}); "
          f"tiled: recall {recall_t:.3f}, extra per instance {extra(tiled_n):.3f}; "
          f"whole mosaic untiled: recall {recall_w:.3f}, extra per instance {extra(whole_n):.3f}; "
          f"pictures alone: recall {recall_u:.3f}, extra per instance {extra(untiled_n):.3f}; "
          f"tiles before the merge: recall {recall_raw:.3f}")
    # The contract, against untiled detection of the same region.
    assert extra(tiled_n) <= extra(whole_n)
    assert extra(tiled_n[at_seam]) <= extra(whole_n[at_seam])
    assert recall_t >= recall_w - 0.02, (recall_t, recall_w)
    # Against the pictures detected alone.
    assert extra(tiled_n) <= extra(untiled_n)
    assert extra(tiled_n[at_seam]) <= extra(untiled_n[at_seam])
    assert recall_t >= recall_raw - 0.02, (recall_t, recall_raw)
    assert recall_t >= recall_u - 0.04, (recall_t, recall_u)
