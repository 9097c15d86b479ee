"""The trained shapes model of ``tests/fixtures/shapes_model`` (README there): ``ShapesDemoConfig``
trained from scratch for 20 minutes on a 2-core CPU. Trained weights leave detection slots
empty and give confident duplicates, where random weights fill every slot."""

from __future__ import annotations

import os

import numpy as np

WEIGHTS = os.path.join(os.path.dirname(__file__), "fixtures", "shapes_model", "shapes_demo_weights.npz")


def load_shapes_model(config=None):
    """A MaskRCNN of ``config`` (default ``ShapesDemoConfig()``; any Config with its architecture)
    with the fixture's weights (stored float16, loaded as float32)."""
    from mrcnn import MaskRCNN
    from mrcnn.data.synthetic import ShapesDemoConfig

    model = MaskRCNN(config if config is not None else ShapesDemoConfig())
    with np.load(WEIGHTS) as f:
        model.set_weights([f[f"arr_{i}"].astype(np.float32) for i in range(len(f.files))])
    return model
