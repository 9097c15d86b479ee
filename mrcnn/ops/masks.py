"""Mask post-processing in NumPy: pasting per-box mask probabilities into the image."""

from __future__ import annotations

import numpy as np


def paste_masks(
    masks: np.ndarray, boxes: np.ndarray, image_shape: tuple[int, int], threshold: float = 0.5
) -> np.ndarray:
    """Resample each box's mask into the image and threshold it.

    Detectron2's rule: image pixel (y, x) has its centre at (y + 0.5, x + 0.5); it
    reads the mask bilinearly at u = (y + 0.5 - y1) / (y2 - y1) * M - 0.5 (v alike),
    with zeros outside the M x M grid (``grid_sample``, align_corners=False,
    padding zeros).

    Args:
      masks: [N, M, M] float probabilities.
      boxes: [N, 4] (y1, x1, y2, x2) in image pixels.
      image_shape: (H, W).
    Returns:
      bool [H, W, N].
    """
    height, width = image_shape
    n = len(boxes)
    out = np.zeros((height, width, n), dtype=bool)
    for i in range(n):
        y1, x1, y2, x2 = (float(v) for v in boxes[i])
        mh, mw = masks[i].shape
        if y2 - y1 <= 0 or x2 - x1 <= 0:
            continue
        # Only pixels within the box (plus the half-pixel bilinear fringe) can be set.
        r0, r1 = max(int(np.floor(y1)) - 1, 0), min(int(np.ceil(y2)) + 1, height)
        c0, c1 = max(int(np.floor(x1)) - 1, 0), min(int(np.ceil(x2)) + 1, width)
        if r1 <= r0 or c1 <= c0:
            continue
        u = (np.arange(r0, r1) + 0.5 - y1) / (y2 - y1) * mh - 0.5
        v = (np.arange(c0, c1) + 0.5 - x1) / (x2 - x1) * mw - 0.5
        values = _bilinear_zero_pad(masks[i].astype(np.float32), u, v)
        out[r0:r1, c0:c1, i] = values > threshold
    return out


def _bilinear_zero_pad(grid: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Sample ``grid`` [M, M] at rows ``u`` x columns ``v`` with zero padding outside."""
    padded = np.pad(grid, 1)
    u = u + 1.0
    v = v + 1.0
    u0 = np.floor(u).astype(np.int64)
    v0 = np.floor(v).astype(np.int64)
    fu = (u - u0)[:, None]
    fv = (v - v0)[None, :]
    hmax, wmax = padded.shape[0] - 1, padded.shape[1] - 1

    def take(rows, cols):
        ok = ((rows >= 0) & (rows <= hmax))[:, None] & ((cols >= 0) & (cols <= wmax))[None, :]
        vals = padded[np.clip(rows, 0, hmax)][:, np.clip(cols, 0, wmax)]
        return np.where(ok, vals, 0.0)

    return (
        take(u0, v0) * (1 - fu) * (1 - fv)
        + take(u0, v0 + 1) * (1 - fu) * fv
        + take(u0 + 1, v0) * fu * (1 - fv)
        + take(u0 + 1, v0 + 1) * fu * fv
    )
