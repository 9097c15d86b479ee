"""Exports for runtimes other than TensorFlow: ONNX Runtime, OpenVINO and LiteRT.

Each exporter traces one serving function (:func:`mrcnn.export.graph.serving_function`)
with the contract of the SavedModel's ``serving_default`` signature and hands it to
the runtime's own converter:

* ``onnx``: ``tf2onnx.convert.from_function`` -> ``model.onnx``;
* ``openvino``: ``openvino.convert_model`` on the traced function -> ``model.xml`` +
  ``model.bin``;
* ``litert``: ``tf.lite.TFLiteConverter`` with builtin ops only -> ``model.tflite``.

The converters are in :mod:`mrcnn.export.runtimes`.

Every export also writes ``labels.txt`` (class names, line i = class id i) next to the
model file. See docs/serving.md for the ops each format uses and client examples.
"""

from __future__ import annotations

from collections.abc import Sequence

FORMATS = ("saved_model", "onnx", "openvino", "litert")

# The pip extra of the project that installs what each format's export needs.
EXTRAS = {"onnx": "onnx", "openvino": "openvino", "litert": "litert"}


class MissingRuntimeError(ImportError):
    """A package an exporter needs is not installed; the message names the pip extra."""


def require(module: str, fmt: str):
    """Import ``module`` for format ``fmt`` or raise :class:`MissingRuntimeError`."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingRuntimeError(
            f"--format {fmt} needs the Python package '{module.split('.')[0]}', which is not "
            f"installed ({err}); install it with: pip install 'mrcnn[{EXTRAS[fmt]}]'"
        ) from err

# Class names next to every export, one per line, line i = class id i ("BG" first).
LABELS_FILE = "labels.txt"


def class_names_for(config, class_names: Sequence[str] | None = None) -> list[str]:
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
