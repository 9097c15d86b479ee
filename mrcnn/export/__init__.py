"""Deployment: a SavedModel for TF Serving (:mod:`mrcnn.export.saved_model`) and the ONNX,
OpenVINO and LiteRT files (:mod:`mrcnn.export.runtimes`), all traced from one serving graph
(:mod:`mrcnn.export.graph`). See docs/serving.md.
"""

from mrcnn.export.formats import FORMATS, MissingRuntimeError
from mrcnn.export.saved_model import export_from_files, export_saved_model

__all__ = ["FORMATS", "MissingRuntimeError", "export_from_files", "export_saved_model"]
