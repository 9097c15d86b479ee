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

import argparse
import copy
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import tensorflow as tf

from mrcnn.config import Config, load_config
from mrcnn.data import transforms

SIGNATURE_IMAGE = "serving_default"
SIGNATURE_ENCODED = "encoded_image"
INPUT_NAME = "input_tensor"
OUTPUT_NAMES = (
    "detection_boxes",
    "detection_scores",
    "detection_classes",
    "num_detections",
    "detection_masks",
    "class_names",
)
KEYPOINT_OUTPUT_NAMES = ("detection_keypoints", "detection_keypoint_scores")
LABELS_FILE = "labels.txt"
# Largest image (H * W pixels) a SavedModel accepts by default: a 4096 x 6144 photo.
# An encoded image is checked against its header before any pixel is decoded, so a
# small file that declares a huge canvas (a "decompression bomb") costs nothing.
DEFAULT_MAX_PIXELS = int(4096 * 4096 * 1.5)


class NonStockOpError(RuntimeError):
    """The exported graph contains an op that a stock TF Serving binary does not have."""


# ------------------------------------------------------------------------------ model
def portable_model(model):
    """``model`` itself when it already uses the stock-ops RoIAlign, else a rebuilt copy.

    The copy has the same Config with ``ROI_ALIGN_IMPLEMENTATION="portable"`` and the
    same weights (``set_weights(get_weights())``: the architecture, hence the variable
    order, does not depend on the RoIAlign implementation).
    """
    from mrcnn.model import MaskRCNN

    if model.config.ROI_ALIGN_IMPLEMENTATION == "portable" and model.config.MIXED_PRECISION is None:
        return model
    clone = MaskRCNN(portable_config(model.config), name=model.name)
    clone.set_weights(model.get_weights())
    return clone


def portable_config(config: Config) -> Config:
    """A copy of ``config`` (same class) with ``ROI_ALIGN_IMPLEMENTATION="portable"`` and
    ``MIXED_PRECISION=None``.

    Exports compute in float32 whatever the training policy: the variables are
    float32 under every policy (so nothing of the weights is lost), and float32 is
    what every runtime's CPU kernels take (ONNX Runtime, OpenVINO and LiteRT have
    no bfloat16 convolutions to convert to; TF Serving's CPU build is slower in
    half precision).

    Adaptive sampling (``ROI_ALIGN_SAMPLING_RATIO = 0``, Detectron2) has no
    stock-ops form: such a model cannot be exported as is.
    """
    if config.ROI_ALIGN_SAMPLING_RATIO <= 0:
        raise ValueError(
            "Config.ROI_ALIGN_SAMPLING_RATIO=0 (adaptive sampling) has no stock-ops RoIAlign, and a "
            "SavedModel for stock TF Serving may contain stock ops only. Export with a fixed ratio "
            "instead (e.g. ROI_ALIGN_SAMPLING_RATIO=2 in the config JSON): an approximation whose "
            "outputs differ slightly from detect() with adaptive sampling."
        )
    config = copy.copy(config)
    config.ROI_ALIGN_IMPLEMENTATION = "portable"
    config.MIXED_PRECISION = None
    config.validate()
    return config


def class_names_for(config: Config, class_names: Sequence[str] | None = None) -> list[str]:
    """The exported class names: ``class_names``, else ``config.CLASS_NAMES``, else
    ``["BG", "class_1", ..., "class_{K}"]``. Must have NUM_CLASSES entries, no newlines."""
    names = class_names if class_names is not None else config.CLASS_NAMES
    if names is None:
        names = ["BG"] + [f"class_{i}" for i in range(1, config.NUM_CLASSES)]
    names = [str(n) for n in names]
    if len(names) != config.NUM_CLASSES:
        raise ValueError(
            f"class_names has {len(names)} entries but NUM_CLASSES={config.NUM_CLASSES} "
            "(index 0 is the background)"
        )
    for n in names:
        if "\n" in n or "\r" in n:
            raise ValueError(f"class name {n!r} contains a line break (labels.txt is one per line)")
    return names


# ------------------------------------------------------------------------------ graph
def _preprocess_one(image: tf.Tensor, config: Config):
    """uint8 [H, W, 3] -> (canvas float32 [S, S, 3], size int32 [2], scale float32 [2],
    original (H, W) int32 [2]); S = the largest canvas any input can need, so that
    images of different sizes stack in a map_fn; the batch is cropped afterwards."""
    side = config.IMAGE_SHAPE[0]
    shape = tf.shape(image)
    not_empty = tf.debugging.assert_positive(
        shape[:2], message="input image has zero height or width; expected [H>=1, W>=1, 3]"
    )
    with tf.control_dependencies([not_empty]):
        image = tf.identity(image)
    padded, size, scale = transforms.resize_and_pad(image, config)
    pshape = tf.shape(padded)
    canvas = tf.pad(padded, [[0, side - pshape[0]], [0, side - pshape[1]], [0, 0]])
    canvas = tf.ensure_shape(canvas, [side, side, 3])
    return canvas, tf.cast(size, tf.int32), tf.cast(scale, tf.float32), shape[:2]


def _output_signature(config: Config):
    side = config.IMAGE_SHAPE[0]
    return (
        tf.TensorSpec([side, side, 3], tf.float32),
        tf.TensorSpec([2], tf.int32),
        tf.TensorSpec([2], tf.float32),
        tf.TensorSpec([2], tf.int32),
    )


def _batch_canvas(canvases: tf.Tensor, sizes: tf.Tensor, config: Config) -> tf.Tensor:
    """Crop the [B, S, S, 3] canvases to what ``prepare_image_batch`` gives: the fixed
    square in "square" mode, the largest padded image of the batch in "pad32"."""
    pad_h, pad_w = transforms.padded_size(sizes[:, 0], sizes[:, 1], config)
    height = tf.reduce_max(pad_h * tf.ones_like(sizes[:, 0]))
    width = tf.reduce_max(pad_w * tf.ones_like(sizes[:, 1]))
    return canvases[:, :height, :width, :]


def _postprocess(out: dict, scales: tf.Tensor, original_hw: tf.Tensor, class_names) -> dict:
    num = tf.cast(out["num_detections"], tf.int32)
    max_det = tf.shape(out["scores"])[1]
    ex = tf.expand_dims  # not [..., None]: LiteRT has no strided slice with a new axis
    valid = ex(tf.range(max_det), 0) < ex(num, 1)
    scale4 = ex(tf.tile(scales, [1, 2]), 1)
    hw4 = ex(tf.cast(tf.tile(original_hw, [1, 2]), tf.float32), 1)
    boxes = tf.clip_by_value(tf.cast(out["boxes"], tf.float32) / scale4 / hw4, 0.0, 1.0)
    validf = tf.cast(valid, tf.float32)
    result = {}
    if "masks" in out:
        result["detection_masks"] = tf.cast(out["masks"], tf.float32) * ex(ex(validf, -1), -1)
    if "keypoints" in out:
        # Model keypoints are (x, y, score) in network-input pixels, pixel-edge frame.
        kp = tf.cast(out["keypoints"], tf.float32)
        hw = tf.cast(original_hw, tf.float32)
        y = kp[..., 1] / scales[:, 0, None, None] / hw[:, 0, None, None]
        x = kp[..., 0] / scales[:, 1, None, None] / hw[:, 1, None, None]
        result["detection_keypoints"] = tf.clip_by_value(tf.stack([y, x], -1), 0.0, 1.0) * validf[..., None, None]
        result["detection_keypoint_scores"] = kp[..., 2] * validf[..., None]
    return {
        **result,
        "detection_boxes": boxes * ex(validf, -1),
        "detection_scores": tf.cast(out["scores"], tf.float32) * validf,
        "detection_classes": tf.cast(out["class_ids"], tf.float32) * validf,
        "num_detections": tf.cast(num, tf.float32),
        # Batched (one copy per image) so that TF Serving's REST row format, which
        # needs a batch dimension on every output, works too.
        "class_names": tf.tile(tf.constant(class_names, tf.string)[None, :], [tf.shape(num)[0], 1]),
    }


def _tf_variable(variable) -> tf.Variable:
    """The tf.Variable behind a keras.Variable (TF backend), or the variable itself."""
    value = getattr(variable, "value", variable)
    if not isinstance(value, tf.Variable):
        raise TypeError(f"cannot export variable {variable!r}: not backed by a tf.Variable")
    return value


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
        names = list(class_names)
        # Track the underlying tf.Variables, not the Keras model (whose attributes,
        # tf.functions included, would be serialised too) nor the keras.Variable
        # wrappers: with those, the TF1-style loader that TF Serving and
        # `saved_model_cli run` use fails with "Could not find variable ..."
        # (keras-team/keras#19274) and the weights are stored twice.
        self.model_variables = [_tf_variable(v) for v in model.variables]
        self.labels = tf.saved_model.Asset(labels_path)
        spec = _output_signature(config)

        def run(images_list_fn, elems):
            canvases, sizes, scales, original_hw = tf.map_fn(
                images_list_fn, elems, fn_output_signature=spec
            )
            images = _batch_canvas(canvases, sizes, config)
            out = model({"images": images, "image_sizes": sizes}, training=False)
            return _postprocess(out, scales, original_hw, names)

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
            return run(lambda image: _preprocess_one(image, config), images)

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
                return _preprocess_one(image, config)

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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``mrcnn export`` options."""
    parser.add_argument("--weights", required=True, help="trained weights (.weights.h5)")
    parser.add_argument(
        "--config", required=True,
        help="MODULE:CLASS, FILE.py:CLASS or a config JSON (Config.to_dict())",
    )
    parser.add_argument("--output", required=True, help="base directory; writes OUTPUT/VERSION/")
    parser.add_argument("--version", type=int, default=1, help="version folder (default 1)")
    parser.add_argument(
        "--no-version-dir", dest="version", action="store_const", const=None,
        help="write the SavedModel directly into OUTPUT (no version folder)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing version")
    parser.add_argument(
        "--format", default="saved_model", choices=("saved_model", "onnx", "openvino", "litert"),
        help="saved_model (TF Serving, default): OUTPUT/VERSION/; onnx: OUTPUT/model.onnx; "
        "openvino: OUTPUT/model.xml + model.bin; litert: OUTPUT/model.tflite (docs/serving.md)",
    )
    parser.add_argument(
        "--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
        help=f"SavedModel: refuse requests with more than this many pixels (H * W), encoded "
        f"images before decoding (default {DEFAULT_MAX_PIXELS}; 0 = no limit)",
    )


def run(args: argparse.Namespace) -> str | list[str]:
    fmt = getattr(args, "format", "saved_model")
    if fmt != "saved_model":
        from mrcnn.export.formats import MissingRuntimeError
        from mrcnn.export.runtimes import export_model_from_files

        try:
            paths = export_model_from_files(
                args.weights, args.config, args.output, fmt, overwrite=args.overwrite
            )
        except MissingRuntimeError as err:
            raise SystemExit(f"mrcnn export: {err}") from err
        print(f"{fmt} model written to {', '.join(paths)} (class names in labels.txt)")
        return paths
    max_pixels = getattr(args, "max_pixels", DEFAULT_MAX_PIXELS)
    if max_pixels is not None and max_pixels < 0:
        raise ValueError(f"--max-pixels must be >= 0 (0 = no limit), got {max_pixels}")
    path = export_from_files(
        args.weights, args.config, args.output, args.version, overwrite=args.overwrite,
        max_pixels=max_pixels or None,
    )
    print(f"SavedModel written to {path}")
    print(f"signatures: {SIGNATURE_IMAGE} (uint8 images), {SIGNATURE_ENCODED} (JPEG/PNG bytes)")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="mrcnn export", description="Export a SavedModel that stock TF Serving runs."
    )
    add_arguments(parser)
    run(parser.parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
