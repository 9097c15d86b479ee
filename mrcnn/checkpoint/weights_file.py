"""This project's ``.weights.h5`` read weight by weight: the one reader besides Keras' own.

``model.load_weights`` loads a whole file into a model of the same architecture.
Pretrained starts (``--init coco:FILE``: re-initialised predictors, heads the file
lacks) and matterport's ``load_weights(by_name=True, exclude=[...])`` need each
weight's dataset instead. Keras 3 does not publish where a variable lives in the
file, so :class:`WeightsFile` finds out by saving the model once with every variable
set to its own index (Keras' layout is then read, not re-implemented) and restores
the model's values afterwards.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import numpy as np


def weight_locations(model: Any) -> dict[int, str]:
    """id(variable) -> its dataset path in a ``.weights.h5`` that ``model.save_weights`` writes."""
    import h5py

    variables = list(model.weights)
    saved = [np.array(v.numpy()) for v in variables]
    index: dict[int, str] = {}
    try:
        for i, v in enumerate(variables):
            v.assign(np.full(v.shape, i, dtype=saved[i].dtype))
        with tempfile.TemporaryDirectory(prefix="mrcnn-weights-") as tmp:
            probe = os.path.join(tmp, "probe.weights.h5")
            model.save_weights(probe)

            def visit(name, obj):
                if isinstance(obj, h5py.Dataset) and obj.size:
                    index.setdefault(int(np.asarray(obj[()]).reshape(-1)[0]), name)

            with h5py.File(probe, "r") as f:
                f.visititems(visit)
    finally:
        for v, value in zip(variables, saved):
            v.assign(value)
    return {id(variables[i]): path for i, path in index.items() if 0 <= i < len(variables)}


class WeightsFile:
    """An open ``.weights.h5``, addressed by ``model``'s variables. Use as a context manager.

    ``get(v)``: the h5py dataset that holds variable ``v`` (None when the file has none
    at its place); ``location(v)``: that place; ``dataset_names()``: every dataset in the
    file. Raises OSError (from h5py) for a file that is not HDF5.
    """

    def __init__(self, model: Any, path: str | os.PathLike) -> None:
        import h5py

        self.path = os.fspath(path)
        self._locations = weight_locations(model)
        self._file = h5py.File(self.path, "r")

    def __enter__(self) -> WeightsFile:
        return self

    def __exit__(self, *exc: Any) -> None:
        self._file.close()

    def location(self, variable: Any) -> str | None:
        return self._locations.get(id(variable))

    def get(self, variable: Any) -> Any:
        import h5py

        location = self.location(variable)
        node = self._file.get(location) if location is not None else None
        return node if isinstance(node, h5py.Dataset) else None

    def dataset_names(self) -> list[str]:
        import h5py

        names: list[str] = []
        self._file.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
        return names
