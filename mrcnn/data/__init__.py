"""Datasets and the tf.data input pipeline.

``Dataset`` (the base class) is imported eagerly; ``CocoDataset``, ``build_dataset``,
``RecordDataset`` (TFRecord shards) and the synthetic ``ShapesDataset`` are resolved on first access, so that ``import mrcnn.data``
does not import TensorFlow or pycocotools.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from mrcnn.data.dataset import Dataset

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from mrcnn.data.coco import CocoDataset
    from mrcnn.data.health import DataHealth
    from mrcnn.data.pipeline import build_dataset
    from mrcnn.data.polygons import polygons_to_mask, polygons_to_masks
    from mrcnn.data.records import RecordDataset
    from mrcnn.data.synthetic import ShapesDataset

# public name -> module that defines it (imported lazily)
_LAZY = {
    "CocoDataset": "mrcnn.data.coco",
    "DataHealth": "mrcnn.data.health",
    "build_dataset": "mrcnn.data.pipeline",
    "RecordDataset": "mrcnn.data.records",
    "ShapesDataset": "mrcnn.data.synthetic",
    "polygons_to_mask": "mrcnn.data.polygons",
    "polygons_to_masks": "mrcnn.data.polygons",
}

__all__ = ["Dataset", "CocoDataset", "DataHealth", "build_dataset", "RecordDataset", "ShapesDataset", "polygons_to_mask",
           "polygons_to_masks"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mrcnn.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # cache: later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
