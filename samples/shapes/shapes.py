"""The synthetic shapes dataset and its configs (they live in :mod:`mrcnn.data.synthetic`).

This module re-exports them so ``--config samples.shapes.shapes:ShapesDemoConfig`` and
older imports keep working; new code should import from ``mrcnn.data.synthetic``.
"""

from mrcnn.data.synthetic import (
    CLASS_NAMES,
    SOURCE,
    ShapesConfig,
    ShapesDataset,
    ShapesDemoConfig,
    render_shapes,
)

__all__ = ["CLASS_NAMES", "SOURCE", "ShapesConfig", "ShapesDataset", "ShapesDemoConfig", "render_shapes"]
