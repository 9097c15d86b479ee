"""Pre-processing at inference: the one resize/pad rule of ``detect()``, the SavedModel and
every runtime export (ONNX, OpenVINO, LiteRT).

The rule (:mod:`mrcnn.data.transforms`, torchvision's): resize by
``s = min(IMAGE_MIN_DIM / short, IMAGE_MAX_DIM / long)`` to ``floor(side * s)``
(bilinear, half-pixel centres, no antialias), zero-pad bottom/right to the Config's
canvas ("square": ``IMAGE_SHAPE``; "pad32": each side rounded up to 32), a batch to
its largest member. The model normalises (``MaskRCNN.features``).

Entry points, one per way images arrive:

* :func:`prepare_image_batch`: NumPy images of any sizes (``detect()``);
* :func:`preprocess_batch`: a uint8 tensor ``[B, H, W, 3]`` of one size (the runtime
  exports' serving graph);
* :func:`preprocess_image` + :func:`crop_canvas_batch`: one image of any size on the
  largest canvas, for a ``tf.map_fn`` over images of different sizes (the SavedModel).

Outputs, the same in each: images float32 ``[B, Hp, Wp, 3]`` raw RGB 0-255; sizes
int32 ``[B, 2]`` (new_h, new_w) valid region; scales float32 ``[B, 2]`` (new_h / H,
new_w / W), by which detections are divided to return to each image (see
:mod:`mrcnn.inference.postprocess`); original (H, W) int32 ``[B, 2]``.

Two graph forms exist for runtimes without some kernels, chosen by the caller and
giving the same numbers where they run: ``float64=False`` computes the resized size
in exact int32 arithmetic (:func:`target_size_int`; LiteRT has no float64, OpenVINO
runs float64 in float32), ``gather_resize=True`` resizes with Gather and arithmetic
(:func:`resize_bilinear_gather`; OpenVINO).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from mrcnn.config import Config
from mrcnn.data import transforms


def target_size_int(height: tf.Tensor, width: tf.Tensor, config: Config) -> tuple[tf.Tensor, tf.Tensor]:
    """:func:`mrcnn.data.transforms.target_size` in int32 arithmetic (no float64).

    For runtimes without float64 kernels: LiteRT, and OpenVINO, whose CPU plugin runs
    float64 ops in float32 (``110 * (128 / 110)`` gives 127.99999 there, losing a
    column). ``floor(side * MIN / short)`` is computed exactly as an integer division;
    the float64 rule of ``target_size`` can be one row below it when
    ``side * (MIN / short)`` rounds just under an integer, which happens for a few
    sizes (e.g. a short side of 49 with MIN = 49 * k).
    """
    # int32: side * max(MIN, MAX) stays below 2**31 for sides up to ~1.6M pixels at 1333.
    h = tf.cast(height, tf.int32)
    w = tf.cast(width, tf.int32)
    short, long = tf.minimum(h, w), tf.maximum(h, w)
    lo, hi = transforms.inference_min_dim(config), int(config.IMAGE_MAX_DIM)
    # min(lo / short, hi / long) without division: lo / short <= hi / long <=> lo * long <= hi * short.
    by_short = lo * long <= hi * short
    num = tf.where(by_short, tf.constant(lo, tf.int32), tf.constant(hi, tf.int32))
    den = tf.where(by_short, short, long)
    new_h = tf.maximum(tf.cast(h * num // den, tf.int32), 1)
    new_w = tf.maximum(tf.cast(w * num // den, tf.int32), 1)
    return new_h, new_w


def resize_bilinear_gather(images: tf.Tensor, new_h: tf.Tensor, new_w: tf.Tensor) -> tf.Tensor:
    """``tf.image.resize(images, (new_h, new_w), "bilinear")`` (half-pixel centres, no
    antialias) from Gather and arithmetic: float32 [B, H, W, C] -> [B, new_h, new_w, C].

    OpenVINO's conversion of ResizeBilinear is wrong for a batch of more than one image
    with dynamic sizes (tested on 2026.4); this form is exact up to float rounding.
    TF's rule per axis: source ``x = (i + 0.5) * in / out - 0.5``, neighbours
    ``max(floor(x), 0)`` and ``min(ceil(x), in - 1)``, weight ``x - floor(x)``;
    columns first, then rows.
    """
    shape = tf.shape(images)

    def axis(out_size, in_size):
        scale = tf.cast(in_size, tf.float32) / tf.cast(out_size, tf.float32)
        x = (tf.cast(tf.range(out_size), tf.float32) + 0.5) * scale - 0.5
        low = tf.floor(x)
        frac = x - low
        last = tf.cast(in_size - 1, tf.float32)
        lo = tf.cast(tf.clip_by_value(low, 0.0, last), tf.int32)
        hi = tf.cast(tf.clip_by_value(tf.math.ceil(x), 0.0, last), tf.int32)
        return lo, hi, frac

    x_lo, x_hi, fx = axis(new_w, shape[2])
    left, right = tf.gather(images, x_lo, axis=2), tf.gather(images, x_hi, axis=2)
    rows = left + (right - left) * fx[None, None, :, None]
    y_lo, y_hi, fy = axis(new_h, shape[1])
    top, bottom = tf.gather(rows, y_lo, axis=1), tf.gather(rows, y_hi, axis=1)
    return top + (bottom - top) * fy[None, :, None, None]


def preprocess_batch(
    images: tf.Tensor, config: Config, float64: bool = True, gather_resize: bool = False
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """uint8 (or float 0-255) [B, H, W, 3] of one size -> (images float32 [B, Hp, Wp, 3],
    sizes int32 [B, 2], scales float32 [B, 2], original (H, W) int32 [B, 2]).

    ``float64=False`` computes the resized size with :func:`target_size_int`;
    ``gather_resize=True`` resizes with :func:`resize_bilinear_gather`.
    """
    shape = tf.shape(images)
    batch, height, width = shape[0], shape[1], shape[2]
    if float64:
        new_h, new_w = transforms.target_size(height, width, config)
    else:
        new_h, new_w = target_size_int(height, width, config)
    if gather_resize:
        resized = resize_bilinear_gather(tf.cast(images, tf.float32), new_h, new_w)
    else:
        resized = tf.image.resize(
            tf.cast(images, tf.float32), tf.stack([new_h, new_w]), method="bilinear", antialias=False
        )
    pad_h, pad_w = transforms.padded_size(new_h, new_w, config)
    padded = tf.pad(resized, [[0, 0], [0, pad_h - new_h], [0, pad_w - new_w], [0, 0]])
    size = tf.stack([new_h, new_w])
    original = tf.stack([height, width])
    # The scale from the integer sizes, as resize_and_pad (float64 where the runtime has it).
    if float64:
        scale = tf.cast(tf.cast(size, tf.float64) / tf.cast(original, tf.float64), tf.float32)
    else:
        scale = tf.cast(size, tf.float32) / tf.cast(original, tf.float32)
    tile = lambda v: tf.tile(tf.expand_dims(v, 0), tf.stack([batch, 1]))  # noqa: E731
    return padded, tile(size), tile(scale), tile(original)


def preprocess_image(image: tf.Tensor, config: Config) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """uint8 [H, W, 3] -> (canvas float32 [S, S, 3], size int32 [2], scale float32 [2],
    original (H, W) int32 [2]), S = ``IMAGE_SHAPE[0]``, the largest canvas any input can
    need, so that images of different sizes stack in a ``tf.map_fn``; crop the stack with
    :func:`crop_canvas_batch`. Fails on an image with no pixels."""
    side = config.IMAGE_SHAPE[0]
    not_empty = tf.debugging.assert_positive(
        tf.shape(image)[:2], message="input image has zero height or width; expected [H>=1, W>=1, 3]"
    )
    with tf.control_dependencies([not_empty]):
        image = tf.identity(image)
    padded, size, scale, original = preprocess_batch(image[None], config)
    pshape = tf.shape(padded)
    canvas = tf.pad(padded[0], [[0, side - pshape[1]], [0, side - pshape[2]], [0, 0]])
    return tf.ensure_shape(canvas, [side, side, 3]), size[0], scale[0], original[0]


def preprocess_image_signature(config: Config) -> tuple[tf.TensorSpec, ...]:
    """``fn_output_signature`` of a ``tf.map_fn`` over :func:`preprocess_image`."""
    side = config.IMAGE_SHAPE[0]
    return (
        tf.TensorSpec([side, side, 3], tf.float32),
        tf.TensorSpec([2], tf.int32),
        tf.TensorSpec([2], tf.float32),
        tf.TensorSpec([2], tf.int32),
    )


def crop_canvas_batch(canvases: tf.Tensor, sizes: tf.Tensor, config: Config) -> tf.Tensor:
    """[B, S, S, 3] canvases of :func:`preprocess_image` -> the batch :func:`prepare_image_batch`
    gives: the fixed square in "square" mode, the largest padded image in "pad32"."""
    pad_h, pad_w = transforms.padded_size(sizes[:, 0], sizes[:, 1], config)
    height = tf.reduce_max(pad_h * tf.ones_like(sizes[:, 0]))
    width = tf.reduce_max(pad_w * tf.ones_like(sizes[:, 1]))
    return canvases[:, :height, :width, :]


def prepare_image_batch(
    images: Sequence[np.ndarray], config: Config
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """NumPy images of any sizes -> the model's input batch (what ``detect()`` feeds it).

    Each image goes through :func:`~mrcnn.data.loader.sanitize_image` (the gray/RGBA/
    uint16/float conversions training applies) and :func:`preprocess_batch`; then all
    are zero-padded to the largest.

    Returns:
        images: float32 ``[B, Hp, Wp, 3]`` raw RGB 0-255.
        image_sizes: int32 ``[B, 2]`` (new_h, new_w) valid regions.
        scales: float32 ``[B, 2]`` (new_h / H, new_w / W); divide detected (y, x)
            coordinates by it to return to each original image.
    """
    from mrcnn.data.loader import sanitize_image

    if len(images) == 0:
        raise ValueError("prepare_image_batch needs at least one image")
    resized, sizes, scales = [], [], []
    for i, image in enumerate(images):
        image = sanitize_image(image, f"images[{i}]")
        out, size, scale, _ = preprocess_batch(tf.convert_to_tensor(image)[None], config)
        resized.append(out[0].numpy())
        sizes.append(size[0].numpy())
        scales.append(scale[0].numpy())
    pad_h = max(r.shape[0] for r in resized)
    pad_w = max(r.shape[1] for r in resized)
    batch = np.zeros((len(resized), pad_h, pad_w, 3), np.float32)
    for i, r in enumerate(resized):
        batch[i, : r.shape[0], : r.shape[1]] = r
    return batch, np.stack(sizes).astype(np.int32), np.stack(scales).astype(np.float32)
