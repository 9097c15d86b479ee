"""The serving function every non-TensorFlow export traces.

Contract (the SavedModel's ``serving_default``, without ``class_names``, which the
runtimes' tensor types cannot all carry; the names are in ``labels.txt``):

* input ``input_tensor`` uint8 ``[batch, H, W, 3]`` RGB, any batch >= 1 and any H, W
  (one size per call);
* outputs, D = ``DETECTION_MAX_INSTANCES``, rows past ``num_detections`` are zero:
  ``detection_boxes`` float32 ``[batch, D, 4]`` (ymin, xmin, ymax, xmax) normalised by
  the original image's height and width; ``detection_scores`` float32 ``[batch, D]``;
  ``detection_classes`` float32 ``[batch, D]`` (1-based ids); ``num_detections``
  float32 ``[batch]``; ``detection_masks`` float32 ``[batch, D, 28, 28]`` (with a mask
  head); ``detection_keypoints`` float32 ``[batch, D, K, 2]`` (y, x) normalised and
  ``detection_keypoint_scores`` ``[batch, D, K]`` (with a keypoint head).

Preprocessing is in the graph and equals :meth:`MaskRCNN.detect`'s for a batch of
images of one size: torchvision's resize rule, bilinear resize, zero padding to the
Config's canvas, normalisation (inside the model).
"""

from __future__ import annotations

import tensorflow as tf

from mrcnn.config import Config
from mrcnn.data import transforms
from mrcnn.export.saved_model import INPUT_NAME, _postprocess

OUTPUT_ORDER = (
    "detection_boxes",
    "detection_scores",
    "detection_classes",
    "num_detections",
    "detection_masks",
    "detection_keypoints",
    "detection_keypoint_scores",
)


def target_size_int(height: tf.Tensor, width: tf.Tensor, config: Config) -> tuple[tf.Tensor, tf.Tensor]:
    """:func:`mrcnn.data.transforms.target_size` in int32 arithmetic (no float64).

    For runtimes without float64 kernels: LiteRT, and OpenVINO, whose CPU plugin runs
    float64 ops in float32 (``110 * (128 / 110)`` gives 127.99999 there, losing a
    column). ``floor(side * MIN / short)`` is
    computed exactly as an integer division; the float64 rule of ``target_size`` can
    be one row below it when ``side * (MIN / short)`` rounds just under an integer,
    which happens for a few sizes (e.g. a short side of 49 with MIN = 49 * k).
    """
    # int32: side * max(MIN, MAX) stays below 2**31 for sides up to ~1.6M pixels at 1333.
    h = tf.cast(height, tf.int32)
    w = tf.cast(width, tf.int32)
    short, long = tf.minimum(h, w), tf.maximum(h, w)
    lo, hi = int(config.IMAGE_MIN_DIM), int(config.IMAGE_MAX_DIM)
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


def preprocess_batch(images: tf.Tensor, config: Config, float64: bool = True, gather_resize: bool = False):
    """uint8 [B, H, W, 3] (one size) -> (float32 [B, Hp, Wp, 3] raw RGB, sizes int32 [B, 2],
    scales float32 [B, 2] = (new_h / H, new_w / W), original (H, W) int32 [B, 2]).

    What ``prepare_image_batch`` gives for B images of one size; ``float64=False``
    uses :func:`target_size_int` for the resized size; ``gather_resize=True``
    :func:`resize_bilinear_gather` for the resize.
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
    # Same float rule as resize_and_pad (float64 when allowed) for the scale.
    if float64:
        scale = tf.cast(tf.cast(size, tf.float64) / tf.cast(original, tf.float64), tf.float32)
    else:
        scale = tf.cast(size, tf.float32) / tf.cast(original, tf.float32)
    tile = lambda v: tf.tile(v[None], [batch, 1])  # noqa: E731
    return padded, tile(size), tile(scale), tile(original)


def serving_function(
    model, float64: bool = True, gather_resize: bool = False
) -> tf.types.experimental.PolymorphicFunction:
    """A ``tf.function`` with the contract above, for ``model`` (a MaskRCNN).

    Args:
      model: the MaskRCNN to serve (already built with the RoIAlign the format can run).
      float64: False for runtimes without float64 kernels (see :func:`target_size_int`).
      gather_resize: resize with :func:`resize_bilinear_gather` (OpenVINO).
    Returns:
      A tf.function with input signature uint8 ``[None, None, None, 3]`` named
      ``input_tensor``, returning a dict of the outputs (see module docstring).
    """
    config = model.config

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name=INPUT_NAME)])
    def serve(input_tensor):
        images, sizes, scales, original = preprocess_batch(input_tensor, config, float64, gather_resize)
        out = model({"images": images, "image_sizes": sizes}, training=False)
        result = _postprocess(out, scales, original, ["BG"])
        result.pop("class_names")
        return {k: result[k] for k in OUTPUT_ORDER if k in result}

    return serve
