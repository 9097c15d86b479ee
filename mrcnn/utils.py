"""matterport/Mask_RCNN's ``mrcnn.utils``, for scripts written against it
(``from mrcnn import model as modellib, utils``).

Thin: every name is a function or class of the packages, under matterport's name and
signature (docs/matterport.md lists them and what differs). This project's own helpers
are not here.
"""

from __future__ import annotations

import numpy as np

from mrcnn.checkpoint.matterport import COCO_MODEL_URL, download_trained_weights
from mrcnn.data.dataset import Dataset
from mrcnn.data.resize import resize_image, resize_mask
from mrcnn.evaluate import (
    average_precision,
    box_overlaps,
    box_recall,
    mask_overlaps,
    match_instances,
)

__all__ = [
    "COCO_MODEL_URL", "Dataset", "compute_ap", "compute_matches", "compute_overlaps", "compute_overlaps_masks",
    "compute_recall", "download_trained_weights", "extract_bboxes", "resize_image", "resize_mask",
]


def extract_bboxes(mask: np.ndarray) -> np.ndarray:
    """int32 [N, 4] (y1, x1, y2, x2) tight boxes of masks [H, W, N]; y2, x2 one past the last
    pixel; zeros for an empty mask (:func:`mrcnn.data.loader.boxes_from_masks`)."""
    from mrcnn.data.loader import boxes_from_masks

    return boxes_from_masks(mask).astype(np.int32)


compute_overlaps = box_overlaps
compute_overlaps_masks = mask_overlaps
compute_matches = match_instances
compute_ap = average_precision
compute_recall = box_recall
