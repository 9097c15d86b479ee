"""Synthetic stick figures: a keypoint dataset generated on the fly (no files).

Each image has a flat random background and 1..``max_figures`` stick figures
(class 1 "person") of height 40-80 px (clipped to the image), drawn in a
colour far from the background, with non-overlapping boxes. A figure has 7
keypoints (:data:`KEYPOINT_NAMES`): head, neck, the two hands, pelvis and the two
feet. As for people facing the camera, the figure's *left* hand and foot are on
the image's right; a horizontal flip therefore swaps left and right
(:data:`FLIP_MAP`). The instance mask is exactly the painted pixels (limbs of
constant thickness and a disk for the head).

Keypoints follow COCO's convention: integer pixel indices (x = column, y = row
of the joint's pixel), v = 2 (visible); with ``unlabelled_prob`` > 0 a hand or
foot is left unlabelled (0, 0, 0) at random, to exercise ignored keypoints.
Everything is a pure function of ``(seed, index)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mrcnn.config import Config
from mrcnn.data.dataset import Dataset

CLASS_NAMES: tuple[str, ...] = ("BG", "person")
KEYPOINT_NAMES: tuple[str, ...] = (
    "head", "neck", "left_hand", "right_hand", "pelvis", "left_foot", "right_foot",
)
FLIP_MAP: tuple[tuple[int, int], ...] = ((2, 3), (5, 6))
SKELETON: tuple[tuple[int, int], ...] = ((0, 1), (1, 2), (1, 3), (1, 4), (4, 5), (4, 6))
# OKS sigmas for evaluation: the joints of a drawn figure are exact, but its mask
# (the OKS scale) is thin, so a COCO-like 0.1 makes a 1-pixel error score ~0.98.
SIGMAS: tuple[float, ...] = (0.1,) * len(KEYPOINT_NAMES)
SOURCE = "stick_figures"
_MIN_HEIGHT, _MAX_HEIGHT = 40, 80
_UNLABELLED_CANDIDATES = (2, 3, 5, 6)


class StickFigureConfig(Config):
    """128x128 inputs, one class with 7 keypoints, keypoint head and mask head."""

    NAME = "stick_figures"
    NUM_CLASSES = 1 + 1
    CLASS_NAMES = CLASS_NAMES
    NUM_KEYPOINTS = len(KEYPOINT_NAMES)
    KEYPOINT_NAMES = KEYPOINT_NAMES
    KEYPOINT_FLIP_MAP = FLIP_MAP
    KEYPOINT_SKELETON = SKELETON
    IMAGE_MIN_DIM = 128
    IMAGE_MAX_DIM = 128


def _segment_mask(hw: tuple[int, int], p: np.ndarray, q: np.ndarray, radius: float) -> np.ndarray:
    """Pixels whose index (x, y) lies within ``radius`` of the segment p-q (x, y)."""
    ys, xs = np.mgrid[0 : hw[0], 0 : hw[1]].astype(np.float64)
    d = q - p
    length2 = float(d @ d)
    t = np.zeros_like(xs) if length2 == 0 else np.clip(((xs - p[0]) * d[0] + (ys - p[1]) * d[1]) / length2, 0, 1)
    return (xs - p[0] - t * d[0]) ** 2 + (ys - p[1] - t * d[1]) ** 2 <= radius**2


def _figure(rng: np.random.Generator, top: int, left: int, height: int, hw) -> tuple[np.ndarray, np.ndarray]:
    """Keypoints float [7, 2] (x, y pixel indices, integers) and the bool [H, W] mask."""
    h = float(height)
    cx = left + 0.5 * h * 0.8
    neck = np.array([cx, top + 0.22 * h])
    head = neck + [rng.uniform(-0.05, 0.05) * h, -0.12 * h]
    pelvis = neck + [rng.uniform(-0.08, 0.08) * h, 0.38 * h]
    arm = 0.3 * h
    angles = rng.uniform(-1.0, 1.0, 2)  # from horizontal, radians
    left_hand = neck + arm * np.array([np.cos(angles[0]), np.sin(angles[0])])
    right_hand = neck + arm * np.array([-np.cos(angles[1]), np.sin(angles[1])])
    spread = rng.uniform(0.08, 0.3, 2) * h
    left_foot = np.array([pelvis[0] + spread[0], top + h - 1])
    right_foot = np.array([pelvis[0] - spread[1], top + h - 1])
    kps = np.round(np.stack([head, neck, left_hand, right_hand, pelvis, left_foot, right_foot]))
    kps[:, 0] = np.clip(kps[:, 0], 0, hw[1] - 1)
    kps[:, 1] = np.clip(kps[:, 1], 0, hw[0] - 1)
    radius = max(1.5, h / 30.0)
    mask = np.zeros(hw, bool)
    for i, j in SKELETON:
        mask |= _segment_mask(hw, kps[i], kps[j], radius)
    mask |= _segment_mask(hw, kps[0], kps[0], 0.1 * h)  # head disk
    return kps, mask


def render_figures(seed: int, index: int, height: int, width: int, max_figures: int = 2,
                   unlabelled_prob: float = 0.0) -> dict[str, Any]:
    """Image ``index`` of the seed's stream.

    Returns:
        dict with "image" uint8 [H, W, 3], "masks" bool [H, W, N], "class_ids"
        int32 [N] (all 1) and "keypoints" float32 [N, 7, 3] (COCO convention).
    """
    rng = np.random.default_rng([int(seed), int(index)])
    hw = (height, width)
    background = rng.integers(0, 256, 3)
    colour = np.where(background > 127, rng.integers(0, 60, 3), rng.integers(196, 256, 3))
    boxes: list[tuple[int, int, int, int]] = []
    masks, keypoints = [], []
    for _ in range(int(rng.integers(1, max_figures + 1))):
        for _ in range(30):
            fh = int(rng.integers(_MIN_HEIGHT, min(_MAX_HEIGHT, height - 2) + 1))
            fw = int(np.ceil(0.8 * fh))
            if fw > width - 2:
                continue
            top = int(rng.integers(1, height - fh))
            left = int(rng.integers(1, width - fw))
            box = (top - 4, left - 4, top + fh + 4, left + fw + 4)
            if all(box[0] >= b[2] or box[2] <= b[0] or box[1] >= b[3] or box[3] <= b[1] for b in boxes):
                break
        else:
            continue
        kps, mask = _figure(rng, top, left, fh, hw)
        vis = np.full((len(KEYPOINT_NAMES), 1), 2.0)
        if unlabelled_prob > 0:
            for k in _UNLABELLED_CANDIDATES:
                if rng.uniform() < unlabelled_prob:
                    vis[k] = 0
        kps = np.concatenate([kps, vis], axis=1)
        kps[vis[:, 0] == 0] = 0
        boxes.append(box)
        masks.append(mask)
        keypoints.append(kps)
    image = np.empty((height, width, 3), np.uint8)
    image[:] = background
    for m in masks:
        image[m] = colour
    n = len(masks)
    return {
        "image": image,
        "masks": np.stack(masks, axis=-1) if n else np.zeros((height, width, 0), bool),
        "class_ids": np.ones((n,), np.int32),
        "keypoints": np.asarray(keypoints, np.float32).reshape(n, len(KEYPOINT_NAMES), 3),
    }


class StickFigureDataset(Dataset):
    """Stick figures generated deterministically from a seed."""

    keypoint_names = list(KEYPOINT_NAMES)
    keypoint_flip_map = list(FLIP_MAP)
    keypoint_skeleton = list(SKELETON)
    keypoint_sigmas = list(SIGMAS)

    def load_figures(self, count: int, height: int = 128, width: int = 128, seed: int = 0,
                     max_figures: int = 2, unlabelled_prob: float = 0.0) -> None:
        """Register ``count`` images and call ``prepare()``."""
        self.add_class(SOURCE, 1, "person")
        for k in range(int(count)):
            self.add_image(SOURCE, image_id=f"{seed}-{k}", path=None, height=int(height), width=int(width),
                           seed=int(seed), index=k, max_figures=int(max_figures),
                           unlabelled_prob=float(unlabelled_prob))
        self.prepare()

    def render(self, image_id: int) -> dict[str, Any]:
        info = self.image_info[image_id]
        return render_figures(info["seed"], info["index"], info["height"], info["width"],
                              info["max_figures"], info["unlabelled_prob"])

    def load_image(self, image_id: int) -> np.ndarray:
        return self.render(image_id)["image"]

    def load_mask(self, image_id: int) -> tuple[np.ndarray, np.ndarray]:
        out = self.render(image_id)
        return out["masks"], out["class_ids"]

    def load_keypoints(self, image_id: int) -> np.ndarray:
        return self.render(image_id)["keypoints"]
