"""Synthetic shapes dataset: squares, circles and triangles on a flat background.

Part of the library (not of ``samples/``) because the CLI's ``--dataset shapes``, the demo
and the tests use it, and nothing under ``mrcnn/`` may import ``samples``.

Images are generated on the fly from ``(seed, index)`` (no files), so the same
seed always gives the same images and masks. Each image has a random background
colour and 1-4 shapes of random class, colour and extent (20-64 px, clipped to the
image size), fully inside the image. Colours are at least ``_MIN_BG_DISTANCE``
(L1 over RGB) from the background and ``_MIN_SHAPE_DISTANCE`` from the earlier
shapes, so every instance is visible.

Shapes are painted in order, so later shapes occlude earlier ones; masks are
exact (a mask is precisely the set of pixels painted in that shape's colour and
still visible). A placement is retried (up to ``_PLACEMENT_TRIES`` times) if it
would hide more than half of an earlier shape's drawn area, and the shape is
skipped if no placement works, so no instance ends up fully or mostly occluded.
Only the first shape can never be skipped, hence every image has >= 1 instance.

Classes: 1 square, 2 circle, 3 triangle (0 is the background).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from skimage import draw

from mrcnn.config import Config
from mrcnn.data.dataset import Dataset

CLASS_NAMES: tuple[str, ...] = ("BG", "square", "circle", "triangle")
SOURCE = "shapes"

_MIN_EXTENT, _MAX_EXTENT = 20, 64
_MAX_SHAPES = 4
_PLACEMENT_TRIES = 20
_COLOUR_TRIES = 50
_MIN_BG_DISTANCE = 150
_MIN_SHAPE_DISTANCE = 90


class ShapesConfig(Config):
    """128x128 inputs, 3 shape classes + background. Training settings are left default."""

    NAME = "shapes"
    NUM_CLASSES = 1 + 3
    CLASS_NAMES = CLASS_NAMES
    IMAGE_MIN_DIM = 128
    IMAGE_MAX_DIM = 128


def _shape_mask(class_id: int, top: int, left: int, size: int, hw: tuple[int, int]) -> np.ndarray:
    """bool [H, W] of one shape whose bounding square is (top, left, size)."""
    mask = np.zeros(hw, bool)
    if class_id == 1:  # square
        mask[top : top + size, left : left + size] = True
    elif class_id == 2:  # circle inscribed in the square
        half = size / 2.0
        rr, cc = draw.disk((top + half - 0.5, left + half - 0.5), half, shape=hw)
        mask[rr, cc] = True
    else:  # triangle: apex top-centre, base along the bottom edge
        rows = np.array([top, top + size - 1, top + size - 1], float)
        cols = np.array([left + (size - 1) / 2.0, left, left + size - 1], float)
        rr, cc = draw.polygon(rows, cols, shape=hw)
        mask[rr, cc] = True
    return mask


def _pick_colour(rng: np.random.Generator, background: np.ndarray, used: list[np.ndarray]) -> np.ndarray:
    colour = rng.integers(0, 256, 3)
    for _ in range(_COLOUR_TRIES):
        far_from_bg = np.abs(colour - background).sum() >= _MIN_BG_DISTANCE
        far_from_shapes = all(np.abs(colour - u).sum() >= _MIN_SHAPE_DISTANCE for u in used)
        if far_from_bg and far_from_shapes:
            return colour
        colour = rng.integers(0, 256, 3)
    # Fallback: the channel-wise extreme opposite to the background is always far
    # from it (L1 >= 384); closeness to earlier shapes is then tolerated.
    return np.where(background > 127, 0, 255)


def render_shapes(seed: int, index: int, height: int, width: int) -> dict[str, Any]:
    """Generate image ``index`` of the seed's stream.

    Returns:
        dict with "image" uint8 [H, W, 3], "masks" bool [H, W, N], "class_ids"
        int32 [N], "colours" uint8 [N, 3] (each instance's paint colour) and
        "background" uint8 [3].
    """
    if min(height, width) < _MIN_EXTENT:
        raise ValueError(f"shapes images need height, width >= {_MIN_EXTENT}, got {height}x{width}")
    rng = np.random.default_rng([int(seed), int(index)])
    hw = (height, width)
    background = rng.integers(0, 256, 3)
    max_extent = min(_MAX_EXTENT, height, width)

    visible: list[np.ndarray] = []  # current visible mask of each kept instance
    drawn_area: list[int] = []
    class_ids: list[int] = []
    colours: list[np.ndarray] = []
    for _ in range(int(rng.integers(1, _MAX_SHAPES + 1))):
        class_id = int(rng.integers(1, 4))
        colour = _pick_colour(rng, background, colours)
        for _ in range(_PLACEMENT_TRIES):
            size = int(rng.integers(_MIN_EXTENT, max_extent + 1))
            top = int(rng.integers(0, height - size + 1))
            left = int(rng.integers(0, width - size + 1))
            mask = _shape_mask(class_id, top, left, size, hw)
            # Keep every earlier instance at least half visible.
            if all(
                np.count_nonzero(v & ~mask) * 2 >= a for v, a in zip(visible, drawn_area)
            ):
                break
        else:
            continue  # no acceptable placement: skip this shape
        visible = [v & ~mask for v in visible]
        visible.append(mask)
        drawn_area.append(int(mask.sum()))
        class_ids.append(class_id)
        colours.append(colour)

    image = np.empty((height, width, 3), np.uint8)
    image[:] = background
    for v, colour in zip(visible, colours):
        image[v] = colour  # visible masks are disjoint, so paint order no longer matters
    n = len(visible)
    masks = np.stack(visible, axis=-1) if n else np.zeros((height, width, 0), bool)
    return {
        "image": image,
        "masks": masks,
        "class_ids": np.asarray(class_ids, np.int32),
        "colours": np.asarray(colours, np.uint8).reshape(n, 3),
        "background": background.astype(np.uint8),
    }


class ShapesDataset(Dataset):
    """Synthetic shapes generated deterministically from a seed."""

    def load_shapes(self, count: int, height: int = 128, width: int = 128, seed: int = 0) -> None:
        """Register ``count`` images of ``height x width`` and call ``prepare()``.

        Image k of this call is ``render_shapes(seed, k, height, width)``.
        """
        for class_id, name in enumerate(CLASS_NAMES[1:], start=1):
            self.add_class(SOURCE, class_id, name)
        for k in range(int(count)):
            self.add_image(
                SOURCE, image_id=f"{seed}-{k}", path=None,
                height=int(height), width=int(width), seed=int(seed), index=k,
            )
        self.prepare()

    def render(self, image_id: int) -> dict[str, Any]:
        """Everything about one image, see :func:`render_shapes`."""
        info = self.image_info[image_id]
        return render_shapes(info["seed"], info["index"], info["height"], info["width"])

    def load_image(self, image_id: int) -> np.ndarray:
        """uint8 [H, W, 3] RGB."""
        return self.render(image_id)["image"]

    def load_mask(self, image_id: int) -> tuple[np.ndarray, np.ndarray]:
        """(bool [H, W, N] exact masks, int32 [N] class ids)."""
        out = self.render(image_id)
        return out["masks"], out["class_ids"]


class ShapesDemoConfig(ShapesConfig):
    """A small network that learns the shapes from scratch in minutes on 2 CPU cores.

    ResNet-18 at half width with GroupNorm (no pretrained weights), a narrow FPN
    and heads, anchors matched to 20-64 px objects, fewer proposals and RoIs.
    """

    BACKBONE = "resnet18"
    BACKBONE_NORM = "gn"
    BACKBONE_BASE_WIDTH = 32
    GROUP_NORM_GROUPS = 8
    FPN_CHANNELS = 64
    FPN_FC_LAYERS_SIZE = 256
    MASK_HEAD_CONV_CHANNELS = 64
    RPN_ANCHOR_SCALES = (16, 32, 64, 128, 256)
    IMAGES_PER_GPU = 4
    PRE_NMS_LIMIT_TRAINING = 1000
    POST_NMS_ROIS_TRAINING = 500
    PRE_NMS_LIMIT_INFERENCE = 500
    POST_NMS_ROIS_INFERENCE = 200
    TRAIN_ROIS_PER_IMAGE = 128
    MAX_GT_INSTANCES = 8
    DETECTION_MAX_INSTANCES = 20
    # Per 16 images (Config.LR_REFERENCE_BATCH): 0.02 at the batch of 4, the rate the demo was tuned at.
    LEARNING_RATE = 0.08
    WARMUP_STEPS = 100
    WEIGHT_DECAY = 1e-4
    GRADIENT_CLIP_NORM = 10.0
    STEPS_PER_EPOCH = 100
