"""Post-processing at inference: the model's padded detections back to each original image,
for ``detect()``, the SavedModel and every runtime export (ONNX, OpenVINO, LiteRT).

Two steps:

1. :func:`to_original` (TensorFlow, inside every graph): boxes divided by the
   pre-processing scale (:mod:`mrcnn.inference.preprocess`) and clipped to the original
   image, keypoints divided by it; every output zero past ``num_detections``. The
   coordinates stay in the pixel-edge frame (a box covers ``[y1, y2) x [x1, x2)``).
2. The form each caller returns:

   * :func:`serving_outputs` (TensorFlow): the exports' contract, TF Object Detection
     API names with boxes and keypoints normalised by the original height and width
     (docs/serving.md);
   * :func:`unmold` (NumPy): ``detect()``'s dict for one image, the first
     ``num_detections`` rows, masks pasted into the image (or cropped to their boxes, or
     RLE), keypoints in COCO's pixel-index frame (``x - 0.5``).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from mrcnn.config import Config
from mrcnn.ops.mask_formats import box_masks_to_rle, paste_masks_in_boxes
from mrcnn.ops.masks import paste_masks

MASK_FORMATS = ("full", "box", "rle")
SERVING_OUTPUTS = (
    "detection_boxes",
    "detection_scores",
    "detection_classes",
    "num_detections",
    "detection_masks",
    "detection_keypoints",
    "detection_keypoint_scores",
)


def to_original(out: dict, scales: tf.Tensor, original_sizes: tf.Tensor) -> dict:
    """The model's detections in each original image's pixels.

    Args:
      out: ``MaskRCNN.call``'s dict, D = DETECTION_MAX_INSTANCES: boxes [B, D, 4]
        (y1, x1, y2, x2) network-input pixels, scores [B, D], class_ids [B, D],
        num_detections [B], masks [B, D, 28, 28] and keypoints [B, D, K, 3] (x, y, score)
        when the model has those heads.
      scales: float32 [B, 2] (sy, sx) of the pre-processing.
      original_sizes: int32 [B, 2] (H, W) of each original image.
    Returns:
      The same keys: boxes float32 clipped to [0, H] x [0, W], scores float32,
      class_ids int32, num_detections int32, masks float32, keypoints float32 (x, y)
      divided by the scale; rows past num_detections are zero.
    """
    ex = tf.expand_dims  # not [..., None]: LiteRT has no strided slice with a new axis
    num = tf.cast(out["num_detections"], tf.int32)
    max_det = tf.shape(out["scores"])[1]
    validf = tf.cast(ex(tf.range(max_det), 0) < ex(num, 1), tf.float32)
    scale4 = ex(tf.tile(tf.cast(scales, tf.float32), [1, 2]), 1)
    hw4 = ex(tf.cast(tf.tile(original_sizes, [1, 2]), tf.float32), 1)
    boxes = tf.clip_by_value(tf.cast(out["boxes"], tf.float32) / scale4, 0.0, hw4)
    result = {
        "boxes": boxes * ex(validf, -1),
        "scores": tf.cast(out["scores"], tf.float32) * validf,
        "class_ids": tf.cast(tf.cast(out["class_ids"], tf.float32) * validf, tf.int32),
        "num_detections": num,
    }
    if "masks" in out:
        result["masks"] = tf.cast(out["masks"], tf.float32) * ex(ex(validf, -1), -1)
    if "keypoints" in out:
        kp = tf.cast(out["keypoints"], tf.float32)
        sy = ex(ex(tf.cast(scales[:, 0], tf.float32), -1), -1)
        sx = ex(ex(tf.cast(scales[:, 1], tf.float32), -1), -1)
        result["keypoints"] = tf.stack([kp[..., 0] / sx, kp[..., 1] / sy, kp[..., 2]], -1) * ex(ex(validf, -1), -1)
    return result


def serving_outputs(det: dict, original_sizes: tf.Tensor) -> dict:
    """:func:`to_original`'s detections -> the exports' outputs (docs/serving.md).

    ``detection_boxes`` [B, D, 4] (ymin, xmin, ymax, xmax) and ``detection_keypoints``
    [B, D, K, 2] (y, x) normalised by the original (H, W); ``detection_scores``,
    ``detection_classes`` (float32, 1-based), ``num_detections`` (float32),
    ``detection_masks`` [B, D, 28, 28], ``detection_keypoint_scores`` [B, D, K].
    """
    ex = tf.expand_dims
    hw = tf.cast(original_sizes, tf.float32)
    result = {
        "detection_boxes": tf.clip_by_value(det["boxes"] / ex(tf.tile(hw, [1, 2]), 1), 0.0, 1.0),
        "detection_scores": det["scores"],
        "detection_classes": tf.cast(det["class_ids"], tf.float32),
        "num_detections": tf.cast(det["num_detections"], tf.float32),
    }
    if "masks" in det:
        result["detection_masks"] = det["masks"]
    if "keypoints" in det:
        kp = det["keypoints"]
        y = kp[..., 1] / ex(ex(hw[:, 0], -1), -1)
        x = kp[..., 0] / ex(ex(hw[:, 1], -1), -1)
        result["detection_keypoints"] = tf.clip_by_value(tf.stack([y, x], -1), 0.0, 1.0)
        result["detection_keypoint_scores"] = kp[..., 2]
    return {k: result[k] for k in SERVING_OUTPUTS if k in result}


def unmold(det: dict, i: int, image_shape: tuple[int, int], config: Config, mask_format: str = "full") -> dict:
    """Image ``i`` of :func:`to_original`'s detections (NumPy arrays) as ``detect()`` returns it.

    Returns "rois" float32 [N, 4] (y1, x1, y2, x2) original pixels, "class_ids" int32 [N],
    "scores" float32 [N]; "masks" in ``mask_format`` (thresholded at
    DETECTION_MASK_THRESHOLD; detections below DETECTION_MASK_MIN_SCORE, sorted last,
    get an empty mask and cost no paste) and, for "box", "mask_offsets" int32 [N, 2];
    "keypoints" float32 [N, K, 3] (x, y, score), COCO's pixel-index frame.
    """
    if mask_format not in MASK_FORMATS:
        raise ValueError(f"mask_format must be one of {MASK_FORMATS}, got {mask_format!r}")
    n = int(det["num_detections"][i])
    boxes = np.asarray(det["boxes"][i, :n], np.float32)
    result = {
        "rois": boxes,
        "class_ids": np.asarray(det["class_ids"][i, :n], np.int32),
        "scores": np.asarray(det["scores"][i, :n], np.float32),
    }
    if "masks" in det:
        threshold = config.DETECTION_MASK_THRESHOLD
        m = int(np.count_nonzero(result["scores"] >= config.DETECTION_MASK_MIN_SCORE))
        masks = det["masks"][i, :m]
        if mask_format == "full":
            full = paste_masks(masks, boxes[:m], image_shape, threshold)
            if m < n:
                full = np.concatenate([full, np.zeros((*image_shape, n - m), bool)], axis=-1)
            result["masks"] = full
        else:
            crops, offsets = paste_masks_in_boxes(masks, boxes[:m], image_shape, threshold)
            crops += [np.zeros((0, 0), bool)] * (n - m)
            offsets = np.concatenate([offsets, np.zeros((n - m, 2), np.int32)])
            if mask_format == "box":
                result["masks"], result["mask_offsets"] = crops, offsets
            else:
                result["masks"] = box_masks_to_rle(crops, offsets, image_shape)
    if "keypoints" in det:
        kps = np.array(det["keypoints"][i, :n], np.float32)
        # Pixel-edge (column c's centre is c + 0.5) -> pixel-index (centre is c).
        kps[..., :2] -= 0.5
        result["keypoints"] = kps
    return result
