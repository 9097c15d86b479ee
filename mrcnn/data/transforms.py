"""Pure TensorFlow image/box/mask transforms shared by training, inference and export.

Everything here is built from stock TF ops, works on dynamic shapes and traces
inside ``tf.data`` maps, ``tf.function`` and SavedModel signatures. Config values
are read at trace time as Python constants.

Conventions
-----------
* Images are ``[H, W, 3]`` RGB. After :func:`resize_and_pad` they are float32 in
  0-255 pixel units, **not** normalised: the model subtracts ``MEAN_PIXEL`` and
  divides by ``STD_PIXEL`` itself.
* Boxes are ``(y1, x1, y2, x2)`` float32 in the *pixel-edge* convention: a box
  covers the continuous region ``[y1, y2) x [x1, x2)`` and pixel ``(r, c)`` is the
  unit square ``[r, r+1) x [c, c+1)``, so a one-pixel mask has the box
  ``(r, c, r+1, c+1)``. In this convention a half-pixel-centre resize by
  ``(sy, sx)`` maps a box exactly to ``box * (sy, sx, sy, sx)`` and a horizontal
  flip of an image of width ``W`` maps ``x`` to ``W - x``.
* Per-instance mask stacks are ``[N, h, w]`` (instances first).

Resize rule
-----------
The image is scaled by ``s = min(IMAGE_MIN_DIM / min(H, W), IMAGE_MAX_DIM / max(H, W))``
computed in float64, and the new size is ``floor(H * s), floor(W * s)`` in
float64: exactly what torchvision's ``GeneralizedRCNNTransform`` does in eager mode
(Python floats, then ``F.interpolate(scale_factor=s, recompute_scale_factor=True)``
which floors ``float(H) * s`` in double). The only departure: a side that would
round to 0 (aspect ratios beyond IMAGE_MAX_DIM:1) is kept at 1 pixel instead of
failing.

The resampling is ``tf.image.resize`` bilinear with half-pixel centres and no
antialiasing, which is the same arithmetic as ``torch.nn.functional.interpolate(
mode="bilinear", align_corners=False)`` (both sample at ``(i + 0.5) * in/out - 0.5``
and clamp at the border).

The resized image sits in the top-left corner of the padded canvas; the padding
is 0 in raw pixel units. (torchvision pads *after* normalising, so its padding is
0 in normalised units; the model can reproduce that by zeroing the region outside
``image_sizes`` after normalising.)

Padding
-------
``"square"``: every image is padded to ``config.IMAGE_SHAPE[:2]`` (IMAGE_MAX_DIM
rounded up to a multiple of 32): static shapes, what training uses.
``"pad32"``: each side is rounded up to a multiple of 32 (then batches are padded
to their largest member).
"""

from __future__ import annotations

import tensorflow as tf

from mrcnn.config import Config

# Stride of the coarsest feature map the padded input must divide (P5 = 32; P6 is
# a stride-2 max-pool of P5 and tolerates odd sizes).
SIZE_DIVISIBILITY = 32


def _round_up(x: tf.Tensor, multiple: int) -> tf.Tensor:
    return (x + (multiple - 1)) // multiple * multiple


def inference_min_dim(config: Config) -> int:
    """The short side used outside training: IMAGE_MIN_DIM, or the largest of its
    choices when it is a tuple (multi-scale training, see mrcnn.data.augment)."""
    value = config.IMAGE_MIN_DIM
    return int(max(value)) if isinstance(value, (tuple, list)) else int(value)


def target_size(
    height: tf.Tensor | int, width: tf.Tensor | int, config: Config
) -> tuple[tf.Tensor, tf.Tensor]:
    """Resized (new_h, new_w) as int32 scalar tensors for an H x W image.

    ``scale = min(IMAGE_MIN_DIM / min(h, w), IMAGE_MAX_DIM / max(h, w))`` and
    ``new = floor(side * scale)``, all in float64 (torchvision's rule; e.g. 480x640
    with 800/1333 -> 800x1066). Each side is at least 1.
    """
    h = tf.cast(height, tf.float64)
    w = tf.cast(width, tf.float64)
    # float64 on purpose: float32 can push h * scale just below an integer and lose
    # a row relative to torchvision (which uses Python floats).
    scale = tf.minimum(
        tf.constant(float(inference_min_dim(config)), tf.float64) / tf.minimum(h, w),
        tf.constant(float(config.IMAGE_MAX_DIM), tf.float64) / tf.maximum(h, w),
    )
    new_h = tf.maximum(tf.cast(tf.floor(h * scale), tf.int32), 1)
    new_w = tf.maximum(tf.cast(tf.floor(w * scale), tf.int32), 1)
    return new_h, new_w


def padded_size(
    new_h: tf.Tensor | int, new_w: tf.Tensor | int, config: Config, mode: str | None = None
) -> tuple[tf.Tensor, tf.Tensor]:
    """Padded canvas (Hp, Wp) int32 scalars for a resized new_h x new_w image.

    ``mode`` (default ``config.IMAGE_RESIZE_MODE``): "square": ``config.IMAGE_SHAPE[:2]``
    whatever the input; "pad32": each side rounded up to a multiple of 32.
    """
    if (mode or config.IMAGE_RESIZE_MODE) == "square":
        side = config.IMAGE_SHAPE[0]
        return tf.constant(side, tf.int32), tf.constant(side, tf.int32)
    return (
        _round_up(tf.cast(new_h, tf.int32), SIZE_DIVISIBILITY),
        _round_up(tf.cast(new_w, tf.int32), SIZE_DIVISIBILITY),
    )


def _static_padded_shape(config: Config, mode: str | None = None) -> tuple[int | None, int | None]:
    """(Hp, Wp) as Python ints when the mode makes them static, else (None, None)."""
    if (mode or config.IMAGE_RESIZE_MODE) == "square":
        side = config.IMAGE_SHAPE[0]
        return side, side
    return None, None


def resize_and_pad(
    image: tf.Tensor, config: Config, mode: str | None = None
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Resize an image by the torchvision rule and pad it bottom/right with zeros.

    Args:
        image: uint8 or float ``[H, W, 3]`` RGB in 0-255 units (any H, W).
        config: reads IMAGE_MIN_DIM, IMAGE_MAX_DIM, IMAGE_RESIZE_MODE.
        mode: "square" or "pad32" instead of IMAGE_RESIZE_MODE (training pads
            by ``Config.TRAIN_PADDING``).

    Returns:
        image: float32 ``[Hp, Wp, 3]`` raw RGB 0-255 (not normalised), the resized
            image in the top-left corner, zeros elsewhere. Static shape in
            "square" mode.
        image_size: int32 ``[2]`` = (new_h, new_w), the valid region.
        scale: float32 ``[2]`` = (new_h / H, new_w / W); multiply (y, x) coordinates
            of the original image by it to get network-input coordinates (and
            divide detections by it to go back).
    """
    image = tf.convert_to_tensor(image)
    shape = tf.shape(image)
    height, width = shape[0], shape[1]
    new_h, new_w = target_size(height, width, config)
    new_size = tf.stack([new_h, new_w])
    # Bilinear, half-pixel centres, no antialias == torch interpolate(align_corners=False).
    resized = tf.image.resize(
        tf.cast(image, tf.float32), new_size, method="bilinear", antialias=False
    )
    pad_h, pad_w = padded_size(new_h, new_w, config, mode)
    padded = tf.pad(resized, [[0, pad_h - new_h], [0, pad_w - new_w], [0, 0]])
    static_h, static_w = _static_padded_shape(config, mode)
    padded = tf.ensure_shape(padded, [static_h, static_w, 3])
    # Scale from the integer sizes (not the float `scale` of target_size) so that boxes
    # land exactly where the resampled pixels are, as torchvision's resize_boxes does.
    scale = tf.cast(
        tf.cast(new_size, tf.float64) / tf.cast(tf.stack([height, width]), tf.float64),
        tf.float32,
    )
    return padded, new_size, scale


def resize_masks(masks: tf.Tensor, size: tf.Tensor) -> tf.Tensor:
    """Resize a stack of binary masks: bilinear on float, then ``>= 0.5``.

    Args:
        masks: ``[N, H, W]`` bool/uint8/float (0/1), N may be 0.
        size: int32 ``[2]`` target (h, w).

    Returns:
        uint8 ``[N, h, w]`` of 0/1.
    """
    masks = tf.cast(masks, tf.float32)[..., tf.newaxis]
    resized = tf.image.resize(masks, size, method="bilinear", antialias=False)
    return tf.cast(resized[..., 0] >= 0.5, tf.uint8)


def pad_masks(masks: tf.Tensor, padded_h: tf.Tensor | int, padded_w: tf.Tensor | int) -> tf.Tensor:
    """Zero-pad ``[N, h, w]`` masks bottom/right to ``[N, padded_h, padded_w]``."""
    shape = tf.shape(masks)
    return tf.pad(masks, [[0, 0], [0, padded_h - shape[1]], [0, padded_w - shape[2]]])


def resize_and_pad_masks(masks: tf.Tensor, config: Config, mode: str | None = None) -> tf.Tensor:
    """Full-image masks ``[N, H, W]`` -> uint8 ``[N, Hp, Wp]``, geometry of resize_and_pad.

    The target size is computed from the masks' own H, W, so it matches the image
    of the same H, W exactly.
    """
    masks = tf.convert_to_tensor(masks)
    shape = tf.shape(masks)
    new_h, new_w = target_size(shape[1], shape[2], config)
    resized = resize_masks(masks, tf.stack([new_h, new_w]))
    pad_h, pad_w = padded_size(new_h, new_w, config, mode)
    padded = pad_masks(resized, pad_h, pad_w)
    static_h, static_w = _static_padded_shape(config, mode)
    return tf.ensure_shape(padded, [None, static_h, static_w])


def scale_boxes(boxes: tf.Tensor, scale: tf.Tensor) -> tf.Tensor:
    """``[N, 4]`` (y1, x1, y2, x2) times ``scale`` = (sy, sx) -> float32 ``[N, 4]``."""
    scale = tf.cast(scale, tf.float32)
    return tf.cast(boxes, tf.float32) * tf.concat([scale, scale], axis=0)


def flip_image(image: tf.Tensor) -> tf.Tensor:
    """Mirror an ``[H, W, C]`` image left-right."""
    return tf.reverse(image, axis=[1])


def flip_boxes(boxes: tf.Tensor, width: tf.Tensor | int | float) -> tf.Tensor:
    """Mirror ``[N, 4]`` pixel-edge boxes in an image of ``width``: x -> width - x.

    x1 and x2 swap roles so the result is still x1 <= x2.
    """
    boxes = tf.cast(boxes, tf.float32)
    width = tf.cast(width, tf.float32)
    y1, x1, y2, x2 = tf.unstack(boxes, num=4, axis=-1)
    return tf.stack([y1, width - x2, y2, width - x1], axis=-1)


def flip_masks(masks: tf.Tensor) -> tf.Tensor:
    """Mirror ``[N, h, w]`` masks left-right.

    Works for full-image masks and for mini masks alike: a mini mask lives in its
    box's frame, and the flipped box's frame is the mirrored original frame.
    """
    return tf.reverse(masks, axis=[2])


def pad_to_count(x: tf.Tensor, count: int) -> tf.Tensor:
    """Zero-pad the first axis of ``x`` to ``count`` (must be >= its length).

    The result has static first dimension ``count``; the caller guarantees
    ``len(x) <= count`` (the loader truncates to MAX_GT_INSTANCES).
    """
    x = tf.convert_to_tensor(x)
    n = tf.shape(x)[0]
    rank = len(x.shape)
    paddings = tf.concat(
        [tf.stack([[0, count - n]]), tf.zeros([rank - 1, 2], tf.int32)], axis=0
    )
    padded = tf.pad(x, paddings)
    return tf.ensure_shape(padded, [count, *x.shape[1:]])
