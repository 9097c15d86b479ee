"""Per-image loading and sanitising of a :class:`~mrcnn.data.dataset.Dataset` (numpy side).

:func:`load_instance` is what the tf.data pipeline calls (through
``tf.numpy_function``) for every image. It turns whatever a user's ``load_image``
/ ``load_mask`` return into one well-defined record, and fails early with an
error that names the image (internal id, plus ``image_info[id]['path']`` when the
dataset has one) instead of failing later deep inside a TF graph.

Decisions (see each function for details)
-----------------------------------------
* Image dtypes: uint8 kept; uint16 scaled by 255/65535 (rounded); other integer
  dtypes (int8..int64, uint32, uint64) are treated as widened 8-bit data when all
  values lie in [0, 255] (cast), as 16-bit data when they lie in [0, 65535]
  (scaled like uint16), else rejected; float images whose maximum is <= 1 are
  taken as [0, 1] and multiplied by 255, floats in [0, 255] are rounded; negative,
  non-finite or > 255 floats, bool and other dtypes are rejected.
* Channels: [H, W] and [H, W, 1] are replicated to 3 channels; [H, W, 4] (RGBA)
  loses its alpha; [H, W, 3] is kept (assumed RGB); anything else is rejected.
* Masks must be [H, W, N] with the image's H, W; bool, integer (!= 0) and float
  (>= 0.5) masks are accepted. N == 0 (including the base class's ``(0, 0, 0)``
  placeholder) keeps the image as a negative example.
* Class ids: 0 is an error; ``-c`` marks a crowd region of class c and is kept;
  ``|id| >= NUM_CLASSES`` is an error.
* Empty instance masks are dropped, counted in the pipeline's
  :class:`~mrcnn.data.health.DataHealth` (``counters["empty_masks_dropped"]``)
  and warned about once per pipeline.
* More than ``MAX_GT_INSTANCES`` instances: the ``MAX_GT_INSTANCES`` largest by
  mask area are kept, in their original order (ties keep the earlier instance).
  Large instances carry most of the training signal and large crowd regions
  guard the most proposals, while the smallest instances are the ones a detector
  learns least from. Counted in ``counters["instances_truncated"]``, warned once
  per pipeline.
* Boxes use the pixel-edge convention (y1, x1, y2, x2) with y2 = last row + 1,
  in original image pixels.
  A dataset may supply its own boxes (``load_boxes`` or a third element of
  ``load_mask``, e.g. COCO's annotation ``bbox``); they are used where valid, and
  the mini masks are cut in those boxes (fractional edges resampled by area).
* Mini masks (``config.MINI_MASK_SHAPE`` set) are resampled **area-accurately**:
  mini-mask cell (i, j) is set iff at least half of its area, measured in
  original pixels, is covered by the mask. Cell (i, j) of an ``mh x mw`` mini
  mask with box (y1, x1, y2, x2) covers ``[y1 + i*(y2-y1)/mh, y1 + (i+1)*(y2-y1)/mh)``
  x the same in x, i.e. its centre is at ``y1 + (i + 0.5) * (y2 - y1) / mh``
  (half-pixel centres in the box frame). This is exact for any box/mini-mask
  size ratio (down- or up-sampling), unlike a bilinear resize which aliases
  when downsampling large boxes.

* Keypoints (``config.NUM_KEYPOINTS`` = K > 0): ``load_keypoints`` must return
  ``[N, K, 3]`` (x, y, v) aligned with the masks (or None = none labelled), with
  finite coordinates and v in {0, 1, 2}; rows follow their instance through the
  drops and truncation above. Coordinates are converted from COCO's pixel-index
  convention to the continuous pixel-edge frame of boxes (x + 0.5, y + 0.5), and
  unlabelled keypoints (v = 0) are set to (0, 0, 0).

Layouts: functions taking Dataset-style full-image masks use ``[H, W, N]``;
per-instance stacks (mini masks, the record's ``masks``) are ``[N, ...]``.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from mrcnn.config import Config
from mrcnn.data.health import DataHealth


class BadSampleError(ValueError):
    """A sample that cannot be loaded or fails validation; names its image id and path.

    Attributes: ``image_id`` (internal id), ``path`` (``image_info[id]["path"]`` or
    None) and ``reason`` (the underlying error's text).
    """

    def __init__(self, image_id: int, path: str | None, reason: str) -> None:
        self.image_id = int(image_id)
        self.path = path
        self.reason = reason
        where = f"image id {self.image_id}" + (f" (path {path!r})" if path else "")
        super().__init__(f"bad sample: {where}: {reason}")


def _image_path(dataset: Any, image_id: int) -> str | None:
    info = getattr(dataset, "image_info", None)
    try:
        path = info[image_id].get("path") if info is not None else None
    except (IndexError, KeyError, TypeError, AttributeError):
        path = None
    return str(path) if path else None


# What a broken sample raises: our own ValueErrors, I/O errors, PIL's
# UnidentifiedImageError (an OSError) and DecompressionBombError, truncated-file
# errors from imageio/skimage (OSError/SyntaxError), wrong shapes (IndexError).
_SAMPLE_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, SyntaxError, IndexError, EOFError)
try:  # PIL's DecompressionBombError derives from Exception only
    from PIL import Image as _PILImage

    _SAMPLE_ERRORS = (*_SAMPLE_ERRORS, _PILImage.DecompressionBombError)
except ImportError:  # pragma: no cover - Pillow is a dependency of scikit-image
    pass


def load_instance(dataset: Any, image_id: int, config: Config, health: DataHealth | None = None) -> dict[str, np.ndarray]:
    """:func:`load_sample` under ``config.ON_BAD_SAMPLE`` (what the tf.data pipeline calls).

    * ``"raise"`` (default): a bad sample raises :class:`BadSampleError` naming its
      image id and path (also kept as ``health.first_bad_sample`` so that
      ``MaskRCNN.fit`` and :func:`mrcnn.engine.runner.run_training` report it
      instead of a TF traceback).
    * ``"skip"``: the sample is replaced by the next good image in
      ``dataset.image_ids`` order (deterministic, so a resumed run replaces it the
      same way), counted in ``health.counters["bad_samples_skipped"]`` and its id
      added to ``health.skipped_ids`` (logged at each epoch end by
      :class:`mrcnn.engine.callbacks.DataHealthLogger`). Each bad id is counted once
      and then remembered by ``health``, so it is not re-read every epoch.

    ``health``: the pipeline's :class:`~mrcnn.data.health.DataHealth` (None: a
    record of this call alone).
    """
    health = DataHealth() if health is None else health
    image_id = int(image_id)
    policy = getattr(config, "ON_BAD_SAMPLE", "raise")
    try:
        if image_id in health.known_bad:
            raise health.known_bad[image_id]
        return load_sample(dataset, image_id, config, health)
    except _SAMPLE_ERRORS as exc:
        error = exc if isinstance(exc, BadSampleError) else BadSampleError(
            image_id, _image_path(dataset, image_id), f"{type(exc).__name__}: {exc}")
        if policy != "skip":
            health.record_bad(error)
            raise error from (None if exc is error else exc)
        if health.skip(image_id, error):
            warnings.warn(f"{error}; skipped (ON_BAD_SAMPLE='skip'). Further skips are listed at "
                          "each epoch end.", UserWarning, stacklevel=2)
    ids = [int(i) for i in np.asarray(dataset.image_ids)]
    start = ids.index(image_id) if image_id in ids else -1
    for k in range(1, len(ids) + 1):
        candidate = ids[(start + k) % len(ids)]
        if candidate in health.known_bad or candidate == image_id:
            continue
        try:
            return load_sample(dataset, candidate, config, health)
        except _SAMPLE_ERRORS as exc:
            health.skip(candidate, BadSampleError(candidate, _image_path(dataset, candidate),
                                                  f"{type(exc).__name__}: {exc}"))
    raise BadSampleError(image_id, _image_path(dataset, image_id),
                         "every sample of the dataset is bad (ON_BAD_SAMPLE='skip' has nothing to use)")


def describe_image(dataset: Any, image_id: int) -> str:
    """'image 3' or "image 3 (path '/data/x.png')" for error messages."""
    ref = f"image {image_id}"
    info = getattr(dataset, "image_info", None)
    try:
        path = info[image_id].get("path") if info is not None else None
    except (IndexError, KeyError, TypeError, AttributeError):
        path = None
    if path:
        ref += f" (path {path!r})"
    return ref


def sanitize_image(image: Any, ref: str = "image") -> np.ndarray:
    """Convert a loaded image to uint8 ``[H, W, 3]`` RGB or raise ValueError naming ``ref``.

    Accepted input:
        * shape ``[H, W]`` or ``[H, W, 1]`` (grayscale, replicated to 3 channels),
          ``[H, W, 3]`` (RGB) or ``[H, W, 4]`` (RGBA, alpha dropped);
        * dtype uint8 (kept); uint16 (x * 255 / 65535, rounded); other integer
          dtypes: cast if all values are in [0, 255], scaled as 16-bit if in
          [0, 65535], else rejected; float: max <= 1 -> [0, 1] data, x 255,
          otherwise must lie in [0, 255]; rounded either way.
        * bool, complex, object, negative / non-finite / > 255 floats: ValueError.
    """
    if image is None:
        raise ValueError(f"{ref}: load_image returned None")
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise ValueError(
            f"{ref}: image must be [H, W], [H, W, 1], [H, W, 3] or [H, W, 4], got shape {image.shape}"
        )
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"{ref}: image is empty, shape {image.shape}")
    image = _to_uint8(image, ref)
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    elif image.shape[2] == 4:
        # Alpha is dropped, not composited: datasets with RGBA files (PNG) store
        # the real colours in RGB and alpha is usually all 255.
        image = image[:, :, :3]
    return np.ascontiguousarray(image)


def _to_uint8(image: np.ndarray, ref: str) -> np.ndarray:
    dtype = image.dtype
    if dtype == np.uint8:
        return image
    if dtype == np.bool_ or not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
        raise ValueError(f"{ref}: unsupported image dtype {dtype}; use uint8 RGB")
    if np.issubdtype(dtype, np.integer):
        if dtype == np.uint16:
            return _scale_16bit(image)
        lo, hi = int(image.min()), int(image.max())
        if lo >= 0 and hi <= 255:
            return image.astype(np.uint8)  # 8-bit data in a wider integer type
        if lo >= 0 and hi <= 65535:
            return _scale_16bit(image)
        raise ValueError(
            f"{ref}: {dtype} image with values in [{lo}, {hi}] is not 8- or 16-bit data"
        )
    # Floating point.
    if not np.all(np.isfinite(image)):
        raise ValueError(f"{ref}: float image contains NaN or inf")
    lo, hi = float(image.min()), float(image.max())
    if lo < 0 or hi > 255:
        raise ValueError(
            f"{ref}: float image values must lie in [0, 1] or [0, 255], got [{lo}, {hi}]"
        )
    # A [0, 255] image whose brightest pixel is <= 1 is indistinguishable from
    # [0, 1] data; such an image is black either way.
    if hi <= 1.0:
        image = image * 255.0
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _scale_16bit(image: np.ndarray) -> np.ndarray:
    return np.rint(image.astype(np.float64) * (255.0 / 65535.0)).astype(np.uint8)


def sanitize_masks(
    masks: Any,
    class_ids: Any,
    image_hw: tuple[int, int],
    num_classes: int,
    ref: str = "image",
) -> tuple[np.ndarray, np.ndarray]:
    """Validate ``load_mask`` output -> (bool ``[H, W, N]``, int32 ``[N]``).

    Raises ValueError naming ``ref`` for: masks not 3-D, H/W differing from the
    image (both shapes named), class ids not 1-D of length N, non-integral class
    ids, class id 0, or ``|class id| >= num_classes``. N == 0 returns
    ``[H, W, 0]`` masks whatever placeholder shape came in.
    """
    height, width = image_hw
    masks = np.asarray(masks)
    class_ids = np.asarray(class_ids)
    if masks.ndim != 3:
        raise ValueError(f"{ref}: masks must be [H, W, N], got shape {masks.shape}")
    n = masks.shape[2]
    if class_ids.ndim != 1 or class_ids.shape[0] != n:
        raise ValueError(
            f"{ref}: class_ids must be 1-D with one id per mask (N={n}), got shape {class_ids.shape}"
        )
    if n == 0:
        # Negative example; the base class returns a (0, 0, 0) placeholder.
        return np.zeros((height, width, 0), bool), np.zeros((0,), np.int32)
    if masks.shape[:2] != (height, width):
        raise ValueError(
            f"{ref}: masks shape {masks.shape} does not match image shape "
            f"{(height, width)} (expected [{height}, {width}, N]); load_mask must return masks "
            "of the size load_image returns (check the annotation's image size)"
        )
    if masks.dtype == np.bool_:
        pass
    elif np.issubdtype(masks.dtype, np.integer):
        masks = masks != 0
    elif np.issubdtype(masks.dtype, np.floating):
        masks = masks >= 0.5
    else:
        raise ValueError(f"{ref}: unsupported mask dtype {masks.dtype}; use bool")
    if not np.issubdtype(class_ids.dtype, np.integer):
        if not np.issubdtype(class_ids.dtype, np.floating) or np.any(
            class_ids != np.round(class_ids)
        ):
            raise ValueError(f"{ref}: class_ids must be integers, got {class_ids!r}")
    class_ids = class_ids.astype(np.int32)
    if np.any(class_ids == 0):
        raise ValueError(
            f"{ref}: class id 0 is the background and cannot label an instance "
            f"(class_ids={class_ids.tolist()})"
        )
    bad = np.abs(class_ids) >= num_classes
    if np.any(bad):
        raise ValueError(
            f"{ref}: class ids {class_ids[bad].tolist()} out of range for "
            f"NUM_CLASSES={num_classes} (valid: 1..{num_classes - 1}, negative = crowd)"
        )
    return masks, class_ids


def sanitize_keypoints(keypoints: Any, n: int, num_keypoints: int, ref: str = "image") -> np.ndarray:
    """Validate ``load_keypoints`` output -> float32 ``[N, K, 3]`` in the pixel-edge frame.

    None means no keypoint is labelled (all zeros). Raises ValueError naming
    ``ref`` for a shape other than [N, K, 3], non-finite values or visibility
    flags outside {0, 1, 2}. Labelled keypoints get +0.5 on x and y (COCO pixel
    indices -> continuous coordinates); unlabelled ones become (0, 0, 0).
    """
    k = int(num_keypoints)
    if keypoints is None:
        return np.zeros((n, k, 3), np.float32)
    keypoints = np.asarray(keypoints)
    if n == 0 and keypoints.size == 0:
        return np.zeros((0, k, 3), np.float32)
    if keypoints.shape != (n, k, 3):
        raise ValueError(
            f"{ref}: keypoints must be [N, K, 3] = [{n}, {k}, 3] (N instances of load_mask, "
            f"K = NUM_KEYPOINTS), got shape {keypoints.shape}"
        )
    if not np.issubdtype(keypoints.dtype, np.number) or np.issubdtype(keypoints.dtype, np.complexfloating):
        raise ValueError(f"{ref}: keypoints must be numbers, got dtype {keypoints.dtype}")
    keypoints = keypoints.astype(np.float64)
    if not np.all(np.isfinite(keypoints)):
        raise ValueError(f"{ref}: keypoints contain NaN or inf")
    v = keypoints[..., 2]
    bad = ~np.isin(v, (0, 1, 2))
    if np.any(bad):
        inst, kp = np.argwhere(bad)[0]
        raise ValueError(
            f"{ref}: keypoint visibility flags must be 0, 1 or 2; instance {inst} keypoint {kp} has {v[inst, kp]}"
        )
    out = np.zeros((n, k, 3), np.float32)
    labelled = v > 0
    out[..., 0] = np.where(labelled, keypoints[..., 0] + 0.5, 0.0)
    out[..., 1] = np.where(labelled, keypoints[..., 1] + 0.5, 0.0)
    out[..., 2] = v
    return out


def boxes_from_masks(masks: np.ndarray) -> np.ndarray:
    """Tight boxes of ``[H, W, N]`` masks -> float32 ``[N, 4]`` (y1, x1, y2, x2).

    Pixel-edge convention: y2 = last set row + 1, x2 = last set column + 1, so a
    one-pixel mask at (r, c) gives (r, c, r + 1, c + 1). Empty masks give zeros.
    """
    masks = np.asarray(masks, bool)
    height, width, n = masks.shape
    rows = masks.any(axis=1)  # [H, N]
    cols = masks.any(axis=0)  # [W, N]
    present = rows.any(axis=0)
    y1 = np.argmax(rows, axis=0)
    y2 = height - np.argmax(rows[::-1], axis=0)
    x1 = np.argmax(cols, axis=0)
    x2 = width - np.argmax(cols[::-1], axis=0)
    boxes = np.stack([y1, x1, y2, x2], axis=1).astype(np.float32)
    boxes[~present] = 0
    return boxes.reshape(n, 4)


def _overlap_weights(dst_edges: np.ndarray, src_edges: np.ndarray) -> np.ndarray:
    """[len(dst)-1, len(src)-1] fraction of each dst interval covered by each src interval."""
    lo = np.maximum(dst_edges[:-1, None], src_edges[None, :-1])
    hi = np.minimum(dst_edges[1:, None], src_edges[None, 1:])
    return np.clip(hi - lo, 0.0, None) / np.diff(dst_edges)[:, None]


# Coverage exactly 0.5 must count as set; allow for float rounding in the weights.
_HALF = 0.5 - 1e-9


def minimize_masks(
    masks: np.ndarray, boxes: np.ndarray, mini_shape: tuple[int, int]
) -> np.ndarray:
    """Crop each ``[H, W, N]`` mask to its box and resample area-accurately.

    Args:
        masks: bool ``[H, W, N]`` full-image masks.
        boxes: ``[N, 4]`` pixel-edge boxes: integer-valued from boxes_from_masks,
            or fractional when the dataset supplies its own (COCO's ``bbox``);
            the parts of a box outside the image count as not covered.
        mini_shape: (mh, mw).

    Returns:
        uint8 ``[N, mh, mw]`` of 0/1; cell (i, j) is 1 iff >= half its area (in
        original pixels) is inside the mask. See the module docstring for the
        cell geometry.
    """
    mh, mw = int(mini_shape[0]), int(mini_shape[1])
    height, width, n = masks.shape
    out = np.zeros((n, mh, mw), np.uint8)
    for i in range(n):
        y1, x1, y2, x2 = (float(v) for v in boxes[i])
        if y2 <= y1 or x2 <= x1:
            continue
        r0, r1 = max(int(np.floor(y1)), 0), min(int(np.ceil(y2)), height)
        c0, c1 = max(int(np.floor(x1)), 0), min(int(np.ceil(x2)), width)
        if r1 <= r0 or c1 <= c0:
            continue
        crop = masks[r0:r1, c0:c1, i].astype(np.float64)
        wy = _overlap_weights(np.linspace(y1, y2, mh + 1), np.arange(r0, r1 + 1, dtype=np.float64))
        wx = _overlap_weights(np.linspace(x1, x2, mw + 1), np.arange(c0, c1 + 1, dtype=np.float64))
        out[i] = (wy @ crop @ wx.T) >= _HALF
    return out


def dataset_boxes(dataset: Any, image_id: int, loaded: Any, n: int, image_hw: tuple[int, int],
                  ref: str = "image") -> np.ndarray | None:
    """The dataset's own boxes for ``load_mask``'s N instances, or None (use the masks').

    From a third element of ``load_mask``'s result, else ``dataset.load_boxes(image_id)``
    (None = no boxes). float32 ``[N, 4]`` (y1, x1, y2, x2) pixel-edge, original
    pixels, clipped to the image; a row that is not finite or has no area after
    clipping is NaN (its mask-derived box is used). Raises ValueError naming
    ``ref`` for a shape other than [N, 4].
    """
    if isinstance(loaded, (tuple, list)) and len(loaded) == 3:
        boxes = loaded[2]
    else:
        load = getattr(dataset, "load_boxes", None)
        boxes = load(image_id) if callable(load) else None
    if boxes is None:
        return None
    boxes = np.asarray(boxes, np.float64)
    if n == 0 and boxes.size == 0:
        return np.zeros((0, 4), np.float32)
    if boxes.shape != (n, 4):
        raise ValueError(f"{ref}: boxes must be [N, 4] = [{n}, 4] (y1, x1, y2, x2), one per mask of "
                         f"load_mask, got shape {boxes.shape}")
    height, width = image_hw
    with np.errstate(invalid="ignore"):
        boxes = np.clip(boxes, 0.0, [height, width, height, width])
        bad = ~np.all(np.isfinite(boxes), axis=1) | (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
    boxes[bad] = np.nan
    return boxes.astype(np.float32)


def expand_mini_masks(
    mini_masks: np.ndarray, boxes: np.ndarray, height: int, width: int
) -> np.ndarray:
    """Inverse of :func:`minimize_masks`: ``[N, mh, mw]`` in their boxes -> bool ``[H, W, N]``.

    Boxes may be fractional (e.g. after the pipeline's resize); a pixel is set iff
    at least half of its area is covered by set mini-mask cells. Cells outside
    the image are clipped away.
    """
    mini_masks = np.asarray(mini_masks)
    n, mh, mw = mini_masks.shape
    out = np.zeros((height, width, n), bool)
    for i in range(n):
        y1, x1, y2, x2 = (float(v) for v in boxes[i])
        if y2 <= y1 or x2 <= x1:
            continue
        r0, r1 = max(int(np.floor(y1)), 0), min(int(np.ceil(y2)), height)
        c0, c1 = max(int(np.floor(x1)), 0), min(int(np.ceil(x2)), width)
        if r1 <= r0 or c1 <= c0:
            continue
        wy = _overlap_weights(np.arange(r0, r1 + 1, dtype=np.float64), np.linspace(y1, y2, mh + 1))
        wx = _overlap_weights(np.arange(c0, c1 + 1, dtype=np.float64), np.linspace(x1, x2, mw + 1))
        cover = wy @ mini_masks[i].astype(np.float64) @ wx.T
        out[r0:r1, c0:c1, i] = cover >= _HALF
    return out


def load_sample(dataset: Any, image_id: int, config: Config,
                health: DataHealth | None = None) -> dict[str, np.ndarray]:
    """Load, validate and encode one image's ground truth (no bad-sample policy).

    Args:
        dataset: a prepared :class:`~mrcnn.data.dataset.Dataset`.
        image_id: internal image index.
        config: reads NUM_CLASSES, MAX_GT_INSTANCES, MINI_MASK_SHAPE.
        health: counts dropped empty masks and truncated instances (None: a record
            of this call alone, which still warns).

    Returns:
        dict with
          "image": uint8 ``[H, W, 3]`` RGB (see :func:`sanitize_image`);
          "boxes": float32 ``[N, 4]`` (y1, x1, y2, x2) pixel-edge, original pixels:
            the dataset's own boxes when it supplies them (:func:`dataset_boxes`),
            else the masks' tight boxes;
          "class_ids": int32 ``[N]``, > 0 normal, < 0 crowd (never 0);
          "masks": uint8 ``[N, mh, mw]`` 0/1 mini masks in box frame when
            ``config.MINI_MASK_SHAPE`` is set, else uint8 ``[N, H, W]`` full masks;
          "image_id": int64 scalar;
          "keypoints" (only when ``config.NUM_KEYPOINTS`` > 0): float32
            ``[N, K, 3]`` (x, y, v), continuous pixel-edge coordinates of the
            original image (see :func:`sanitize_keypoints`).
        N <= MAX_GT_INSTANCES; N == 0 for a negative example.

    Raises:
        ValueError naming the image (id and path) for malformed image, masks or ids.
    """
    health = DataHealth() if health is None else health
    image_id = int(image_id)
    ref = describe_image(dataset, image_id)
    image = sanitize_image(dataset.load_image(image_id), ref)
    height, width = image.shape[:2]
    loaded = dataset.load_mask(image_id)
    if not isinstance(loaded, (tuple, list)) or len(loaded) not in (2, 3):
        raise ValueError(f"{ref}: load_mask must return (masks, class_ids) or (masks, class_ids, boxes)")
    masks, class_ids = sanitize_masks(loaded[0], loaded[1], (height, width), config.NUM_CLASSES, ref)
    given_boxes = dataset_boxes(dataset, image_id, loaded, class_ids.shape[0], (height, width), ref)
    num_keypoints = int(getattr(config, "NUM_KEYPOINTS", 0) or 0)
    keypoints = None
    if num_keypoints:
        load = getattr(dataset, "load_keypoints", None)
        keypoints = sanitize_keypoints(
            load(image_id) if callable(load) else None, class_ids.shape[0], num_keypoints, ref
        )

    areas = masks.sum(axis=(0, 1))
    empty = areas == 0
    if np.any(empty):
        count = int(empty.sum())
        health.count(
            "empty_masks_dropped",
            count,
            f"{ref}: dropped {count} empty instance mask(s) (no pixel set). Further "
            "drops are not warned about; see the pipeline's data_health.",
        )
        keep = ~empty
        masks, class_ids, areas = masks[:, :, keep], class_ids[keep], areas[keep]
        if keypoints is not None:
            keypoints = keypoints[keep]
        if given_boxes is not None:
            given_boxes = given_boxes[keep]

    limit = config.MAX_GT_INSTANCES
    if class_ids.shape[0] > limit:
        extra = class_ids.shape[0] - limit
        health.count(
            "instances_truncated",
            extra,
            f"{ref}: {class_ids.shape[0]} instances > MAX_GT_INSTANCES={limit}; kept the "
            f"{limit} largest, dropped {extra}. Further truncations are not warned about; "
            "see the pipeline's data_health.",
        )
        # Largest first, stable so ties keep the earlier instance; then restore order.
        keep = np.sort(np.argsort(-areas, kind="stable")[:limit])
        masks, class_ids = masks[:, :, keep], class_ids[keep]
        if keypoints is not None:
            keypoints = keypoints[keep]
        if given_boxes is not None:
            given_boxes = given_boxes[keep]

    boxes = boxes_from_masks(masks)
    if given_boxes is not None:
        # The dataset's boxes (COCO's annotation bbox) where valid; the masks' elsewhere.
        boxes = np.where(np.isnan(given_boxes), boxes, given_boxes).astype(np.float32)
    if config.MINI_MASK_SHAPE is not None:
        out_masks = minimize_masks(masks, boxes, config.MINI_MASK_SHAPE)
    else:
        out_masks = np.ascontiguousarray(np.transpose(masks, (2, 0, 1))).astype(np.uint8)
    record = {
        "image": image,
        "boxes": boxes,
        "class_ids": class_ids.astype(np.int32),
        "masks": out_masks,
        "image_id": np.int64(image_id),
    }
    if keypoints is not None:
        record["keypoints"] = keypoints
    return record
