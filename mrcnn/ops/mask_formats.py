"""Compact instance-mask formats in NumPy: box crops and COCO RLE.

A full-image mask stack ``[H, W, N]`` costs H x W x N bytes (100 masks of an
8k x 8k image: 6.4 GB). The two compact forms here cost what the instances
cover:

- **box**: one bool crop per instance, ``crops[i]`` ``[h_i, w_i]``, with
  ``offsets[i] = (y0, x0)``, the image pixel of the crop's top-left cell; the
  crop spans the pixels that :func:`mrcnn.ops.masks.paste_masks` may set for the
  instance (its box plus the one-pixel bilinear fringe, clipped to the image), so
  pasting into crops and expanding gives exactly ``paste_masks``' result.
- **rle**: COCO's compressed RLE dicts ``{"size": [H, W], "counts": str}``
  (column-major, as pycocotools), computed from the crop without building the
  full-size mask.

and, for one full-size mask, :func:`mask_to_rle` and :func:`mask_to_polygons` (COCO
polygons), the forms ``mrcnn detect`` writes (also importable from ``mrcnn.cli``).
"""

from __future__ import annotations

import numpy as np

from mrcnn.ops.masks import _bilinear_zero_pad


def _paste_region(box: np.ndarray, image_shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """(r0, r1, c0, c1): the pixels ``paste_masks`` may set for ``box``, clipped."""
    height, width = image_shape
    y1, x1, y2, x2 = (float(v) for v in box)
    r0, r1 = max(int(np.floor(y1)) - 1, 0), min(int(np.ceil(y2)) + 1, height)
    c0, c1 = max(int(np.floor(x1)) - 1, 0), min(int(np.ceil(x2)) + 1, width)
    return r0, max(r1, r0), c0, max(c1, c0)


def paste_masks_in_boxes(
    masks: np.ndarray, boxes: np.ndarray, image_shape: tuple[int, int], threshold: float = 0.5
) -> tuple[list[np.ndarray], np.ndarray]:
    """Resample each box's mask into its own image region (the "box" format).

    Same resampling as :func:`mrcnn.ops.masks.paste_masks`.

    Args:
      masks: [N, M, M] float probabilities.
      boxes: [N, 4] (y1, x1, y2, x2) in image pixels.
      image_shape: (H, W).
    Returns:
      crops: N bool arrays [h_i, w_i]; offsets: int32 [N, 2] (y0, x0).
    """
    crops, offsets = [], np.zeros((len(boxes), 2), np.int32)
    for i, box in enumerate(np.asarray(boxes, np.float32)):
        r0, r1, c0, c1 = _paste_region(box, image_shape)
        offsets[i] = (r0, c0)
        y1, x1, y2, x2 = (float(v) for v in box)
        if y2 - y1 <= 0 or x2 - x1 <= 0 or r1 <= r0 or c1 <= c0:
            crops.append(np.zeros((r1 - r0, c1 - c0), bool))
            continue
        mh, mw = masks[i].shape
        u = (np.arange(r0, r1) + 0.5 - y1) / (y2 - y1) * mh - 0.5
        v = (np.arange(c0, c1) + 0.5 - x1) / (x2 - x1) * mw - 0.5
        crops.append(_bilinear_zero_pad(masks[i].astype(np.float32), u, v) > threshold)
    return crops, offsets


def box_masks_to_full(
    crops: list[np.ndarray], offsets: np.ndarray, image_shape: tuple[int, int]
) -> np.ndarray:
    """Box-format masks -> bool [H, W, N]."""
    height, width = image_shape
    out = np.zeros((height, width, len(crops)), bool)
    for i, (crop, (y0, x0)) in enumerate(zip(crops, np.asarray(offsets).reshape(-1, 2))):
        h = min(crop.shape[0], height - y0)
        w = min(crop.shape[1], width - x0)
        if h > 0 and w > 0:
            out[y0 : y0 + h, x0 : x0 + w, i] = crop[:h, :w]
    return out


def crop_full_masks(masks: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """bool [H, W, N] -> box format, each crop the tight bounding box of its pixels."""
    crops, offsets = [], np.zeros((masks.shape[-1], 2), np.int32)
    for i in range(masks.shape[-1]):
        m = masks[..., i]
        rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
        if rows.size == 0:
            crops.append(np.zeros((0, 0), bool))
            continue
        offsets[i] = (rows[0], cols[0])
        crops.append(m[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].copy())
    return crops, offsets


def box_mask_to_rle(crop: np.ndarray, offset, image_shape: tuple[int, int]) -> dict:
    """One box-format mask -> COCO compressed RLE ``{"size": [H, W], "counts": str}``.

    Memory is H x (crop width), never H x W: only the columns the crop spans are
    laid out (column-major, as COCO), the zero runs before and after are counted.
    """
    from pycocotools import mask as mask_utils

    height, width = (int(s) for s in image_shape)
    y0, x0 = (int(v) for v in offset)
    crop = np.asarray(crop, bool)
    h = max(min(crop.shape[0], height - y0), 0)
    w = max(min(crop.shape[1], width - x0), 0)
    if h == 0 or w == 0 or not crop[:h, :w].any():
        counts = [height * width]
    else:
        columns = np.zeros((w, height), bool)  # column-major: one row per image column
        columns[:, y0 : y0 + h] = crop[:h, :w].T
        flat = columns.reshape(-1)
        change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
        edges = np.concatenate([[0], change, [flat.size]])
        runs = np.diff(edges)
        lead = x0 * height
        if flat[0]:  # COCO runs start with zeros
            runs = np.concatenate([[lead], runs])
        else:
            runs[0] += lead
        tail = (width - x0 - w) * height
        if flat[-1]:
            runs = np.concatenate([runs, [tail]]) if tail else runs
        else:
            runs[-1] += tail
        counts = [int(r) for r in runs]
    rle = mask_utils.frPyObjects({"size": [height, width], "counts": counts}, height, width)
    counts_str = rle["counts"]
    return {"size": [height, width],
            "counts": counts_str.decode("ascii") if isinstance(counts_str, bytes) else counts_str}


def box_masks_to_rle(crops: list[np.ndarray], offsets: np.ndarray, image_shape: tuple[int, int]) -> list[dict]:
    """Box-format masks -> a list of COCO compressed RLE dicts."""
    return [box_mask_to_rle(c, o, image_shape) for c, o in zip(crops, np.asarray(offsets).reshape(-1, 2))]


def mask_to_rle(mask: np.ndarray) -> dict:
    """bool [H, W] -> COCO RLE ``{"size": [H, W], "counts": str}`` (pycocotools' compressed
    format, what ``pycocotools.mask.decode`` and COCO results files take)."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": rle["counts"].decode("ascii")}


def mask_to_polygons(mask: np.ndarray, tolerance: float = 1.0) -> list[list[float]]:
    """bool [H, W] -> outlines as COCO polygons ``[x1, y1, x2, y2, ...]`` (pixel corners:
    the contour of the mask's pixel squares, simplified to within ``tolerance`` pixels)."""
    from skimage import measure

    padded = np.pad(mask.astype(np.uint8), 1)  # closes contours that touch the border
    polygons = []
    for contour in measure.find_contours(padded, 0.5):
        contour = measure.approximate_polygon(contour, tolerance) - 1.0  # undo the pad
        if len(contour) < 3:
            continue
        # find_contours gives (row, col) of pixel centres; +0.5 puts them on pixel edges.
        xy = np.stack([contour[:, 1] + 0.5, contour[:, 0] + 0.5], axis=1)
        polygons.append([round(float(v), 2) for v in xy.ravel()])
    return polygons
