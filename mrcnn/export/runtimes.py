"""``export_model(model, output_dir, format)``: ONNX, OpenVINO IR and LiteRT files.

What each format traces (docs/serving.md has the ops and the reasons); the model is
built from :func:`mrcnn.export.graph.export_config` (the RoIAlign and mask pick forms
are Config values), the resize forms are arguments of the serving function:

* onnx: gather RoIAlign, float64 resize rule, ``tf2onnx.convert.from_function``;
* openvino: gather RoIAlign, gather resize, int32 resize rule, flat mask pick,
  ``openvino.convert_model`` on the traced function;
* litert: gather RoIAlign, int32 resize rule, ``tf.lite.TFLiteConverter`` (builtins only).

Each writes into a staging folder next to ``output_dir`` and moves the files into
place only after the conversion succeeded, so a failed export leaves no partial
model file behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import tensorflow as tf

from mrcnn.config import Config, load_config
from mrcnn.export.formats import FORMATS, LABELS_FILE, class_names_for, require
from mrcnn.export.graph import (
    INPUT_NAME,
    export_config,
    model_for,
    model_variables,
    serving_function,
)
from mrcnn.export.quantize import check_quantize_args, quantize_files

MODEL_FILES = {
    "onnx": ("model.onnx",),
    "openvino": ("model.xml", "model.bin"),
    "litert": ("model.tflite",),
}
ONNX_OPSET = 18


def _convert_onnx(serve, staging: Path, model) -> None:
    del model  # traced through ``serve``
    tf2onnx = require("tf2onnx", "onnx")
    require("onnx", "onnx")
    path = staging / "model.onnx"
    tf2onnx.convert.from_function(
        serve, input_signature=serve.input_signature, opset=ONNX_OPSET, output_path=str(path)
    )
    _check_onnx(path)


def _check_onnx(path: Path) -> None:
    """The written ONNX model has the contract's input and output names."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    inputs = [i.name for i in model.graph.input]
    outputs = [o.name for o in model.graph.output]
    if inputs != [INPUT_NAME] or "detection_boxes" not in outputs:
        raise RuntimeError(f"unexpected ONNX signature: inputs {inputs}, outputs {outputs}")


def unstable_topk(ov_model) -> int:
    """Replace every ``TopK(stable=True)`` of an OpenVINO model by the same TopK with
    ``stable=False``; returns how many.

    tf.math.top_k converts to a stable TopK (ties in index order), which OpenVINO's CPU
    plugin runs with a quadratic algorithm: 2.7 of 25 s per 800x1333 image for the RPN's
    top 1000 of 201,600 anchors on P2, against 15 ms unstable (measured on 2026.4,
    docs/serving.md "Profiles"). The order differs only among exactly equal scores.
    """
    import openvino.opset11 as opset

    count = 0
    for node in ov_model.get_ordered_ops():
        if node.get_type_name() != "TopK" or not node.get_attributes().get("stable"):
            continue
        attrs = node.get_attributes()
        fast = opset.topk(node.input_value(0), node.input_value(1), attrs["axis"], attrs["mode"], attrs["sort"],
                          attrs["index_element_type"], stable=False)
        fast.set_friendly_name(node.get_friendly_name())
        for i in range(node.get_output_size()):
            node.output(i).replace(fast.output(i))
        count += 1
    return count


def _convert_openvino(serve, staging: Path, model) -> None:
    del model  # traced through ``serve``
    ov = require("openvino", "openvino")
    concrete = serve.get_concrete_function()
    ov_model = ov.convert_model(concrete)
    unstable_topk(ov_model)
    # OpenVINO takes the output names from the traced function's dict keys.
    names = {n for port in ov_model.outputs for n in port.get_names()}
    expected = set(concrete.structured_outputs)
    if not expected <= names:
        raise RuntimeError(f"OpenVINO model outputs {sorted(names)}, expected {sorted(expected)}")
    ov_model.inputs[0].get_tensor().set_names({INPUT_NAME})
    # compress_to_fp16=False: keep the float32 weights (the default halves model.bin).
    ov.save_model(ov_model, str(staging / "model.xml"), compress_to_fp16=False)


def _convert_litert(serve, staging: Path, model) -> None:
    # Through a SavedModel with a serving_default signature, so that the .tflite file
    # has a signature (named inputs/outputs) for the interpreter's signature runner.
    module = tf.Module()
    module.model_variables = model_variables(model)
    module.serve = serve
    saved = staging / "saved_model"
    tf.saved_model.save(module, str(saved), signatures={"serving_default": serve.get_concrete_function()})
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved))
    # Builtins only: a model that needs the Flex (select TF ops) delegate would not
    # run on the plain ai-edge-litert interpreter.
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    (staging / "model.tflite").write_bytes(converter.convert())


CONVERTERS = {"onnx": _convert_onnx, "openvino": _convert_openvino, "litert": _convert_litert}


def export_model(
    model,
    output_dir: str | os.PathLike,
    fmt: str,
    *,
    class_names: Sequence[str] | None = None,
    overwrite: bool = False,
    quantize: str | None = None,
    calibration: Iterable[np.ndarray] | None = None,
) -> list[str]:
    """Write ``model`` for runtime ``fmt`` ("onnx", "openvino", "litert") into ``output_dir``.

    Args:
      model: a :class:`mrcnn.model.MaskRCNN` (any Config; the export builds the model the
        format needs from :func:`~mrcnn.export.graph.export_config`, same weights).
      output_dir: folder for the model file(s) and ``labels.txt``; created if needed.
      fmt: the format; see :data:`MODEL_FILES` for the files each writes.
      class_names: NUM_CLASSES names, index 0 = background (default from the Config).
      overwrite: replace existing model files of that format.
      quantize: None/"none" (float32) or "int8" (onnx and openvino): post-training
        quantization, see :mod:`mrcnn.export.quantize`.
      calibration: with ``quantize="int8"``: the calibration images, uint8 [H, W, 3]
        or [1, H, W, 3] each (e.g. a :class:`~mrcnn.export.quantize.CalibrationImages`).
    Returns:
      The paths of the written model files.
    Raises:
      MissingRuntimeError: the converter package is not installed (names the extra).
      FileExistsError: a model file exists and ``overwrite`` is False.
    """
    if fmt not in CONVERTERS:
        raise ValueError(f"format must be one of {FORMATS[1:]} here, got {fmt!r}")
    output_dir = Path(output_dir)
    targets = [output_dir / name for name in MODEL_FILES[fmt]]
    existing = [str(t) for t in targets if t.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{', '.join(existing)} exists; pass overwrite=True (--overwrite)")
    names = class_names_for(model.config, class_names)
    check_quantize_args(fmt, quantize, calibration)
    if fmt == "onnx":
        require("tf2onnx", fmt)
    elif fmt == "openvino":
        require("openvino", fmt)
    traced = model_for(model, fmt)
    serve = serving_function(traced, float64=fmt == "onnx", gather_resize=fmt == "openvino")
    output_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".export-{fmt}-", dir=output_dir))
    try:
        CONVERTERS[fmt](serve, staging, traced)
        if quantize == "int8":
            quantize_files(fmt, staging, calibration)
        (staging / LABELS_FILE).write_text("".join(n + "\n" for n in names), encoding="utf-8")
        for name in (*MODEL_FILES[fmt], LABELS_FILE):
            os.replace(staging / name, output_dir / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [str(t) for t in targets]


def export_model_from_files(
    weights_path: str | os.PathLike,
    config: str | Config,
    output_dir: str | os.PathLike,
    fmt: str,
    *,
    class_names: Sequence[str] | None = None,
    overwrite: bool = False,
    quantize: str | None = None,
    calibration: Iterable[np.ndarray] | None = None,
) -> list[str]:
    """Build the model from ``config``, load ``weights_path`` and :func:`export_model` it."""
    from mrcnn.model import MaskRCNN

    config = export_config(load_config(config), fmt)
    model = MaskRCNN(config)
    model.load_weights(str(weights_path))
    return export_model(model, output_dir, fmt, class_names=class_names, overwrite=overwrite,
                        quantize=quantize, calibration=calibration)
