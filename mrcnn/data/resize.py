"""matterport's NumPy resizing of one image and its masks (``mrcnn.utils.resize_image`` /
``resize_mask``), for scripts written against matterport's utils.

The training pipeline and ``detect()`` do not use these: they resize with
:func:`mrcnn.data.transforms.resize_and_pad` (torchvision's rule: the scale may also shrink,
padding at the bottom/right). These keep matterport's rule: scale up to ``min_dim`` but
never down (except to fit ``max_dim`` in "square"), at least ``min_scale``, sides rounded,
padding centred.
"""

from __future__ import annotations

import random

import numpy as np

RESIZE_MODES = ("none", "square", "pad64", "crop")


def _centred(total: int, size: int) -> tuple[int, int]:
    before = (total - size) // 2
    return before, total - size - before


def resize_image(image: np.ndarray, min_dim: int | None = None, max_dim: int | None = None,
                 min_scale: float | None = None, mode: str = "square"):
    """Resize ``image`` [H, W, C] keeping its aspect ratio.

    Modes: "none" (unchanged), "square" (fit, then zero-pad to ``max_dim`` x ``max_dim``,
    centred), "pad64" (pad each side up to a multiple of 64; ``max_dim`` unused),
    "crop" (a random ``min_dim`` x ``min_dim`` crop after the scaling; training only).

    Returns (image in the input dtype, window (y1, x1, y2, x2) of the image inside the
    padding, scale, padding [(top, bottom), (left, right), (0, 0)], crop (y, x, h, w) or None).
    """
    import skimage.transform

    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode must be one of {RESIZE_MODES}, got {mode!r}")
    dtype = image.dtype
    h, w = image.shape[:2]
    padding = [(0, 0), (0, 0), (0, 0)]
    if mode == "none":
        return image, (0, 0, h, w), 1, padding, None
    scale = max(1.0, min_dim / min(h, w)) if min_dim else 1.0
    if min_scale and scale < min_scale:
        scale = float(min_scale)
    if max_dim and mode == "square" and round(max(h, w) * scale) > max_dim:
        scale = max_dim / max(h, w)
    if scale != 1:
        # anti_aliasing=False: matterport's utils.resize pins it (scikit-image >= 0.19 would
        # blur every downscaled image first).
        image = skimage.transform.resize(image, (round(h * scale), round(w * scale)), order=1,
                                         mode="constant", preserve_range=True, anti_aliasing=False)
    h, w = image.shape[:2]
    crop = None
    if mode == "square":
        if not max_dim:
            raise ValueError("resize mode 'square' needs max_dim")
        padding = [_centred(max_dim, h), _centred(max_dim, w), (0, 0)]
    elif mode == "pad64":
        if min_dim and min_dim % 64:
            raise ValueError(f"resize mode 'pad64' needs min_dim to be a multiple of 64, got {min_dim}")
        padding = [_centred(-(-h // 64) * 64, h), _centred(-(-w // 64) * 64, w), (0, 0)]
    else:  # crop
        if not min_dim or min_dim > min(h, w):
            raise ValueError(f"resize mode 'crop' needs min_dim <= the scaled image's sides ({h}x{w}), got {min_dim}")
        y, x = random.randint(0, h - min_dim), random.randint(0, w - min_dim)
        crop = (y, x, min_dim, min_dim)
        return image[y:y + min_dim, x:x + min_dim].astype(dtype), (0, 0, min_dim, min_dim), scale, padding, crop
    image = np.pad(image, padding[: image.ndim], mode="constant", constant_values=0)
    window = (padding[0][0], padding[1][0], padding[0][0] + h, padding[1][0] + w)
    return image.astype(dtype), window, scale, padding, crop


def resize_mask(mask: np.ndarray, scale: float, padding, crop=None) -> np.ndarray:
    """Resize masks [H, W, N] as :func:`resize_image` resized their image (nearest neighbour,
    sides rounded), then pad (or crop) them the same way."""
    import scipy.ndimage

    mask = np.asarray(mask)
    out_h, out_w = round(mask.shape[0] * scale), round(mask.shape[1] * scale)
    if (out_h, out_w) != mask.shape[:2]:
        zoomed = scipy.ndimage.zoom(mask, zoom=[out_h / mask.shape[0], out_w / mask.shape[1], 1], order=0,
                                    grid_mode=True, mode="nearest")
        mask = zoomed.astype(mask.dtype)
    if crop is not None:
        y, x, h, w = crop
        return mask[y:y + h, x:x + w]
    return np.pad(mask, padding, mode="constant", constant_values=0)
