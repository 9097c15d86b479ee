"""Box arithmetic: coding, IoU, clipping, areas.

All boxes are (y1, x1, y2, x2) float32 in input-image pixels with x2/y2 the far
pixel edges (width = x2 - x1, as torchvision). Functions broadcast over leading
batch dimensions.
"""

from __future__ import annotations

import math

import tensorflow as tf

# dw/dh are clamped before exp so a wild regression cannot overflow (torchvision).
BBOX_XFORM_CLIP = math.log(1000.0 / 16)


def box_area(boxes: tf.Tensor) -> tf.Tensor:
    """[..., 4] -> [...] area (zero or negative for degenerate boxes)."""
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def box_iou(boxes1: tf.Tensor, boxes2: tf.Tensor) -> tf.Tensor:
    """Pairwise IoU.

    Args:
      boxes1: [..., N, 4]; boxes2: [..., M, 4] (same leading dims).
    Returns:
      [..., N, M] IoU; 0 where the union is empty.
    """
    b1 = boxes1[..., :, None, :]
    b2 = boxes2[..., None, :, :]
    inter_h = tf.maximum(tf.minimum(b1[..., 2], b2[..., 2]) - tf.maximum(b1[..., 0], b2[..., 0]), 0.0)
    inter_w = tf.maximum(tf.minimum(b1[..., 3], b2[..., 3]) - tf.maximum(b1[..., 1], b2[..., 1]), 0.0)
    inter = inter_h * inter_w
    union = box_area(boxes1)[..., :, None] + box_area(boxes2)[..., None, :] - inter
    return tf.math.divide_no_nan(inter, union)


def encode_boxes(boxes: tf.Tensor, reference: tf.Tensor, weights: tuple[float, ...]) -> tf.Tensor:
    """Deltas that move ``reference`` boxes onto ``boxes`` (R-CNN parameterisation).

    Args:
      boxes, reference: [..., 4] (y1, x1, y2, x2).
      weights: (wy, wx, wh, ww) multipliers, e.g. (10, 10, 5, 5).
    Returns:
      [..., 4] deltas (dy, dx, dh, dw).
    """
    ref_h = reference[..., 2] - reference[..., 0]
    ref_w = reference[..., 3] - reference[..., 1]
    ref_cy = reference[..., 0] + 0.5 * ref_h
    ref_cx = reference[..., 1] + 0.5 * ref_w
    h = boxes[..., 2] - boxes[..., 0]
    w = boxes[..., 3] - boxes[..., 1]
    cy = boxes[..., 0] + 0.5 * h
    cx = boxes[..., 1] + 0.5 * w
    wy, wx, wh, ww = weights
    # Degenerate boxes (padding) give log(0); callers mask them, keep the math finite.
    tiny = 1e-8
    return tf.stack(
        [
            wy * (cy - ref_cy) / tf.maximum(ref_h, tiny),
            wx * (cx - ref_cx) / tf.maximum(ref_w, tiny),
            wh * tf.math.log(tf.maximum(h, tiny) / tf.maximum(ref_h, tiny)),
            ww * tf.math.log(tf.maximum(w, tiny) / tf.maximum(ref_w, tiny)),
        ],
        axis=-1,
    )


def decode_boxes(deltas: tf.Tensor, reference: tf.Tensor, weights: tuple[float, ...]) -> tf.Tensor:
    """Apply deltas (dy, dx, dh, dw) to ``reference`` boxes; inverse of :func:`encode_boxes`.

    Args:
      deltas: [..., 4]; reference: [..., 4] broadcastable to deltas.
    Returns:
      [..., 4] boxes (y1, x1, y2, x2).
    """
    ref_h = reference[..., 2] - reference[..., 0]
    ref_w = reference[..., 3] - reference[..., 1]
    ref_cy = reference[..., 0] + 0.5 * ref_h
    ref_cx = reference[..., 1] + 0.5 * ref_w
    wy, wx, wh, ww = weights
    dy = deltas[..., 0] / wy
    dx = deltas[..., 1] / wx
    dh = tf.minimum(deltas[..., 2] / wh, BBOX_XFORM_CLIP)
    dw = tf.minimum(deltas[..., 3] / ww, BBOX_XFORM_CLIP)
    cy = dy * ref_h + ref_cy
    cx = dx * ref_w + ref_cx
    h = tf.exp(dh) * ref_h
    w = tf.exp(dw) * ref_w
    return tf.stack([cy - 0.5 * h, cx - 0.5 * w, cy + 0.5 * h, cx + 0.5 * w], axis=-1)


def clip_boxes(boxes: tf.Tensor, image_sizes: tf.Tensor) -> tf.Tensor:
    """Clip boxes to [0, h] x [0, w], or to a window.

    Args:
      boxes: [B, N, 4]; image_sizes: [B, 2] (h, w) of the valid image region, or [B, 4]
        windows (y1, x1, y2, x2): the boxes are clipped to [y1, y2] x [x1, x2].
    """
    sizes = tf.cast(image_sizes, boxes.dtype)
    if sizes.shape[-1] == 4:
        low_y, low_x, h, w = (sizes[:, None, i:i + 1] for i in range(4))
    else:
        low_y = low_x = tf.zeros([], boxes.dtype)
        h = sizes[:, None, 0:1]
        w = sizes[:, None, 1:2]
    y1, x1, y2, x2 = tf.split(boxes, 4, axis=-1)
    return tf.concat(
        [
            tf.clip_by_value(y1, low_y, h),
            tf.clip_by_value(x1, low_x, w),
            tf.clip_by_value(y2, low_y, h),
            tf.clip_by_value(x2, low_x, w),
        ],
        axis=-1,
    )


def boxes_min_side(boxes: tf.Tensor) -> tf.Tensor:
    """[..., 4] -> [...] min(height, width)."""
    return tf.minimum(boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1])
