"""Weight files as matterport/Mask_RCNN scripts handle them: ``load_weights(path, by_name=True,
exclude=[...])`` into this project's model, the file kind told from its contents, and
``download_trained_weights`` (matterport's COCO file).

Kinds of file (:func:`weights_kind`):

- ``"keras"``: this project's ``.weights.h5`` layout (what ``model.save_weights`` writes,
  also under matterport's checkpoint names ``mask_rcnn_<name>_<epoch>.h5``);
- ``"keras2"``: a Keras 2 HDF5 file (matterport's ``mask_rcnn_coco.h5`` and every model
  trained with matterport), read by :mod:`mrcnn.checkpoint.keras2` into a model built
  from :class:`mrcnn.configs.MatterportConfig` (matterport's architecture as stage options);
- ``"torch"``: a torchvision/Detectron2 checkpoint (``.pth``/``.pkl``): the ImageNet
  backbone of :meth:`MaskRCNN.get_imagenet_weights` or a COCO model, loaded through
  :func:`mrcnn.checkpoint.pretrained.initialize`.

Loading by name (``by_name=True``) copies every weight of the model whose place exists in
the file with the same shape, and leaves the rest at their values (matterport's
semantics: a file from a model with other heads loads what fits). A weight whose shape
differs is an error naming it and the ``exclude`` entry that would skip it; a file that
matches nothing is an error naming the file and the first unmatched names, never a
silent success. ``by_name=False`` requires every weight to be in the file.
"""

from __future__ import annotations

import os
import urllib.error
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mrcnn.checkpoint.foreign import CheckpointError
from mrcnn.fileio import download_part

__all__ = ["COCO_MODEL_URL", "MATTERPORT_LAYER_NAMES", "LoadReport", "TrainedWeightsUnavailable",
           "download_trained_weights", "load_weights", "weights_kind"]

# Where matterport's release keeps its COCO-trained weights (Keras 2 HDF5, ResNet-101).
COCO_MODEL_URL = "https://github.com/matterport/Mask_RCNN/releases/download/v2.0/mask_rcnn_coco.h5"

# matterport's names of the class-specific layers (what balloon.py excludes to fine-tune on
# other classes) -> this model's layers with the same job.
MATTERPORT_LAYER_NAMES: dict[str, tuple[str, ...]] = {
    "mrcnn_class_logits": ("roi_heads/box_head/cls_score",),
    "mrcnn_bbox_fc": ("roi_heads/box_head/bbox_pred",),
    "mrcnn_bbox": ("roi_heads/box_head/bbox_pred",),
    "mrcnn_mask": ("roi_heads/mask_head/mask_fcn_logits",),
}


class TrainedWeightsUnavailable(RuntimeError):
    """The COCO weights could not be downloaded (the message has the URL and where to put the file)."""


@dataclass
class LoadReport:
    """What :func:`load_weights` did: weight paths loaded, excluded and absent from the file."""

    path: str
    kind: str
    loaded: list[str] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (f"{self.path}: loaded {len(self.loaded)} weights, excluded {len(self.excluded)}, "
                f"not in the file {len(self.missing)}")


def weights_kind(path: str | os.PathLike) -> str:
    """"keras" (this project's layout), "keras2" (Keras 2 / matterport HDF5) or "torch"."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.endswith((".pth", ".pt", ".pkl")):
        return "torch"
    import h5py

    from mrcnn.checkpoint.keras2 import name_list

    try:
        with h5py.File(path, "r") as f:
            roots = [f] + ([f["model_weights"]] if "model_weights" in f else [])
            if any(name_list(r, "layer_names") is not None for r in roots):
                return "keras2"
            return "keras"
    except OSError as exc:
        raise CheckpointError(f"{path}: not an HDF5 weights file ({exc})") from exc


def _excluded(variable_path: str, exclude: list[str]) -> bool:
    parts = variable_path.split("/")
    for name in exclude:
        for target in MATTERPORT_LAYER_NAMES.get(name, (name,)):
            target_parts = target.strip("/").split("/")
            if len(target_parts) == 1 and target_parts[0] in parts[:-1]:
                return True  # a layer name anywhere in the path
            if parts[: len(target_parts)] == target_parts:
                return True  # a path prefix ("roi_heads/mask_head")
    return False


def load_weights(model: Any, path: str | os.PathLike, by_name: bool = False,
                 exclude: list[str] | tuple[str, ...] | None = None) -> LoadReport:
    """Load ``path`` into a built MaskRCNN (matterport's ``load_weights`` semantics, see the module).

    ``exclude``: matterport layer names (:data:`MATTERPORT_LAYER_NAMES`), this model's layer
    names, or weight-path prefixes ("roi_heads/mask_head"); their weights keep their values.
    Raises CheckpointError (a ValueError) naming the file and the weights at fault.
    """
    path = os.fspath(path)
    kind = weights_kind(path)
    exclude = list(exclude or [])
    if kind == "keras2":
        return _load_keras2(model, path, by_name, exclude)
    if kind == "torch":
        return _load_torch(model, path, by_name, exclude)
    return _load_keras(model, path, by_name, exclude)


def _load_keras2(model: Any, path: str, by_name: bool, exclude: list[str]) -> LoadReport:
    from mrcnn.checkpoint.keras2 import matterport_assignments, read_keras2

    # exclude names matterport's layers (what its scripts pass) or this model's (either works).
    pairs, excluded, missing = matterport_assignments(model, read_keras2(path), exclude=tuple(exclude),
                                                      by_name=by_name)
    kept = [(v, value) for v, value in pairs if not _excluded(v.path, exclude)]
    excluded += [v.path for v, _ in pairs if _excluded(v.path, exclude)]
    for v, value in kept:
        v.assign(value)
    return LoadReport(path, "keras2", loaded=[v.path for v, _ in kept], excluded=excluded, missing=missing)


def _load_torch(model: Any, path: str, by_name: bool, exclude: list[str]) -> LoadReport:
    from mrcnn.checkpoint.foreign import read_checkpoint
    from mrcnn.checkpoint.pretrained import initialize

    if exclude:
        raise CheckpointError(f"{path}: exclude applies to .h5 files; a torchvision/Detectron2 checkpoint "
                              "skips the class-specific layers by itself when NUM_CLASSES differs")
    state = read_checkpoint(path)
    # A classification checkpoint (fc.weight, no heads) is an ImageNet start; else a whole model.
    is_backbone_only = not any(k.startswith(("roi_heads", "rpn", "backbone.fpn")) for k in state)
    report = initialize(model, f"{'imagenet' if is_backbone_only else 'coco'}:{path}")
    if not report.loaded:
        raise CheckpointError(f"{path}: no weight of this model is in the file")
    return LoadReport(path, "torch", loaded=report.loaded, missing=report.reinitialised)


def _load_keras(model: Any, path: str, by_name: bool, exclude: list[str]) -> LoadReport:
    from mrcnn.checkpoint.weights_file import WeightsFile

    report = LoadReport(path, "keras")
    values = []
    with WeightsFile(model, path) as f:
        for v in model.weights:
            if _excluded(v.path, exclude):
                report.excluded.append(v.path)
                continue
            d = f.get(v)
            if d is None:
                report.missing.append(v.path)
                continue
            if tuple(d.shape) != tuple(v.shape):
                layer = v.path.rsplit("/", 1)[0]
                raise CheckpointError(
                    f"{path}: {v.path} is {tuple(d.shape)} in the file but {tuple(v.shape)} in this model "
                    f"(another NUM_CLASSES or architecture?); pass exclude=[{layer.rsplit('/', 1)[-1]!r}] "
                    "to keep it at its initialisation")
            values.append((v, np.asarray(d[()])))
        if not values:
            names = f.dataset_names()[:5]
            raise CheckpointError(
                f"{path}: no weight of this model matches the file (matched 0 of {len(model.weights)}); "
                f"first model weights not found: {report.missing[:5]}; first names in the file: {names}")
    if not by_name and report.missing:
        raise CheckpointError(f"{path}: {len(report.missing)} weight(s) of this model are not in the file, "
                              f"e.g. {report.missing[:5]}; load with by_name=True to keep them as they are")
    for v, value in values:
        v.assign(value)
    report.loaded = [v.path for v, _ in values]
    return report


def download_trained_weights(coco_model_path: str | os.PathLike, verbose: int = 1,
                             timeout: float = 30.0) -> Path:
    """Download matterport's COCO weights (:data:`COCO_MODEL_URL`) to ``coco_model_path``.

    Raises TrainedWeightsUnavailable (offline machine) naming the URL and where to put the
    file. The file is matterport's Keras 2 layout: :func:`load_weights` reads it into a model
    built from :class:`mrcnn.configs.MatterportConfig` (docs/matterport.md).
    """
    dest = Path(coco_model_path)
    if verbose > 0:
        print(f"Downloading pretrained model to {dest} ...")
    try:
        tmp = download_part(COCO_MODEL_URL, dest, timeout)
    except (urllib.error.URLError, OSError, TimeoutError, ValueError) as exc:
        raise TrainedWeightsUnavailable(
            f"could not download {COCO_MODEL_URL} ({exc}). On a machine with internet access download it "
            f"(`curl -LO {COCO_MODEL_URL}`) and copy it to {dest}."
        ) from exc
    os.replace(tmp, dest)
    if verbose > 0:
        print("... done downloading pretrained model!")
    return dest
