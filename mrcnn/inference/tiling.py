"""Detection on large images by overlapping tiles (microscopy slides, aerial images).

The image is cut into ``tile_size`` x ``tile_size`` tiles that overlap by
``tile_overlap`` pixels (the last row and column of tiles end at the image edge,
so every tile is full-size when the image is); the model runs on batches of
tiles; boxes, masks and keypoints are shifted back to image coordinates; and
duplicates across seams are merged:

- Two detections of the same class from different tiles are the same instance
  when their masks agree where the two tiles overlap: mask IoU inside the shared
  region above ``merge_threshold``. (Whole-mask IoU would not do: the part of an
  instance cut by a seam can be a small piece of the whole one the neighbouring
  tile saw, but inside the region both tiles cover the two views coincide.)
- The detections linked this way (transitively: an instance cut by two seams is
  seen by up to four tiles) are one instance, reported once. Each tile's view is
  its best-scoring detection of the instance; the instance's extent is the union
  of the views' boxes. A tile that holds the whole extent at least a pixel away
  from its seams saw the instance whole, and its view is kept (the best-scoring
  one when several tiles did). Otherwise no tile saw it whole (an instance larger
  than the overlap, or one cut by two seams) and the views are merged: union of
  the masks, union of the boxes, the best score. (The extent, not each view's own
  box, decides: a view of a cut piece can have a box a few pixels short of the
  seam and look whole on its own.) A tile's other detections of a linked instance
  are dropped with it: the model's own duplicates of an instance at a seam are
  reported once; elsewhere they are left as the model gave them.

Masks are kept in the compact box format throughout (see
:mod:`mrcnn.ops.mask_formats`), so memory is bounded by the tile batch and the
instances' own areas, never by the image: an 8k x 8k slide does not allocate
8k x 8k x N masks unless ``mask_format="full"`` asks for them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from mrcnn.ops.mask_formats import box_masks_to_full, box_masks_to_rle

MASK_FORMATS = ("box", "rle", "full")


def tile_grid(image_shape: Sequence[int], tile_size: int, tile_overlap: int) -> list[tuple[int, int, int, int]]:
    """Tiles covering an image, as (y0, x0, y1, x1) pixel ranges (end exclusive).

    Tiles start every ``tile_size - tile_overlap`` pixels; the last tile of a row
    or column is moved back to end at the image edge. An image side shorter than
    ``tile_size`` gets one tile of that side's length.
    """
    if tile_size < 32:
        raise ValueError(f"tile_size must be >= 32 pixels, got {tile_size}")
    if not 0 <= tile_overlap < tile_size:
        raise ValueError(f"tile_overlap must be in [0, tile_size), got {tile_overlap} (tile_size {tile_size})")
    height, width = int(image_shape[0]), int(image_shape[1])

    def starts(length: int) -> list[int]:
        if length <= tile_size:
            return [0]
        stride = tile_size - tile_overlap
        out = list(range(0, length - tile_size, stride))
        out.append(length - tile_size)
        return sorted(set(out))

    return [(y, x, min(y + tile_size, height), min(x + tile_size, width))
            for y in starts(height) for x in starts(width)]


def _detector(model) -> Callable[[list[np.ndarray]], list[dict]]:
    detect = getattr(model, "detect", model)
    if not callable(detect):
        raise TypeError("detect_tiled() needs a MaskRCNN model or a function images -> detect() results")

    def run(tiles: list[np.ndarray]) -> list[dict]:
        try:
            return detect(tiles, mask_format="box")
        except TypeError:  # a detector without compact masks: crop its full-size masks
            return detect(tiles)

    return run


def _box_masks(result: dict) -> tuple[list[np.ndarray], np.ndarray] | None:
    """A detect() result's masks in box format, or None when it has no masks."""
    if "masks" not in result:
        return None
    if "mask_offsets" in result:
        return list(result["masks"]), np.asarray(result["mask_offsets"], np.int32).reshape(-1, 2)
    full = result["masks"]
    crops, offsets = [], np.zeros((full.shape[-1], 2), np.int32)
    height, width = full.shape[:2]
    for i, (y1, x1, y2, x2) in enumerate(np.asarray(result["rois"], np.float32)):
        # paste_masks sets pixels only inside the box plus a one-pixel fringe.
        r0, c0 = max(int(np.floor(y1)) - 1, 0), max(int(np.floor(x1)) - 1, 0)
        r1, c1 = min(int(np.ceil(y2)) + 1, height), min(int(np.ceil(x2)) + 1, width)
        offsets[i] = (r0, c0)
        crops.append(full[r0:max(r1, r0), c0:max(c1, c0), i].copy())
    return crops, offsets


def _inner_distance(box: np.ndarray, tile: tuple[int, int, int, int], image_shape) -> float:
    """Distance from a box to the nearest border of its tile that is not an image border."""
    y0, x0, y1, x1 = tile
    height, width = image_shape
    gaps = []
    if y0 > 0:
        gaps.append(box[0] - y0)
    if x0 > 0:
        gaps.append(box[1] - x0)
    if y1 < height:
        gaps.append(y1 - box[2])
    if x1 < width:
        gaps.append(x1 - box[3])
    return float(min(gaps)) if gaps else float("inf")


def _shared_region_iou(tile_a, tile_b, a_crop, a_off, b_crop, b_off) -> float:
    """IoU of two box-format masks inside the region both tiles cover.

    Two tiles' views of one instance agree where the tiles overlap, whether each
    saw it whole or cut; two different instances do not. 0 when neither mask
    has pixels there.
    """
    r0, c0 = max(tile_a[0], tile_b[0]), max(tile_a[1], tile_b[1])
    r1, c1 = min(tile_a[2], tile_b[2]), min(tile_a[3], tile_b[3])
    if r1 <= r0 or c1 <= c0:
        return 0.0

    def window(crop, off):
        out = np.zeros((r1 - r0, c1 - c0), bool)
        y0, x0 = max(off[0], r0), max(off[1], c0)
        y1, x1 = min(off[0] + crop.shape[0], r1), min(off[1] + crop.shape[1], c1)
        if y1 > y0 and x1 > x0:
            out[y0 - r0 : y1 - r0, x0 - c0 : x1 - c0] = crop[y0 - off[0] : y1 - off[0], x0 - off[1] : x1 - off[1]]
        return out

    a, b = window(a_crop, a_off), window(b_crop, b_off)
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 0.0


def _union(a_crop, a_off, b_crop, b_off) -> tuple[np.ndarray, np.ndarray]:
    r0, c0 = min(a_off[0], b_off[0]), min(a_off[1], b_off[1])
    r1 = max(a_off[0] + a_crop.shape[0], b_off[0] + b_crop.shape[0])
    c1 = max(a_off[1] + a_crop.shape[1], b_off[1] + b_crop.shape[1])
    out = np.zeros((r1 - r0, c1 - c0), bool)
    for crop, (y, x) in ((a_crop, a_off), (b_crop, b_off)):
        out[y - r0 : y - r0 + crop.shape[0], x - c0 : x - c0 + crop.shape[1]] |= crop
    return out, np.array([r0, c0], np.int32)


def _boxes_intersect(a: np.ndarray, b: np.ndarray) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def detect_tiled(
    model,
    image: np.ndarray,
    tile_size: int = 1024,
    tile_overlap: int = 128,
    batch_size: int | None = None,
    mask_format: str = "box",
    merge_threshold: float = 0.5,
    verbose: int = 0,
) -> dict:
    """Detect instances in one large image by overlapping tiles.

    Args:
      model: a :class:`mrcnn.MaskRCNN` (its ``detect`` runs on each tile batch), or
        any function ``list of images -> detect()-style results``.
      image: uint8 [H, W, 3] RGB.
      tile_size, tile_overlap: tile side and overlap in image pixels; instances
        smaller than the overlap are always seen whole by some tile.
      batch_size: tiles per model call (default: the model's BATCH_SIZE, else 1).
      mask_format: "box" (``masks``: list of bool crops, ``mask_offsets`` int32
        [N, 2] (y0, x0)), "rle" (``masks``: COCO RLE dicts), or "full" (bool
        [H, W, N]: H x W x N bytes).
      merge_threshold: mask IoU inside the region two tiles share above which two
        same-class detections from those tiles are one instance.
    Returns:
      detect()-style dict: "rois" float32 [N, 4] (y1, x1, y2, x2) image pixels,
      "class_ids" int32 [N], "scores" float32 [N], masks as above, "keypoints"
      [N, K, 3] for keypoint models; sorted by descending score.
    """
    if mask_format not in MASK_FORMATS:
        raise ValueError(f"mask_format must be one of {MASK_FORMATS}, got {mask_format!r}")
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"detect_tiled() expects one image [H, W, 3], got shape {image.shape}")
    image_shape = image.shape[:2]
    tiles = tile_grid(image_shape, tile_size, tile_overlap)
    if batch_size is None:
        batch_size = int(getattr(getattr(model, "config", None), "BATCH_SIZE", 1) or 1)
    run = _detector(model)

    boxes, scores, class_ids, tile_index = [], [], [], []
    crops: list[np.ndarray] = []
    offsets: list[np.ndarray] = []
    keypoints = []
    has_masks = True
    progress = range(0, len(tiles), batch_size)
    if verbose:
        from tqdm import tqdm

        progress = tqdm(progress, desc="tiles", unit="batch")
    for start in progress:
        batch = tiles[start : start + batch_size]
        results = run([image[y0:y1, x0:x1] for (y0, x0, y1, x1) in batch])
        for t, (tile, result) in enumerate(zip(batch, results)):
            shift = np.array([tile[0], tile[1], tile[0], tile[1]], np.float32)
            masks = _box_masks(result)
            has_masks = has_masks and masks is not None
            for i, box in enumerate(np.asarray(result["rois"], np.float32)):
                box = box + shift
                boxes.append(box)
                scores.append(float(result["scores"][i]))
                class_ids.append(int(result["class_ids"][i]))
                tile_index.append(start + t)
                if masks is not None:
                    crops.append(masks[0][i])
                    offsets.append(masks[1][i] + np.array(tile[:2], np.int32))
                if "keypoints" in result:
                    kp = np.asarray(result["keypoints"][i], np.float32).copy()
                    kp[:, 0] += tile[1]
                    kp[:, 1] += tile[0]
                    keypoints.append(kp)

    # Same instance: same class, from two tiles, agreeing where the tiles overlap.
    # Only tiles that overlap can see one instance, so only their detections are paired.
    by_tile: dict[int, list[int]] = {}
    for i, t in enumerate(tile_index):
        by_tile.setdefault(t, []).append(i)
    parent = list(range(len(boxes)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    used = sorted(by_tile)
    for u, ta in enumerate(used):
        for tb in used[u + 1:]:
            if not _boxes_intersect(np.asarray(tiles[ta], np.float32), np.asarray(tiles[tb], np.float32)):
                continue
            for i in by_tile[ta]:
                for j in by_tile[tb]:
                    if class_ids[i] != class_ids[j] or not _boxes_intersect(boxes[i], boxes[j]):
                        continue
                    if has_masks:
                        agreement = _shared_region_iou(tiles[ta], tiles[tb], crops[i], offsets[i],
                                                       crops[j], offsets[j])
                    else:
                        agreement = _box_overlap_over_smaller(boxes[i], boxes[j])
                    if agreement > merge_threshold:
                        parent[root(i)] = root(j)
    clusters: dict[int, list[int]] = {}
    for i in range(len(boxes)):
        clusters.setdefault(root(i), []).append(i)

    # One detection per instance. A tile's view is its best-scoring detection of the
    # instance; the instance's extent is the union of the views' boxes. A tile that
    # holds the extent away from its seams saw the instance whole: its view is kept
    # (the best-scoring one when several tiles did). Otherwise (an instance larger
    # than the overlap, or cut by two seams) every tile saw a piece: the views are
    # merged (union of masks and boxes, the best score).
    kept: list[int] = []
    for members in clusters.values():
        best: dict[int, int] = {}
        for i in members:
            t = tile_index[i]
            if t not in best or scores[i] > scores[best[t]]:
                best[t] = i
        views = sorted(best.values(), key=lambda i: -scores[i])
        if len(views) == 1:
            kept.append(views[0])
            continue
        extent = np.array([min(boxes[i][0] for i in views), min(boxes[i][1] for i in views),
                           max(boxes[i][2] for i in views), max(boxes[i][3] for i in views)], np.float32)
        whole = [i for i in views if _inner_distance(extent, tiles[tile_index[i]], image_shape) >= 1.0]
        if whole:
            kept.append(whole[0])
            continue
        k = views[0]
        for j in views[1:]:
            if has_masks:
                crops[k], offsets[k] = _union(crops[k], offsets[k], crops[j], offsets[j])
        boxes[k] = extent
        kept.append(k)

    kept.sort(key=lambda i: -scores[i])
    out = {
        "rois": np.array([boxes[i] for i in kept], np.float32).reshape(-1, 4),
        "class_ids": np.array([class_ids[i] for i in kept], np.int32),
        "scores": np.array([scores[i] for i in kept], np.float32),
    }
    if has_masks:
        kept_crops = [crops[i] for i in kept]
        kept_offsets = np.array([offsets[i] for i in kept], np.int32).reshape(-1, 2)
        if mask_format == "box":
            out["masks"], out["mask_offsets"] = kept_crops, kept_offsets
        elif mask_format == "rle":
            out["masks"] = box_masks_to_rle(kept_crops, kept_offsets, image_shape)
        else:
            out["masks"] = box_masks_to_full(kept_crops, kept_offsets, image_shape)
    if keypoints:
        out["keypoints"] = np.array([keypoints[i] for i in kept], np.float32)
    return out


def _box_overlap_over_smaller(a: np.ndarray, b: np.ndarray) -> float:
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return float(inter / smaller) if smaller > 0 else 0.0
