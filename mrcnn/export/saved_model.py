"""Export a trained Mask R-CNN as a SavedModel that stock TensorFlow Serving runs.

A stock ``tensorflow_model_server`` links its ops statically and refuses a SavedModel
that contains a custom op ("Op type not registered"). The export therefore always runs
the model with the stock-ops RoIAlign (``ROI_ALIGN_IMPLEMENTATION="portable"``; a model
built with the custom op is rebuilt and its weights copied over, the numbers are the
same), and the written graph is scanned for any op that is not a stock TensorFlow op
before it is moved into place.

Layout (what TF Serving expects: a base directory with numeric version folders)::

    OUTPUT_DIR/
      1/                      <- version; tf.saved_model.load(OUTPUT_DIR/1) opens it
        saved_model.pb
        variables/
        assets/labels.txt     <- class names, one per line, line i = class id i ("BG" first)
        fingerprint.pb

Signatures (both take ``input_tensor`` and return the same outputs):

* ``serving_default``: ``input_tensor`` uint8 ``[batch, H, W, 3]`` RGB, any H and W.
* ``encoded_image``: ``input_tensor`` string ``[batch]`` of JPEG/PNG (or GIF/BMP) bytes;
  the images of one batch may have different sizes.

Outputs (TF Object Detection API names), D = ``DETECTION_MAX_INSTANCES``:

* ``detection_boxes`` float32 ``[batch, D, 4]`` (ymin, xmin, ymax, xmax) normalised to
  [0, 1] by the ORIGINAL image's height and width;
* ``detection_scores`` float32 ``[batch, D]``;
* ``detection_classes`` float32 ``[batch, D]`` class ids, 1-based (0 on padding rows);
* ``num_detections`` float32 ``[batch]``; rows past it are zero padding;
* ``detection_masks`` float32 ``[batch, D, 28, 28]`` mask probabilities inside each box
  (paste them into the image client-side, e.g. :func:`mrcnn.ops.masks.paste_masks`);
* ``class_names`` string ``[batch, NUM_CLASSES]`` (the same row per image), index =
  class id, 0 = "BG";
* with a keypoint head (``NUM_KEYPOINTS = K > 0``): ``detection_keypoints`` float32
  ``[batch, D, K, 2]`` (y, x) normalised by the original image size (pixel index =
  y * H - 0.5, as the TF OD API's pixel-edge convention) and
  ``detection_keypoint_scores`` float32 ``[batch, D, K]``. ``detection_masks`` is
  absent when the model has no mask head (``MASK_HEAD = False``).

Preprocessing (resize by the Config's rule, zero padding, normalisation) happens in the
graph and is the same as :meth:`MaskRCNN.detect`'s, so outputs match ``detect()``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import tensorflow as tf

from mrcnn.config import Config, load_config
from mrcnn.export.formats import LABELS_FILE, class_names_for
from mrcnn.export.graph import INPUT_NAME, export_config, model_for, model_variables
from mrcnn.inference.postprocess import serving_outputs, to_original
from mrcnn.inference.preprocess import (
    crop_canvas_batch,
    preprocess_image,
    preprocess_image_signature,
)

SIGNATURE_IMAGE = "serving_default"
SIGNATURE_ENCODED = "encoded_image"
OUTPUT_NAMES = (
    "detection_boxes",
    "detection_scores",
    "detection_classes",
    "num_detections",
    "detection_masks",
    "class_names",
)
KEYPOINT_OUTPUT_NAMES = ("detection_keypoints", "detection_keypoint_scores")
# Largest image (H * W pixels) a SavedModel accepts by default: a 4096 x 6144 photo.
# An encoded image is checked against its header before any pixel is decoded, so a
# small file that declares a huge canvas (a "decompression bomb") costs nothing.
DEFAULT_MAX_PIXELS = int(4096 * 4096 * 1.5)


class NonStockOpError(RuntimeError):
    """The exported graph contains an op that a stock TF Serving binary does not have."""


# ------------------------------------------------------------------------------ model
def portable_model(model):
    """``model`` itself when it already runs the stock-ops RoIAlign ("portable") in
    float32, else a copy built from :func:`portable_config` with the same weights."""
    return model_for(model, "saved_model")


def portable_config(config: Config) -> Config:
    """A copy of ``config`` with ``ROI_ALIGN_IMPLEMENTATION="portable"`` and
    ``MIXED_PRECISION=None``: :func:`mrcnn.export.graph.export_config` for the SavedModel
    (raises on adaptive sampling, which has no stock-ops form)."""
    return export_config(config, "saved_model")


class DetectionModule(tf.Module):
    """What is saved: the model's variables, the labels asset and the two signatures."""

    def __init__(
        self, model, class_names: Sequence[str], labels_path: str,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ):
        super().__init__(name="mrcnn_detector")
        config = model.config
        limit = tf.constant(max_pixels or 2**62, tf.int64)
        too_big = (
            f"input_tensor: image larger than max_pixels={max_pixels} (H * W) set at export "
            "(mrcnn export --max-pixels); refused"
        )
        names = tf.constant(list(class_names), tf.string)
        self.model_variables = model_variables(model)
        self.labels = tf.saved_model.Asset(labels_path)
        spec = preprocess_image_signature(config)

        def run(images_list_fn, elems):
            canvases, sizes, scales, original_hw = tf.map_fn(
                images_list_fn, elems, fn_output_signature=spec
            )
            images = crop_canvas_batch(canvases, sizes, config)
            out = model({"images": images, "image_sizes": sizes}, training=False)
            result = serving_outputs(to_original(out, scales, original_hw), original_hw)
            # Batched (one copy per image) so that TF Serving's REST row format, which
            # needs a batch dimension on every output, works too.
            result["class_names"] = tf.tile(names[None, :], [tf.shape(sizes)[0], 1])
            return result

        def checked(x, rank, what, channels=None):
            """``x`` after runtime checks of its rank, batch size and channels.

            Neither a loaded signature nor TF Serving checks a fed tensor's shape against
            the signature, and Grappler folds Rank/Size/Shape ops to the signature's
            static shape, so the shape vector is passed through Serialize/ParseTensor
            (a few bytes) to keep the checks in the running graph.
            """
            shape = tf.io.parse_tensor(tf.io.serialize_tensor(tf.shape(x)), tf.int32)
            rank_ok = tf.debugging.assert_equal(tf.size(shape), rank, message=f"{what} (got another rank)")
            with tf.control_dependencies([rank_ok]):
                checks = [
                    tf.debugging.assert_positive(
                        shape[0], message="input_tensor: the batch is empty; send at least one image"
                    )
                ]
                if channels is not None:
                    checks.append(tf.debugging.assert_equal(
                        shape[-1], channels, message=f"{what} (got another number of channels)"
                    ))
            with tf.control_dependencies(checks):
                return tf.identity(x)

        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name=INPUT_NAME)])
        def detect_images(input_tensor):
            """uint8 [batch, H, W, 3] RGB images -> detections."""
            images = checked(
                input_tensor, 4, "input_tensor must be uint8 [batch, H, W, 3] RGB", channels=3
            )
            shape = tf.shape(images, out_type=tf.int64)
            small = tf.debugging.assert_less_equal(shape[1] * shape[2], limit, message=too_big)
            with tf.control_dependencies([small]):
                images = tf.identity(images)
            return run(lambda image: preprocess_image(image, config), images)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=INPUT_NAME)])
        def detect_encoded(input_tensor):
            """string [batch] of JPEG/PNG bytes (any sizes) -> detections."""

            def decode(data):
                not_empty = tf.debugging.assert_positive(
                    tf.strings.length(data),
                    message="input_tensor holds an empty string; expected JPEG or PNG bytes",
                )
                with tf.control_dependencies([not_empty]):
                    # The header's size is checked before decode_image allocates the pixels.
                    pixels = encoded_image_pixels(data)
                small = tf.debugging.assert_less_equal(
                    pixels, limit, message=too_big + " before decoding (size read from the header)"
                )
                with tf.control_dependencies([small]):
                    image = tf.io.decode_image(data, channels=3, dtype=tf.uint8,
                                               expand_animations=False)
                image = tf.ensure_shape(image, [None, None, 3])
                return preprocess_image(image, config)

            data = checked(input_tensor, 1, "input_tensor must be a string vector [batch] of JPEG/PNG bytes")
            return run(decode, data)

        self.detect_images = detect_images
        self.detect_encoded = detect_encoded

    def signatures(self) -> dict:
        return {
            SIGNATURE_IMAGE: self.detect_images.get_concrete_function(),
            SIGNATURE_ENCODED: self.detect_encoded.get_concrete_function(),
        }


def encoded_image_pixels(data: tf.Tensor) -> tf.Tensor:
    """H * W (int64 scalar) that an encoded image declares, read without decoding it.

    JPEG: ``tf.io.extract_jpeg_shape`` (parses the markers up to the frame header);
    PNG: the IHDR chunk (big-endian width, height at bytes 16-23); GIF: the logical
    screen (little-endian 16-bit width, height at bytes 6-9); BMP: the info header
    (little-endian 32-bit width, height at bytes 18-25, height signed). Anything else
    gives 0, and ``decode_image`` then reports the unknown format.
    """
    head = tf.strings.substr(data + tf.constant(b"\0" * 26), 0, 26)
    b = tf.cast(tf.io.decode_raw(head, tf.uint8), tf.int64)

    def big_endian32(i):
        return b[i] * 2**24 + b[i + 1] * 2**16 + b[i + 2] * 2**8 + b[i + 3]

    def little_endian(i, n):
        return tf.add_n([b[i + k] * 2 ** (8 * k) for k in range(n)])

    def signed_abs32(v):
        return tf.abs(tf.where(v >= 2**31, v - 2**32, v))

    magic = lambda prefix: tf.equal(tf.strings.substr(head, 0, len(prefix)), prefix)  # noqa: E731
    png = big_endian32(16) * big_endian32(20)
    gif = little_endian(6, 2) * little_endian(8, 2)
    bmp = signed_abs32(little_endian(18, 4)) * signed_abs32(little_endian(22, 4))
    other = tf.where(
        magic(b"\x89PNG\r\n\x1a\n"), png,
        tf.where(magic(b"GIF8"), gif, tf.where(magic(b"BM"), bmp, tf.constant(0, tf.int64))),
    )

    def jpeg():
        shape = tf.cast(tf.io.extract_jpeg_shape(data), tf.int64)
        return shape[0] * shape[1]

    return tf.cond(magic(b"\xff\xd8"), jpeg, lambda: other)


# ------------------------------------------------------------------------------ checks
def find_non_stock_ops(export_dir: str | os.PathLike) -> list[str]:
    """Op types in a SavedModel's graphs (top-level graph and every library function)
    that are not stock TensorFlow ops: not in ``tf.raw_ops``, or named like the
    project's custom ops (``Mrcnn*``). Calls to library functions are not ops."""
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel()
    saved.ParseFromString(Path(export_dir, "saved_model.pb").read_bytes())
    bad = set()
    for meta in saved.meta_graphs:
        library = meta.graph_def.library
        functions = {f.signature.name for f in library.function}
        nodes = list(meta.graph_def.node)
        for f in library.function:
            nodes.extend(f.node_def)
        for node in nodes:
            op = node.op
            if op in functions:
                continue
            if op.lower().startswith("mrcnn") or not hasattr(tf.raw_ops, op):
                bad.add(op)
    return sorted(bad)


def assert_stock_ops_only(export_dir: str | os.PathLike) -> None:
    bad = find_non_stock_ops(export_dir)
    if bad:
        raise NonStockOpError(
            f"the SavedModel in {export_dir} contains ops a stock TF Serving does not have: "
            f"{bad}; export with ROI_ALIGN_IMPLEMENTATION='portable'"
        )


# ------------------------------------------------------------------------------ export
def export_saved_model(
    model,
    output_dir: str | os.PathLike,
    version: int | None = 1,
    *,
    class_names: Sequence[str] | None = None,
    overwrite: bool = False,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> str:
    """Write ``model`` as a TF Serving SavedModel to ``output_dir/<version>/``.

    Args:
      model: a :class:`mrcnn.model.MaskRCNN` (any ROI_ALIGN_IMPLEMENTATION; the export
        uses the stock-ops one).
      output_dir: the model's base directory (TF Serving's ``model_base_path``).
      version: positive integer version folder; ``None`` writes the SavedModel
        directly into ``output_dir`` (no version folder, e.g. ``runs/demo/saved_model``).
      class_names: NUM_CLASSES names, index 0 = background; default
        ``config.CLASS_NAMES`` or ``BG, class_1, ...``.
      overwrite: replace an existing ``output_dir/<version>`` (``output_dir`` itself
        when ``version`` is None).
      max_pixels: largest H * W a request may carry (None: no limit); larger ones fail
        with InvalidArgument, an encoded image before its pixels are decoded.
    Returns:
      The version directory's path (what ``tf.saved_model.load`` opens).
    Raises:
      FileExistsError: the version exists and ``overwrite`` is False.
      NonStockOpError: the graph would contain a non-stock op (nothing is written).
    """
    if version is not None and (
        isinstance(version, bool) or not isinstance(version, int) or version <= 0
    ):
        raise ValueError(f"version must be a positive integer or None, got {version!r}")
    output_dir = Path(output_dir)
    target = output_dir if version is None else output_dir / str(version)
    if target.exists() and (version is not None or any(target.iterdir())) and not overwrite:
        raise FileExistsError(f"{target} exists; pass overwrite=True or a new version")
    names = class_names_for(model.config, class_names)
    if max_pixels is not None and (isinstance(max_pixels, bool) or not isinstance(max_pixels, int)
                                   or max_pixels <= 0):
        raise ValueError(f"max_pixels must be a positive integer or None, got {max_pixels!r}")
    model = portable_model(model)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Write next to the target (same filesystem) and rename when verified, so that a
    # server polling output_dir never sees a half-written or rejected version.
    staging = Path(tempfile.mkdtemp(prefix=f".export-{target.name}-", dir=target.parent))
    try:
        labels = staging / LABELS_FILE
        labels.write_text("".join(n + "\n" for n in names), encoding="utf-8")
        module = DetectionModule(model, names, str(labels), max_pixels=max_pixels)
        saved = staging / "saved_model"
        tf.saved_model.save(module, str(saved), signatures=module.signatures())
        assert_stock_ops_only(saved)
        if target.exists():
            _remove_old_export(target)
        os.replace(saved, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return str(target)


def _remove_old_export(path: Path) -> None:
    """Delete an existing SavedModel folder being overwritten (or an empty folder), and
    refuse anything else rather than deleting a directory that is not an export."""
    if any(path.iterdir()) and not (path / "saved_model.pb").is_file():
        raise FileExistsError(f"{path} is not empty and holds no saved_model.pb; not replacing it")
    shutil.rmtree(path)


def export_from_files(
    weights_path: str | os.PathLike,
    config: str | Config,
    output_dir: str | os.PathLike,
    version: int | None = 1,
    *,
    class_names: Sequence[str] | None = None,
    overwrite: bool = False,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> str:
    """Build the model from ``config`` (a Config or a :func:`load_config` spec) with the
    stock-ops RoIAlign, load ``weights_path`` (Keras ``.weights.h5``) and export it
    (see :func:`export_saved_model`). Returns the version directory."""
    from mrcnn.model import MaskRCNN

    config = portable_config(load_config(config))
    model = MaskRCNN(config)
    model.load_weights(str(weights_path))
    return export_saved_model(
        model, output_dir, version, class_names=class_names, overwrite=overwrite,
        max_pixels=max_pixels,
    )
