"""Compact mask formats: box crops and RLE equal the full-size paste exactly."""

import numpy as np
from pycocotools import mask as mask_utils

from mrcnn.ops.mask_formats import (
    box_mask_to_rle,
    box_masks_to_full,
    box_masks_to_rle,
    crop_full_masks,
    paste_masks_in_boxes,
)
from mrcnn.ops.masks import paste_masks


def _case(rng, n=12, shape=(97, 133)):
    h, w = shape
    y1 = rng.uniform(-10, h - 5, n)
    x1 = rng.uniform(-10, w - 5, n)
    boxes = np.stack([y1, x1, y1 + rng.uniform(0.5, 60, n), x1 + rng.uniform(0.5, 60, n)], 1)
    boxes = np.clip(boxes, 0, [h, w, h, w]).astype(np.float32)
    boxes[0] = [0, 0, h, w]  # touches every border
    boxes[1] = [5, 5, 5, 9]  # zero height
    masks = rng.uniform(size=(n, 28, 28)).astype(np.float32)
    return masks, boxes, shape


def test_box_format_expands_to_paste_masks_exactly():
    rng = np.random.default_rng(0)
    masks, boxes, shape = _case(rng)
    full = paste_masks(masks, boxes, shape, 0.5)
    crops, offsets = paste_masks_in_boxes(masks, boxes, shape, 0.5)
    np.testing.assert_array_equal(box_masks_to_full(crops, offsets, shape), full)
    # Each crop is no larger than its box plus the one-pixel fringe.
    for crop, box in zip(crops, boxes):
        assert crop.shape[0] <= np.ceil(box[2]) - np.floor(box[0]) + 2
        assert crop.shape[1] <= np.ceil(box[3]) - np.floor(box[1]) + 2


def test_rle_from_crops_equals_pycocotools_encode_of_the_full_mask():
    rng = np.random.default_rng(1)
    masks, boxes, shape = _case(rng)
    full = paste_masks(masks, boxes, shape, 0.5)
    crops, offsets = paste_masks_in_boxes(masks, boxes, shape, 0.5)
    rles = box_masks_to_rle(crops, offsets, shape)
    want = mask_utils.encode(np.asfortranarray(full.astype(np.uint8)))
    for i, rle in enumerate(rles):
        assert rle["size"] == list(shape)
        assert rle["counts"] == want[i]["counts"].decode("ascii"), i
        np.testing.assert_array_equal(mask_utils.decode(rle).astype(bool), full[..., i])


def test_rle_edge_cases_first_and_last_pixel_set_and_empty():
    shape = (6, 5)
    full = np.zeros(shape, bool)
    full[0, 0] = full[-1, -1] = True
    crops, offsets = crop_full_masks(full[..., None])
    rle = box_mask_to_rle(crops[0], offsets[0], shape)
    np.testing.assert_array_equal(mask_utils.decode(rle).astype(bool), full)
    empty = box_mask_to_rle(np.zeros((2, 2), bool), (1, 1), shape)
    assert mask_utils.area(empty) == 0
    crops, offsets = crop_full_masks(np.zeros((4, 4, 1), bool))
    assert crops[0].size == 0


def test_crop_full_masks_round_trip():
    rng = np.random.default_rng(2)
    full = rng.uniform(size=(40, 50, 5)) > 0.97
    crops, offsets = crop_full_masks(full)
    np.testing.assert_array_equal(box_masks_to_full(crops, offsets, (40, 50)), full)
