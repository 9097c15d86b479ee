"""Keypoint encoding and decoding: pure tensor functions (Keypoint R-CNN).

Coordinates
-----------
Keypoints inside the graph are ``(x, y, v)`` float32 in the same continuous
*pixel-edge* frame as boxes (``mrcnn/data/transforms.py``): pixel column ``c``
spans ``[c, c + 1)`` and its centre is ``c + 0.5``; ``v`` is COCO's visibility
flag (0 not labelled, 1 labelled but occluded, 2 visible). The Dataset API and
``detect()`` use COCO's *pixel-index* convention instead (integer ``x`` = centre
of column ``x``); the loader adds 0.5 and ``detect()`` subtracts it (Detectron2's
rule), so a resize by ``s`` is exactly ``x * s`` and a flip is ``W - x`` here.

Heatmap grid
------------
A RoI ``(y1, x1, y2, x2)`` is divided into ``m x m`` cells (m = 56); cell
``(i, j)`` covers ``x in [x1 + j w / m, x1 + (j + 1) w / m)`` (w = x2 - x1), so its
centre is at ``x1 + (j + 0.5) w / m`` — the same cells as RoIAlign's output
bins. Encoding puts a keypoint in the cell that contains it (torchvision's
``keypoints_to_heatmap``: ``floor((x - x1) * m / w)``, a point exactly on the far
edge counts in the last cell); decoding returns the centre of the arg-max cell
plus a sub-cell offset, so an encode/decode round trip is exact to half a cell.
"""

from __future__ import annotations

import tensorflow as tf


def keypoints_to_heatmap_targets(
    keypoints: tf.Tensor, rois: tf.Tensor, heatmap_size: int
) -> tuple[tf.Tensor, tf.Tensor]:
    """Heatmap cell index of each keypoint in its RoI.

    Args:
      keypoints: [..., K, 3] (x, y, v) continuous pixel-edge coordinates.
      rois: [..., 4] (y1, x1, y2, x2) in the same pixels.
      heatmap_size: m.
    Returns:
      (indices [..., K] int32 = row * m + col, 0 where invalid;
       valid [..., K] bool: v > 0 and the keypoint lies inside the RoI).
    """
    m = float(heatmap_size)
    y1, x1, y2, x2 = (rois[..., i : i + 1] for i in range(4))
    x, y, v = keypoints[..., 0], keypoints[..., 1], keypoints[..., 2]
    scale_x = m / tf.maximum(x2 - x1, 1e-6)
    scale_y = m / tf.maximum(y2 - y1, 1e-6)
    col = tf.floor((x - x1) * scale_x)
    row = tf.floor((y - y1) * scale_y)
    # A keypoint on the RoI's far edge belongs to the last cell (torchvision).
    col = tf.where(tf.equal(x, x2), m - 1.0, col)
    row = tf.where(tf.equal(y, y2), m - 1.0, row)
    valid = (v > 0) & (col >= 0) & (row >= 0) & (col < m) & (row < m)
    valid = valid & (x2 > x1) & (y2 > y1)
    index = tf.cast(row, tf.int32) * heatmap_size + tf.cast(col, tf.int32)
    return tf.where(valid, index, 0), valid


def heatmap_targets_to_keypoints(indices: tf.Tensor, rois: tf.Tensor, heatmap_size: int) -> tf.Tensor:
    """Inverse of :func:`keypoints_to_heatmap_targets`: cell indices -> cell centres.

    Args:
      indices: [..., K] int32 row * m + col; rois: [..., 4].
    Returns:
      [..., K, 2] (x, y) continuous pixels of the cells' centres.
    """
    m = heatmap_size
    col = tf.cast(indices % m, tf.float32)
    row = tf.cast(indices // m, tf.float32)
    y1, x1, y2, x2 = (rois[..., i : i + 1] for i in range(4))
    x = x1 + (col + 0.5) * (x2 - x1) / m
    y = y1 + (row + 0.5) * (y2 - y1) / m
    return tf.stack([x, y], axis=-1)


def _parabola_offset(left: tf.Tensor, centre: tf.Tensor, right: tf.Tensor) -> tf.Tensor:
    """Vertex of the parabola through (-1, left), (0, centre), (1, right), in [-0.5, 0.5]."""
    curvature = left - 2.0 * centre + right
    offset = tf.math.divide_no_nan(0.5 * (left - right), curvature)
    # At a maximum the curvature is negative; anything else (flat, border) keeps the centre.
    offset = tf.where(curvature < 0, offset, 0.0)
    return tf.clip_by_value(offset, -0.5, 0.5)


def heatmaps_to_keypoints(logits: tf.Tensor, rois: tf.Tensor) -> tf.Tensor:
    """Keypoints from heatmap logits: arg-max cell + quadratic sub-cell refinement.

    torchvision upsamples each heatmap to its box size (bicubic) before the
    arg-max, which needs a different shape per box; here the arg-max is taken
    on the m x m grid and refined by fitting a parabola through the log-softmax
    values of the peak and its two neighbours along x and along y (the peak of
    a Gaussian blob in closed form). Fixed-shape, in-graph, exportable.

    Args:
      logits: [..., m, m, K] heatmap logits (row = y, col = x).
      rois: [..., 4] (y1, x1, y2, x2) continuous pixels.
    Returns:
      [..., K, 3] (x, y, score) in the RoIs' pixels; score is the spatial-softmax
      probability mass of the 3x3 cells around the peak (in [0, 1]).
    """
    shape = tf.shape(logits)
    lead = shape[:-3]
    m = logits.shape[-2]
    k = shape[-1]
    # -> [N, K, m, m]
    flat = tf.reshape(logits, tf.stack([-1, m, m, k]))
    flat = tf.transpose(flat, [0, 3, 1, 2])
    log_probs = tf.nn.log_softmax(tf.reshape(flat, tf.stack([tf.shape(flat)[0], k, m * m])), axis=-1)
    log_probs = tf.reshape(log_probs, tf.shape(flat))
    peak = tf.argmax(tf.reshape(log_probs, tf.stack([tf.shape(flat)[0], k, m * m])), axis=-1,
                     output_type=tf.int32)
    row, col = peak // m, peak % m

    # 3x3 neighbourhood of the peak; the padding (probability 0) keeps border peaks defined.
    padded = tf.pad(log_probs, [[0, 0], [0, 0], [1, 1], [1, 1]], constant_values=-1e9)
    offsets = tf.range(3)
    rows = row[..., None] + offsets  # [N, K, 3] rows of padded
    cols = col[..., None] + offsets
    lin = rows[..., :, None] * (m + 2) + cols[..., None, :]  # [N, K, 3, 3]
    window = tf.gather(tf.reshape(padded, tf.stack([tf.shape(flat)[0], k, (m + 2) * (m + 2)])),
                       tf.reshape(lin, tf.stack([tf.shape(flat)[0], k, 9])), batch_dims=2)
    window = tf.reshape(window, tf.stack([tf.shape(flat)[0], k, 3, 3]))
    centre = window[..., 1, 1]
    # A peak on the grid border has one neighbour only: no refinement across it.
    dx = tf.where((col > 0) & (col < m - 1), _parabola_offset(window[..., 1, 0], centre, window[..., 1, 2]), 0.0)
    dy = tf.where((row > 0) & (row < m - 1), _parabola_offset(window[..., 0, 1], centre, window[..., 2, 1]), 0.0)
    score = tf.reduce_sum(tf.exp(window), axis=[-2, -1])

    boxes = tf.reshape(rois, [-1, 1, 4])
    y1, x1, y2, x2 = tf.unstack(boxes, axis=-1)
    x = x1 + (tf.cast(col, tf.float32) + 0.5 + dx) * (x2 - x1) / m
    y = y1 + (tf.cast(row, tf.float32) + 0.5 + dy) * (y2 - y1) / m
    out = tf.stack([x, y, score], axis=-1)  # [N, K, 3]
    return tf.reshape(out, tf.concat([lead, tf.stack([k, 3])], axis=0))


def flip_keypoints(keypoints: tf.Tensor, width, permutation) -> tf.Tensor:
    """Mirror ``[N, K, 3]`` keypoints left-right in an image of ``width``.

    x -> width - x (continuous pixel-edge frame, as boxes), then keypoint i takes
    the values of keypoint ``permutation[i]`` (left/right swapped). Unlabelled
    keypoints (v = 0) stay all-zero.
    """
    keypoints = tf.convert_to_tensor(keypoints, tf.float32)
    width = tf.cast(width, tf.float32)
    x, y, v = tf.unstack(keypoints, num=3, axis=-1)
    flipped = tf.stack([tf.where(v > 0, width - x, 0.0), y, v], axis=-1)
    return tf.gather(flipped, list(permutation), axis=-2)


def scale_keypoints(keypoints: tf.Tensor, scale: tf.Tensor) -> tf.Tensor:
    """``[..., K, 3]`` (x, y, v) with (x, y) multiplied by ``scale`` = (sy, sx)."""
    keypoints = tf.convert_to_tensor(keypoints, tf.float32)
    scale = tf.cast(scale, tf.float32)
    factors = tf.stack([scale[1], scale[0], tf.constant(1.0)])
    return keypoints * factors
