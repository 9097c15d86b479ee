"""An independent NumPy reference of torchvision/Detectron2 RoIAlign (forward and backward).

Written straight from the kernel semantics (``shared/docs/reference.md`` §4), one sample at a
time, in float64, with no TensorFlow. Shared by ``test_roi_align.py`` and
``test_custom_roi_align.py``.

Conventions as ``mrcnn.ops.roi_align``: features NHWC, boxes (y1, x1, y2, x2) in input-image
pixels, ``spatial_scale`` onto the feature map, ``sampling_ratio <= 0`` adaptive.
"""

from __future__ import annotations

import math

import numpy as np


def _bilinear_taps(y: float, x: float, height: int, width: int):
    """The four (row, col, weight) taps of one sample, or [] when it falls outside."""
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return []
    y = max(y, 0.0)
    x = max(x, 0.0)
    y_low, x_low = int(y), int(x)
    if y_low >= height - 1:
        y_low = y_high = height - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_low = x_high = width - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1.0 - ly, 1.0 - lx
    return [
        (y_low, x_low, hy * hx),
        (y_low, x_high, hy * lx),
        (y_high, x_low, ly * hx),
        (y_high, x_high, ly * lx),
    ]


def _box_samples(box, ph, pw, spatial_scale, sampling_ratio, aligned):
    """Yield (py, px, sample_y, sample_x) and return the divisor, for one box."""
    offset = 0.5 if aligned else 0.0
    y1, x1, y2, x2 = (float(v) * spatial_scale - offset for v in box)
    roi_h, roi_w = y2 - y1, x2 - x1
    if not aligned:  # malformed RoIs are forced to 1x1
        roi_h, roi_w = max(roi_h, 1.0), max(roi_w, 1.0)
    bin_h, bin_w = roi_h / ph, roi_w / pw
    grid_h = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_h / ph)
    grid_w = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_w / pw)
    count = max(grid_h * grid_w, 1)
    samples = []
    for py in range(ph):
        for px in range(pw):
            for iy in range(grid_h):  # empty when the grid is <= 0
                y = y1 + py * bin_h + (iy + 0.5) * bin_h / grid_h
                for ix in range(grid_w):
                    x = x1 + px * bin_w + (ix + 0.5) * bin_w / grid_w
                    samples.append((py, px, y, x))
    return samples, count


def roi_align_forward(
    features, boxes, box_indices, output_size, spatial_scale=1.0, sampling_ratio=0, aligned=True
):
    features = np.asarray(features, np.float64)
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    box_indices = np.asarray(box_indices).reshape(-1)
    ph, pw = (output_size, output_size) if np.isscalar(output_size) else output_size
    _, height, width, channels = features.shape
    out = np.zeros((len(boxes), ph, pw, channels))
    for k, box in enumerate(boxes):
        fmap = features[int(box_indices[k])]
        samples, count = _box_samples(box, ph, pw, spatial_scale, sampling_ratio, aligned)
        for py, px, y, x in samples:
            for r, c, w in _bilinear_taps(y, x, height, width):
                out[k, py, px] += w * fmap[r, c]
        out[k] /= count
    return out


def roi_align_backward(
    grad, features_shape, boxes, box_indices, output_size, spatial_scale=1.0, sampling_ratio=0,
    aligned=True,
):
    """d(loss)/d(features) given d(loss)/d(output) = ``grad`` [K, ph, pw, C]."""
    grad = np.asarray(grad, np.float64)
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    box_indices = np.asarray(box_indices).reshape(-1)
    ph, pw = (output_size, output_size) if np.isscalar(output_size) else output_size
    _, height, width, _ = features_shape
    dfeat = np.zeros(features_shape)
    for k, box in enumerate(boxes):
        n = int(box_indices[k])
        samples, count = _box_samples(box, ph, pw, spatial_scale, sampling_ratio, aligned)
        for py, px, y, x in samples:
            for r, c, w in _bilinear_taps(y, x, height, width):
                dfeat[n, r, c] += grad[k, py, px] * w / count
    return dfeat


def fpn_levels_reference(boxes, min_level=2, max_level=5, canonical_level=4, canonical_size=224.0):
    """torchvision LevelMapper: floor(k0 + log2(sqrt(area) / s0) + 1e-6), clamped."""
    boxes = np.asarray(boxes, np.float64)
    area = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
    with np.errstate(divide="ignore"):
        level = np.floor(canonical_level + np.log2(np.sqrt(np.maximum(area, 0.0)) / canonical_size) + 1e-6)
    return np.clip(level, min_level, max_level).astype(np.int32)


def random_case(rng, num_images=2, height=9, width=11, channels=3, num_boxes=12, scale=0.5,
                border=True):
    """Random features and boxes in image pixels (``scale`` maps them onto the map); with
    ``border`` the boxes straddle every edge of the map and some lie fully outside."""
    features = rng.standard_normal((num_images, height, width, channels)).astype(np.float32)
    img_h, img_w = height / scale, width / scale
    lo, hi = (-0.4, 1.4) if border else (0.0, 1.0)
    y = np.sort(rng.uniform(lo, hi, (num_boxes, 2)) * img_h, axis=1)
    x = np.sort(rng.uniform(lo, hi, (num_boxes, 2)) * img_w, axis=1)
    boxes = np.stack([y[:, 0], x[:, 0], y[:, 1], x[:, 1]], 1)
    if border:
        # Explicit cases: across each edge, each corner, and fully outside each side.
        extra = np.array(
            [
                [-0.2, 0.2, 0.5, 0.7],  # top edge
                [0.3, -0.2, 0.6, 0.4],  # left edge
                [0.6, 0.3, 1.2, 0.8],  # bottom edge
                [0.2, 0.7, 0.6, 1.3],  # right edge
                [-0.3, -0.3, 1.3, 1.3],  # all four
                [-0.6, 0.2, -0.1, 0.6],  # fully above
                [1.1, 0.2, 1.5, 0.6],  # fully below
                [0.2, -0.7, 0.6, -0.05],  # fully left
                [0.2, 1.05, 0.6, 1.6],  # fully right
            ]
        ) * np.array([img_h, img_w, img_h, img_w])
        boxes = np.concatenate([boxes, extra], 0)
    indices = rng.integers(0, num_images, len(boxes)).astype(np.int32)
    return features, boxes.astype(np.float32), indices


# torchvision's published values: arange(25) as a 5x5 map, box (1, 1, 3, 3), 4x4, scale 1.
ARANGE_BOX = np.array([[1.0, 1.0, 3.0, 3.0]], np.float32)
ARANGE_EXPECTED = {
    False: np.array(
        [[7.5, 8, 8.5, 9], [10, 10.5, 11, 11.5], [12.5, 13, 13.5, 14], [15, 15.5, 16, 16.5]]
    ),
    True: np.array(
        [[4.5, 5, 5.5, 6], [7, 7.5, 8, 8.5], [9.5, 10, 10.5, 11], [12, 12.5, 13, 13.5]]
    ),
}


def arange_features():
    return np.arange(25, dtype=np.float32).reshape(1, 5, 5, 1)
