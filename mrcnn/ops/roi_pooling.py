"""RoIAlign with torchvision/Detectron2 semantics, and the FPN multi-level pooler.

Public as ``mrcnn.ops.roi_align`` (the function), ``mrcnn.ops.multilevel_roi_align``, ...;
the Keras stage that owns the pooler settings is :class:`mrcnn.layers.RoIPooler`.

Conventions: features NHWC float32; boxes (y1, x1, y2, x2) in input-image pixels;
``spatial_scale`` maps them onto the feature map (1 / stride).

Implementations behind :func:`roi_align`:
- ``"portable"``: stock TensorFlow ops only (exportable, XLA-friendly). Each bin's
  ``s x s`` samples are taken with one ``tf.image.crop_and_resize`` call on a map
  replicate-padded by one pixel (which reproduces the kernels' border rule), then
  average-pooled. Needs a fixed ``sampling_ratio > 0``.
- ``"custom"``: the C++/CUDA op built from ``mrcnn/ops/kernels/`` (all sampling ratios).
- ``"auto"``: ``"custom"`` where it is built, else ``"portable"``.
"""

from __future__ import annotations

import tensorflow as tf

IMPLEMENTATIONS = ("auto", "portable", "custom")


def _pair(output_size) -> tuple[int, int]:
    if isinstance(output_size, (list, tuple)):
        ph, pw = output_size
    else:
        ph = pw = output_size
    return int(ph), int(pw)


def roi_align(
    features: tf.Tensor,
    boxes: tf.Tensor,
    box_indices: tf.Tensor,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = 0,
    aligned: bool = True,
    implementation: str = "auto",
) -> tf.Tensor:
    """Pool a fixed-size feature window for each box.

    Args:
      features: [N, H, W, C] float32.
      boxes: [K, 4] float32, (y1, x1, y2, x2) in input-image pixels.
      box_indices: [K] int32, the image of each box in ``features``.
      output_size: ph or (ph, pw).
      spatial_scale: feature pixels per input pixel (1 / stride).
      sampling_ratio: samples per bin along each axis; <= 0 is adaptive
        (ceil(roi_size / output_size)), which only the custom op supports.
      aligned: shift box coordinates by -0.5 feature pixel (Detectron2 "aligned").
      implementation: "auto", "portable" or "custom".

    Returns:
      [K, ph, pw, C] float32. Gradients flow to ``features`` only.
    """
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
    ph, pw = _pair(output_size)
    # Cast here so that Keras' symbolic building (which may hand over float tensors)
    # never feeds float indices to the custom op, whose input is int32.
    box_indices = tf.cast(box_indices, tf.int32)
    if implementation != "portable":
        from mrcnn.ops import custom_roi_align

        if implementation == "custom" or custom_roi_align.is_available(warn=True):
            return custom_roi_align.roi_align(
                features, boxes, box_indices, (ph, pw), spatial_scale, sampling_ratio, aligned
            )
    return roi_align_portable(
        features, boxes, box_indices, (ph, pw), spatial_scale, sampling_ratio, aligned
    )


def roi_align_portable(
    features: tf.Tensor,
    boxes: tf.Tensor,
    box_indices: tf.Tensor,
    output_size: tuple[int, int],
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
) -> tf.Tensor:
    """Stock-ops RoIAlign; arguments as :func:`roi_align`."""
    if sampling_ratio <= 0:
        raise ValueError(
            "the portable RoIAlign needs a fixed sampling_ratio > 0 "
            f"(got {sampling_ratio}); adaptive sampling needs implementation='custom'"
        )
    ph, pw = _pair(output_size)
    s = int(sampling_ratio)
    features = tf.convert_to_tensor(features, tf.float32)
    boxes = tf.stop_gradient(tf.cast(boxes, tf.float32))
    box_indices = tf.cast(box_indices, tf.int32)
    height = tf.cast(tf.shape(features)[1], tf.float32)
    width = tf.cast(tf.shape(features)[2], tf.float32)

    offset = 0.5 if aligned else 0.0
    y1, x1, y2, x2 = tf.unstack(boxes * spatial_scale - offset, axis=-1)
    roi_h, roi_w = y2 - y1, x2 - x1
    if not aligned:
        roi_h, roi_w = tf.maximum(roi_h, 1.0), tf.maximum(roi_w, 1.0)
    # Sample i along y (i = 0..s*ph-1) sits at y1 + (i + 0.5) * step; +1 for the pad row.
    step_h = roi_h / float(s * ph)
    step_w = roi_w / float(s * pw)
    first_y = y1 + 0.5 * step_h + 1.0
    first_x = x1 + 0.5 * step_w + 1.0
    last_y = first_y + step_h * float(s * ph - 1)
    last_x = first_x + step_w * float(s * pw - 1)
    # crop_and_resize maps normalised coordinate c to pixel c * (size - 1).
    norm_h, norm_w = height + 1.0, width + 1.0  # padded size - 1
    crop_boxes = tf.stack([first_y / norm_h, first_x / norm_w, last_y / norm_h, last_x / norm_w], -1)

    # Replicate-pad by one pixel: samples in [-1, 0] read row 0 and samples in
    # [H-1, H] read row H-1, as the reference kernels clamp; samples beyond that
    # fall outside the padded map and crop_and_resize's extrapolation gives 0.
    padded = tf.pad(features, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="SYMMETRIC")
    samples = tf.image.crop_and_resize(
        padded, crop_boxes, box_indices, (s * ph, s * pw), method="bilinear", extrapolation_value=0.0
    )
    if s == 1:
        return samples
    return tf.nn.avg_pool2d(samples, ksize=s, strides=s, padding="VALID")


def fpn_levels(
    boxes: tf.Tensor,
    min_level: int = 2,
    max_level: int = 5,
    canonical_level: int = 4,
    canonical_size: float = 224.0,
) -> tf.Tensor:
    """FPN level of each box: floor(k0 + log2(sqrt(area) / s0) + 1e-6), clamped.

    Args:
      boxes: [..., 4] (y1, x1, y2, x2) input-image pixels.
    Returns:
      [...] int32 levels in [min_level, max_level] (torchvision's LevelMapper).
    """
    # float64 so that the 1e-6 margin is not swamped by float32 rounding (float32 has
    # ~2.4e-7 resolution at levels 2..5): the level is exactly the formula's for the
    # given float32 boxes.
    boxes = tf.cast(boxes, tf.float64)
    area = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
    size = tf.sqrt(tf.maximum(area, 0.0))
    log2 = tf.math.log(size / canonical_size) / tf.math.log(tf.constant(2.0, tf.float64))
    level = tf.floor(canonical_level + log2 + 1e-6)
    return tf.cast(tf.clip_by_value(level, min_level, max_level), tf.int32)


def multilevel_roi_align(
    features: list[tf.Tensor] | tuple[tf.Tensor, ...],
    boxes: tf.Tensor,
    output_size: int | tuple[int, int],
    strides: tuple[int, ...] = (4, 8, 16, 32),
    sampling_ratio: int = 2,
    aligned: bool = True,
    canonical_level: int = 4,
    canonical_size: float = 224.0,
    implementation: str = "auto",
) -> tf.Tensor:
    """The FPN pooler: each box pooled from the level its size selects.

    Args:
      features: one [B, Hl, Wl, C] map per level, finest first (P2..P5), with
        the given strides.
      boxes: [B, R, 4] (y1, x1, y2, x2) input-image pixels.
    Returns:
      [B, R, ph, pw, C] float32, in the order of ``boxes``.
    """
    ph, pw = _pair(output_size)
    batch = tf.shape(boxes)[0]
    num_rois = tf.shape(boxes)[1]
    flat_boxes = tf.reshape(boxes, [-1, 4])
    flat_batch = tf.repeat(tf.range(batch, dtype=tf.int32), num_rois)
    min_level = 2
    levels = fpn_levels(
        flat_boxes, min_level, min_level + len(features) - 1, canonical_level, canonical_size
    )
    pooled, order = [], []
    for i, (feature_map, stride) in enumerate(zip(features, strides)):
        idx = tf.where(tf.equal(levels, min_level + i))[:, 0]
        pooled.append(
            roi_align(
                feature_map,
                tf.gather(flat_boxes, idx),
                tf.gather(flat_batch, idx),
                (ph, pw),
                spatial_scale=1.0 / stride,
                sampling_ratio=sampling_ratio,
                aligned=aligned,
                implementation=implementation,
            )
        )
        order.append(tf.cast(idx, tf.int32))
    # Put every pooled box back at its input position.
    out = tf.dynamic_stitch(order, pooled)
    channels = features[0].shape[-1] or tf.shape(features[0])[-1]
    return tf.reshape(out, tf.stack([batch, num_rois, ph, pw, channels]))
