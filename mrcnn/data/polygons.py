"""Polygon annotations -> instance masks, for Datasets whose labels are outlines.

Coordinate convention (the one of ``mask_to_polygons`` in :mod:`mrcnn.cli` and of the
data layer's boxes): continuous image coordinates with pixel ``(row r, column c)``
covering the square ``[c, c + 1) x [r, r + 1)``, so pixel edges are at integer
coordinates and pixel centres at ``+ 0.5``. A pixel belongs to the mask when its
centre lies inside the polygon. Consequences:

* ``polygons_to_mask(mask_to_polygons(m, tolerance=0), H, W) == m`` for any mask whose
  outline the tracer follows along pixel edges (e.g. a rectangle of pixels: the polygon
  ``[10, 5, 30, 5, 30, 15, 10, 15]`` fills rows 5..14 and columns 10..29, 200 pixels).
* A polygon traced through pixel centres (integer points, as some tools write them)
  covers the pixels whose centres are strictly inside, i.e. half a pixel less on each
  side than those tools draw; add 0.5 to such coordinates first.

COCO's ``segmentation`` polygons are in this frame too; pycocotools rasterises them
with a slightly different rule at the edges (it up-samples by 5), so a pixel cut by the
outline may differ between the two.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["polygons_to_mask", "polygons_to_masks"]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating))


def _as_parts(polygons: Any) -> list[np.ndarray]:
    """The polygon argument -> a list of float64 [K, 2] (x, y) vertex arrays."""
    array = None
    if isinstance(polygons, np.ndarray):
        array = polygons
    elif isinstance(polygons, (list, tuple)) and polygons and all(_is_number(v) for v in polygons):
        array = np.asarray(polygons, np.float64)
    if array is not None:  # one polygon: flat [x1, y1, ...] or [K, 2]
        parts = [array]
    elif isinstance(polygons, (list, tuple)) and polygons and all(
        isinstance(p, (list, tuple, np.ndarray)) and len(p) == 2 and all(_is_number(v) for v in p)
        for p in polygons
    ):
        parts = [np.asarray(polygons, np.float64)]  # one polygon as a list of (x, y) points
    elif isinstance(polygons, (list, tuple)):
        parts = [np.asarray(p, np.float64) for p in polygons]  # several parts of one instance
    else:
        raise ValueError(f"polygons must be a list or array, got {type(polygons).__name__}")
    out = []
    for k, part in enumerate(parts):
        if part.ndim == 1:
            if part.size % 2:
                raise ValueError(f"polygon {k} has {part.size} numbers; a flat polygon is [x1, y1, x2, y2, ...]")
            part = part.reshape(-1, 2)
        if part.ndim != 2 or part.shape[1] != 2:
            raise ValueError(f"polygon {k} has shape {part.shape}; expected [K, 2] (x, y) points")
        if part.shape[0] < 3:
            raise ValueError(f"polygon {k} has {part.shape[0]} point(s); a polygon needs at least 3")
        if not np.all(np.isfinite(part)):
            raise ValueError(f"polygon {k} has a NaN or infinite coordinate")
        out.append(part)
    return out


def polygons_to_mask(polygons: Any, height: int, width: int) -> np.ndarray:
    """Rasterise the polygon outline(s) of ONE instance into a bool ``[height, width]`` mask.

    Args:
        polygons: one polygon or several parts of one instance, each given as
            a COCO-style flat list ``[x1, y1, x2, y2, ...]``, a list of ``(x, y)``
            points (e.g. labelme's ``"points"``) or a float array ``[K, 2]`` of (x, y).
            A list of such polygons (COCO's ``segmentation`` list) is the union of
            its parts. Each polygon needs at least 3 points.
        height, width: the image size in pixels.

    Returns:
        bool ``[height, width]``: True where the pixel centre ``(c + 0.5, r + 0.5)``
        is inside the polygon (see the module docstring for the pixel-edge
        convention). Parts outside the image are clipped.

    Raises:
        ValueError: a polygon with an odd number of coordinates, fewer than 3
            points or a non-finite coordinate (the message says which part).
    """
    from skimage import draw

    height, width = int(height), int(width)
    if height < 1 or width < 1:
        raise ValueError(f"height and width must be >= 1, got {height}x{width}")
    mask = np.zeros((height, width), bool)
    for part in _as_parts(polygons):
        # skimage tests pixel centres at integer (row, col); ours are at +0.5.
        rr, cc = draw.polygon(part[:, 1] - 0.5, part[:, 0] - 0.5, shape=(height, width))
        mask[rr, cc] = True
    return mask


def polygons_to_masks(instances: Sequence[Any], height: int, width: int) -> np.ndarray:
    """bool ``[height, width, N]``: :func:`polygons_to_mask` of each of ``N`` instances."""
    masks = np.zeros((int(height), int(width), len(instances)), bool)
    for k, polygons in enumerate(instances):
        masks[:, :, k] = polygons_to_mask(polygons, height, width)
    return masks
