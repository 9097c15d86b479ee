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
from mrcnn.export import INPUT_NAME, _postprocess

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

    For runtimes without float64 kernels (LiteRT). ``floor(side * MIN / short)`` is
    computed exactly as an integer division; the float64 rule of ``target_size`` can
    be one row below it when ``side * (MIN / short)`` rounds just under an integer,
    which happens for a few sizes (e.g. a short side of 49 with MIN = 49 * k).
    """
    h = tf.cast(height, tf.int64)
    w = tf.cast(width, tf.int64)
    short, long = tf.minimum(h, w), tf.maximum(h, w)
    lo, hi = int(config.IMAGE_MIN_DIM), int(config.IMAGE_MAX_DIM)
    # min(lo / short, hi / long) without division: lo / short <= hi / long <=> lo * long <= hi * short.
    by_short = lo * long <= hi * short
    num = tf.where(by_short, tf.constant(lo, tf.int64), tf.constant(hi, tf.int64))
    den = tf.where(by_short, short, long)
    new_h = tf.maximum(tf.cast(h * num // den, tf.int32), 1)
    new_w = tf.maximum(tf.cast(w * num // den, tf.int32), 1)
    return new_h, new_w


def preprocess_batch(images: tf.Tensor, config: Config, float64: bool = True):
    """uint8 [B, H, W, 3] (one size) -> (float32 [B, Hp, Wp, 3] raw RGB, sizes int32 [B, 2],
    scales float32 [B, 2] = (new_h / H, new_w / W), original (H, W) int32 [B, 2]).

    What ``prepare_image_batch`` gives for B images of one size; ``float64=False``
    uses :func:`target_size_int` for the resized size.
    """
    shape = tf.shape(images)
    batch, height, width = shape[0], shape[1], shape[2]
    if float64:
        new_h, new_w = transforms.target_size(height, width, config)
    else:
        new_h, new_w = target_size_int(height, width, config)
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


def serving_function(model, float64: bool = True) -> tf.types.experimental.PolymorphicFunction:
    """A ``tf.function`` with the contract above, for ``model`` (a MaskRCNN).

    Args:
      model: the MaskRCNN to serve (already built with the RoIAlign the format can run).
      float64: False for runtimes without float64 kernels (see :func:`target_size_int`).
    Returns:
      A tf.function with input signature uint8 ``[None, None, None, 3]`` named
      ``input_tensor``, returning a dict of the outputs (see module docstring).
    """
    config = model.config

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name=INPUT_NAME)])
    def serve(input_tensor):
        images, sizes, scales, original = preprocess_batch(input_tensor, config, float64)
        out = model({"images": images, "image_sizes": sizes}, training=False)
        result = _postprocess(out, scales, original, ["BG"])
        result.pop("class_names")
        return {k: result[k] for k in OUTPUT_ORDER if k in result}

    return serve
