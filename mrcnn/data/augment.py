"""Training augmentation inside ``tf.data``: one stage for image, masks, boxes and keypoints.

:func:`augment_sample` takes one loaded sample in *original* image pixels and
returns it at network scale, cropped, not yet padded. Every geometric decision
(short side, scale jitter, crop window) is drawn once and applied to all of the
sample's fields, so they stay consistent by construction.

Sample dict (the contract of the user hook too)
-----------------------------------------------
============  ===================  ============================================
key           dtype / shape        meaning
============  ===================  ============================================
"image"       uint8/float [H,W,3]  RGB 0-255
"boxes"       float32 [N, 4]       (y1, x1, y2, x2), pixel-edge convention
"class_ids"   int32 [N]            > 0 class, < 0 crowd region
"masks"       uint8 [N, mh, mw]    mini masks in their box frame
              or [N, H, W]         (MINI_MASK_SHAPE None) full-image masks
"keypoints"   float32 [N, K, 3]    (x, y, v), continuous pixel-edge frame;
                                   K = 0 when the model has no keypoint head
============  ===================  ============================================

Steps, in order (training only; evaluation keeps the plain resize rule):

1. **User hook** ``Config.AUGMENT`` (``"module:function"``) or
   ``build_dataset(..., augment=fn)``: ``fn(sample, seed) -> sample`` with
   ``seed`` an int64 ``[2]`` stateless seed unique to the element (use
   ``tf.random.stateless_*`` with it to stay reproducible). It may change H, W
   and N as long as the fields stay consistent.
2. Horizontal flip with probability ``TRAIN_FLIP_PROB`` (in the pipeline).
3. **Multi-scale short side**: when ``IMAGE_MIN_DIM`` is a tuple, one of its
   values is drawn uniformly per image (Detectron2's ``MIN_SIZE_TRAIN`` with
   ``MIN_SIZE_TRAIN_SAMPLING = "choice"``); the long side still stays within
   ``IMAGE_MAX_DIM``. Inference uses the largest value (Detectron2's default
   ``MIN_SIZE_TEST`` = the largest train size).
4. **Scale jitter** ``TRAIN_SCALE_JITTER = (lo, hi)``: the scale of the resize
   rule is multiplied by a factor uniform in ``[lo, hi]`` (torchvision's
   ``ScaleJitter``; large-scale jitter is ``IMAGE_MIN_DIM = IMAGE_MAX_DIM =
   1024``, ``(0.1, 2.0)``, square).
5. **Random crop** to at most ``TRAIN_CROP_SIZE`` x ``TRAIN_CROP_SIZE`` network
   pixels, window uniform over the valid positions (torchvision's
   ``FixedSizeCrop``). With ``TRAIN_PADDING = "square"`` a jitter above 1 without a crop size
   crops to the square canvas. Boxes are shifted and clipped to the window;
   instances whose clipped box is empty, or whose mask has no pixel left in the
   window, are dropped (crowd regions too). Clipped boxes are not re-tightened
   to the visible part of the mask (torchvision's behaviour; Detectron2
   recomputes them from the masks). Keypoints outside the window become
   unlabelled (0, 0, 0).

Resampling: the image bilinear (half-pixel centres, as the inference resize);
full masks bilinear then ``>= 0.5``; a clipped mini mask is resampled into its
clipped box bilinearly (cell centres at half-cell positions) and thresholded at
0.5, an unclipped one is kept bit for bit.

Randomness: every draw uses ``tf.random.stateless_*`` with a seed derived from
the element's seed, so a pipeline built with a ``seed`` gives the same samples
in every run whatever the parallelism.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import tensorflow as tf

from mrcnn.config import Config
from mrcnn.data import transforms

Sample = dict[str, tf.Tensor]
AugmentFn = Callable[[Sample, tf.Tensor], Sample]

# Sub-seed tags: each random decision gets its own stream from the element seed.
_SEED_USER, _SEED_MIN_DIM, _SEED_JITTER, _SEED_CROP = 1, 2, 3, 4


def sub_seed(seed: tf.Tensor, tag: int) -> tf.Tensor:
    """A stateless seed ``[2]`` for decision ``tag`` of the element with ``seed``."""
    return tf.random.experimental.stateless_fold_in(tf.cast(seed, tf.int64), tag)


def resolve_augment(spec: str | AugmentFn | None) -> AugmentFn | None:
    """A callable from ``Config.AUGMENT`` (``"package.module:function"``) or a callable as is."""
    if spec is None or callable(spec):
        return spec
    module_name, sep, name = str(spec).rpartition(":")
    if not sep or not module_name or not name:
        raise ValueError(f"Config.AUGMENT={spec!r}: must be 'package.module:function'")
    try:
        fn = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"Config.AUGMENT={spec!r}: cannot import it ({exc})") from exc
    if not callable(fn):
        raise ValueError(f"Config.AUGMENT={spec!r} is not callable")
    return fn


def is_active(config: Config) -> bool:
    """True when the config asks for any geometric training augmentation beyond the flip."""
    return (
        isinstance(config.IMAGE_MIN_DIM, (tuple, list))
        or config.TRAIN_SCALE_JITTER is not None
        or config.TRAIN_CROP_SIZE is not None
    )


def training_pad_mode(config: Config) -> str:
    """How training inputs are padded: "square" (the IMAGE_SHAPE canvas) or "pad32"
    (each to a multiple of 32, then the batch to its largest), from TRAIN_PADDING."""
    return "square" if config.TRAIN_PADDING == "square" else "pad32"


def crop_size(config: Config) -> int | None:
    """Side of the training crop in network pixels (None = no crop)."""
    if config.TRAIN_CROP_SIZE is not None:
        return int(config.TRAIN_CROP_SIZE)
    jitter = config.TRAIN_SCALE_JITTER
    if training_pad_mode(config) == "square" and jitter is not None and float(jitter[1]) > 1.0:
        return int(config.IMAGE_SHAPE[0])  # a larger image would not fit the square canvas
    return None


def training_canvas(config: Config) -> int | None:
    """Static side of the padded training input when a crop fixes it, else None."""
    size = crop_size(config)
    if size is None:
        return None
    return -(-size // transforms.SIZE_DIVISIBILITY) * transforms.SIZE_DIVISIBILITY


def _draw_min_dim(config: Config, seed: tf.Tensor) -> tf.Tensor:
    choices = config.IMAGE_MIN_DIM
    if not isinstance(choices, (tuple, list)):
        return tf.constant(float(choices), tf.float64)
    values = tf.constant([float(c) for c in choices], tf.float64)
    index = tf.random.stateless_uniform([], sub_seed(seed, _SEED_MIN_DIM), 0, len(choices), tf.int32)
    return values[index]


def _resample_mini_masks(masks: tf.Tensor, old: tf.Tensor, new: tf.Tensor) -> tf.Tensor:
    """Mini masks ``[N, mh, mw]`` of boxes ``old`` -> the same cells over sub-boxes ``new``.

    Cell j of the new grid has its centre at ``u1 + (j + 0.5) * (u2 - u1) / m`` in
    the old box's unit frame, i.e. at ``p_j = u1 * m + (j + 0.5) * (u2 - u1) - 0.5``
    in old cell-index units. Those lie in ``[-0.5, m - 0.5]``; the mask is padded by
    one replicated cell on each side so that positions past the outer cell centres
    take the edge value (as a half-pixel resize clamps), then crop_and_resize, which
    samples the padded grid at ``a1 * (m + 1) + j * (a2 - a1) * (m + 1) / (m - 1)``,
    gets ``a1 = (c + 1) / (m + 1)`` and ``a2 = a1 + (u2 - u1) * (m - 1) / (m + 1)``
    with ``c = p_0``. An unclipped box gives integer positions ``1 + j``: the mask
    comes back unchanged.
    """
    mh, mw = int(masks.shape[1]), int(masks.shape[2])
    size = tf.maximum(old[:, 2:] - old[:, :2], 1e-6)  # [N, 2] (h, w)
    u1 = (new[:, :2] - old[:, :2]) / size
    u2 = (new[:, 2:] - old[:, :2]) / size
    m = tf.constant([mh, mw], tf.float32)
    c = u1 * m + 0.5 * (u2 - u1) - 0.5
    a1 = (c + 1.0) / (m + 1.0)
    a2 = a1 + (u2 - u1) * (m - 1.0) / (m + 1.0)
    boxes = tf.concat([a1, a2], axis=1)
    padded = tf.pad(tf.cast(masks, tf.float32), [[0, 0], [1, 1], [1, 1]], mode="SYMMETRIC")
    n = tf.shape(masks)[0]
    out = tf.image.crop_and_resize(padded[..., tf.newaxis], boxes, tf.range(n), [mh, mw], method="bilinear")
    return tf.cast(out[..., 0] >= 0.5, tf.uint8)


def augment_sample(sample: Sample, config: Config, seed: tf.Tensor) -> tuple[Sample, tf.Tensor]:
    """Resize (multi-scale, jitter) and crop one training sample; see the module docstring.

    Args:
        sample: the dict above, in original image pixels.
        config: reads IMAGE_MIN_DIM, IMAGE_MAX_DIM, TRAIN_SCALE_JITTER,
            TRAIN_CROP_SIZE, IMAGE_RESIZE_MODE, MINI_MASK_SHAPE.
        seed: int64 ``[2]`` stateless seed of this element.

    Returns:
        (sample, image_size): the image float32 ``[h, w, 3]`` (not padded), boxes,
        masks (full ones resized and cropped, mini ones in their new boxes) and
        keypoints in its pixels, dropped instances removed; ``image_size`` int32
        ``[2]`` = (h, w).
    """
    image = sample["image"]
    shape = tf.shape(image)
    height, width = shape[0], shape[1]
    h = tf.cast(height, tf.float64)
    w = tf.cast(width, tf.float64)
    min_dim = _draw_min_dim(config, seed)
    scale = tf.minimum(min_dim / tf.minimum(h, w), float(config.IMAGE_MAX_DIM) / tf.maximum(h, w))
    if config.TRAIN_SCALE_JITTER is not None:
        lo, hi = (float(v) for v in config.TRAIN_SCALE_JITTER)
        scale = scale * tf.random.stateless_uniform([], sub_seed(seed, _SEED_JITTER), lo, hi, tf.float64)
    new_h = tf.maximum(tf.cast(tf.floor(h * scale), tf.int32), 1)
    new_w = tf.maximum(tf.cast(tf.floor(w * scale), tf.int32), 1)
    new_size = tf.stack([new_h, new_w])
    resized = tf.image.resize(tf.cast(image, tf.float32), new_size, method="bilinear", antialias=False)
    # As resize_and_pad: the coordinate scale from the integer sizes.
    yx_scale = tf.cast(tf.cast(new_size, tf.float64) / tf.cast(tf.stack([height, width]), tf.float64),
                       tf.float32)

    side = crop_size(config)
    if side is None:
        y0 = x0 = tf.constant(0, tf.int32)
        ch, cw = new_h, new_w
    else:
        ch, cw = tf.minimum(new_h, side), tf.minimum(new_w, side)
        u = tf.random.stateless_uniform([2], sub_seed(seed, _SEED_CROP), dtype=tf.float32)
        y0 = tf.minimum(tf.cast(u[0] * tf.cast(new_h - ch + 1, tf.float32), tf.int32), new_h - ch)
        x0 = tf.minimum(tf.cast(u[1] * tf.cast(new_w - cw + 1, tf.float32), tf.int32), new_w - cw)
    out_image = resized[y0 : y0 + ch, x0 : x0 + cw]

    offset = tf.cast(tf.stack([y0, x0, y0, x0]), tf.float32)
    limit = tf.cast(tf.stack([ch, cw, ch, cw]), tf.float32)
    scaled = transforms.scale_boxes(sample["boxes"], yx_scale)
    boxes = tf.clip_by_value(scaled - offset, 0.0, limit)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])

    masks = sample["masks"]
    if config.MINI_MASK_SHAPE is None:
        masks = transforms.resize_masks(masks, new_size)[:, y0 : y0 + ch, x0 : x0 + cw]
    else:
        masks = _resample_mini_masks(masks, scaled - offset, boxes)
    keep &= tf.reduce_any(tf.reshape(masks > 0, [tf.shape(masks)[0], -1]), axis=1)

    keypoints = sample["keypoints"]
    x, y, v = tf.unstack(keypoints, num=3, axis=-1)
    x = x * yx_scale[1] - tf.cast(x0, tf.float32)
    y = y * yx_scale[0] - tf.cast(y0, tf.float32)
    inside = (v > 0) & (x >= 0) & (y >= 0) & (x <= tf.cast(cw, tf.float32)) & (y <= tf.cast(ch, tf.float32))
    keypoints = tf.stack([tf.where(inside, x, 0.0), tf.where(inside, y, 0.0), tf.where(inside, v, 0.0)], -1)

    out = {
        "image": out_image,
        "boxes": tf.boolean_mask(boxes, keep),
        "class_ids": tf.boolean_mask(sample["class_ids"], keep),
        "masks": tf.boolean_mask(masks, keep),
        "keypoints": tf.boolean_mask(keypoints, keep),
    }
    return out, tf.stack([ch, cw])


def apply_user_augment(fn: AugmentFn, sample: Sample, seed: tf.Tensor) -> Sample:
    """Call the user hook with this element's seed and check it returned every field."""
    out = fn(dict(sample), sub_seed(seed, _SEED_USER))
    if not isinstance(out, dict):
        raise TypeError(f"augment hook {getattr(fn, '__name__', fn)!r} must return the sample dict, got {type(out)}")
    missing = set(sample) - set(out)
    if missing:
        raise ValueError(f"augment hook {getattr(fn, '__name__', fn)!r} dropped the keys {sorted(missing)}")
    return {k: tf.convert_to_tensor(out[k]) for k in sample}


__all__ = ["augment_sample", "apply_user_augment", "resolve_augment", "is_active", "crop_size",
           "training_canvas", "training_pad_mode", "sub_seed", "Sample", "AugmentFn"]
