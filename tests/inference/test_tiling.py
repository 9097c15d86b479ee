"""Tiled detection: tile grid, coordinates mapped back, seams merged, bounded memory.

The detector here is an oracle that reports exactly the ground-truth instances
visible in each tile (cut by the tile's edges), so the test checks the tiling
logic itself: every instance of a 3000x4000 mosaic found exactly once, with its
whole mask, including instances that cross seams and ones larger than the overlap.
"""

import tracemalloc

import numpy as np
import pytest

from mrcnn.data.synthetic import render_shapes
from mrcnn.inference.tiling import detect_tiled, tile_grid
from mrcnn.ops.mask_formats import box_masks_to_full, crop_full_masks


def test_tile_grid_covers_the_image_with_the_overlap():
    tiles = tile_grid((1000, 1300), 512, 128)
    ys = sorted({t[0] for t in tiles})
    xs = sorted({t[1] for t in tiles})
    assert ys == [0, 384, 488] and xs == [0, 384, 768, 788]
    assert all(t[2] - t[0] == 512 and t[3] - t[1] == 512 for t in tiles)
    covered = np.zeros((1000, 1300), bool)
    for y0, x0, y1, x1 in tiles:
        covered[y0:y1, x0:x1] = True
    assert covered.all()
    assert tile_grid((100, 200), 512, 128) == [(0, 0, 100, 200)]
    with pytest.raises(ValueError, match="tile_overlap"):
        tile_grid((100, 100), 64, 64)


def _mosaic(height=3000, width=4000, cell=170, seed=0):
    """Shapes images (128x128) pasted on a grid with random offsets; GT in box format."""
    rng = np.random.default_rng(seed)
    image = np.zeros((height, width, 3), np.uint8)
    crops, offsets, class_ids = [], [], []
    k = 0
    for gy in range(0, height - cell + 1, cell):
        for gx in range(0, width - cell + 1, cell):
            y = gy + int(rng.integers(0, cell - 128 + 1))
            x = gx + int(rng.integers(0, cell - 128 + 1))
            sample = render_shapes(seed, k, 128, 128)
            k += 1
            image[y : y + 128, x : x + 128] = sample["image"]
            c, o = crop_full_masks(sample["masks"])
            for crop, off, cid in zip(c, o, sample["class_ids"]):
                if crop.any():
                    crops.append(crop)
                    offsets.append(off + (y, x))
                    class_ids.append(int(cid))
    # One instance larger than the overlap, across a seam: no tile sees it whole.
    y, x = min(300, height - 400), min(300, width - 400)
    big = np.zeros((400, 400), bool)
    big[20:380, 20:380] = True
    image[y : y + 400, x : x + 400] = (250, 10, 10)
    keep = [i for i, (cr, of) in enumerate(zip(crops, offsets))
            if not (of[0] < y + 400 and y < of[0] + cr.shape[0] and of[1] < x + 400 and x < of[1] + cr.shape[1])]
    crops = [crops[i] for i in keep] + [big]
    offsets = [offsets[i] for i in keep] + [np.array([y, x])]
    class_ids = [class_ids[i] for i in keep] + [1]
    return image, crops, np.array(offsets, np.int32), np.array(class_ids, np.int32)


class _Oracle:
    """detect() stand-in: the GT instances visible in each tile, as full tile masks."""

    def __init__(self, image, crops, offsets, class_ids):
        self.image, self.crops, self.offsets, self.class_ids = image, crops, offsets, class_ids
        self.calls = 0

    def _locate(self, tile):
        # Tiles are views of the mosaic: find where this one starts.
        base = self.image.__array_interface__["data"][0]
        start = tile.__array_interface__["data"][0] - base
        row_bytes = self.image.strides[0]
        return start // row_bytes, (start % row_bytes) // self.image.strides[1]

    def __call__(self, tiles):
        self.calls += 1
        results = []
        for tile in tiles:
            ty, tx = self._locate(tile)
            th, tw = tile.shape[:2]
            masks, boxes, cids = [], [], []
            ends = self.offsets + np.array([c.shape for c in self.crops])
            near = np.flatnonzero((self.offsets[:, 0] < ty + th) & (ty < ends[:, 0])
                                  & (self.offsets[:, 1] < tx + tw) & (tx < ends[:, 1]))
            for g in near:
                crop, (oy, ox), cid = self.crops[g], self.offsets[g], self.class_ids[g]
                r0, c0 = max(oy, ty), max(ox, tx)
                r1, c1 = min(oy + crop.shape[0], ty + th), min(ox + crop.shape[1], tx + tw)
                if r1 <= r0 or c1 <= c0:
                    continue
                m = np.zeros((th, tw), bool)
                m[r0 - ty : r1 - ty, c0 - tx : c1 - tx] = crop[r0 - oy : r1 - oy, c0 - ox : c1 - ox]
                if not m.any():
                    continue
                rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
                boxes.append([rows[0], cols[0], rows[-1] + 1, cols[-1] + 1])
                masks.append(m)
                cids.append(cid)
            n = len(masks)
            results.append({
                "rois": np.array(boxes, np.float32).reshape(n, 4),
                "class_ids": np.array(cids, np.int32),
                "scores": np.linspace(0.99, 0.9, n).astype(np.float32),
                "masks": np.stack(masks, -1) if n else np.zeros((th, tw, 0), bool),
            })
        return results


def _match(found_crops, found_offsets, found_ids, crops, offsets, class_ids, shape):
    """For each GT instance: the number of detections with mask IoU >= 0.99 and the best IoU."""
    counts, best = np.zeros(len(crops), int), np.zeros(len(crops))
    ends = offsets + np.array([c.shape for c in crops])
    for fc, fo, fid in zip(found_crops, found_offsets, found_ids):
        near = np.flatnonzero((class_ids == fid) & (offsets[:, 0] < fo[0] + fc.shape[0]) & (fo[0] < ends[:, 0])
                              & (offsets[:, 1] < fo[1] + fc.shape[1]) & (fo[1] < ends[:, 1]))
        for g in near:
            gc, go = crops[g], offsets[g]
            r0, c0 = min(fo[0], go[0]), min(fo[1], go[1])
            r1 = max(fo[0] + fc.shape[0], go[0] + gc.shape[0])
            c1 = max(fo[1] + fc.shape[1], go[1] + gc.shape[1])
            a = box_masks_to_full([fc], [fo - (r0, c0)], (r1 - r0, c1 - c0))[..., 0]
            b = box_masks_to_full([gc], [go - (r0, c0)], (r1 - r0, c1 - c0))[..., 0]
            iou = np.count_nonzero(a & b) / max(np.count_nonzero(a | b), 1)
            best[g] = max(best[g], iou)
            counts[g] += iou >= 0.99
    return counts, best


def test_tiled_detection_finds_every_instance_once_across_seams():
    image, crops, offsets, class_ids = _mosaic()
    oracle = _Oracle(image, crops, offsets, class_ids)
    tracemalloc.start()
    out = detect_tiled(oracle, image, tile_size=512, tile_overlap=128, batch_size=4)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    n_tiles = len(tile_grid(image.shape, 512, 128))
    assert oracle.calls == -(-n_tiles // 4)
    assert len(out["masks"]) == len(out["rois"]) == len(out["mask_offsets"])
    counts, best = _match(out["masks"], out["mask_offsets"], out["class_ids"],
                          crops, offsets, class_ids, image.shape[:2])
    crosses_seam = np.array([
        any(t[0] < o[0] < t[2] <= o[0] + c.shape[0] or t[1] < o[1] < t[3] <= o[1] + c.shape[1]
            for t in tile_grid(image.shape, 512, 128))
        for c, o in zip(crops, offsets)])
    assert len(crops) > 500 and crosses_seam.sum() > 100  # the test really exercises seams
    assert np.all(counts == 1), (np.flatnonzero(counts != 1), best[counts != 1])
    assert len(out["rois"]) == len(crops)  # nothing reported twice, nothing spurious
    # The big instance (larger than the overlap) came back whole, merged from pieces.
    assert best[-1] == 1.0
    # Boxes are in image pixels: each equals its mask's extent.
    for crop, off, box in zip(out["masks"], out["mask_offsets"], out["rois"]):
        rows, cols = np.flatnonzero(crop.any(1)), np.flatnonzero(crop.any(0))
        np.testing.assert_allclose(box, [off[0] + rows[0], off[1] + cols[0],
                                         off[0] + rows[-1] + 1, off[1] + cols[-1] + 1])
    # Memory: the oracle's tile masks plus compact crops; a full-size mask stack
    # would need 3000 * 4000 * N bytes (N > 500: over 6 GB).
    assert peak < 200 * 2**20, peak


def test_mask_formats_of_tiled_detection_agree():
    image, crops, offsets, class_ids = _mosaic(480, 720, seed=1)
    oracle = _Oracle(image, crops, offsets, class_ids)
    box = detect_tiled(oracle, image, tile_size=256, tile_overlap=96)
    rle = detect_tiled(oracle, image, tile_size=256, tile_overlap=96, mask_format="rle")
    full = detect_tiled(oracle, image, tile_size=256, tile_overlap=96, mask_format="full")
    assert full["masks"].shape == (480, 720, len(crops))
    from pycocotools import mask as mask_utils

    expanded = box_masks_to_full(box["masks"], box["mask_offsets"], image.shape[:2])
    assert np.array_equal(full["masks"], expanded)
    decoded = np.stack([mask_utils.decode(r) for r in rle["masks"]], -1).astype(bool)
    assert np.array_equal(decoded, expanded)
    with pytest.raises(ValueError, match="mask_format"):
        detect_tiled(oracle, image, mask_format="png")
