"""Pretrained starts for training: ``mrcnn train --init imagenet:FILE | coco:FILE | none``.

::

    from mrcnn.checkpoint.pretrained import config_for_start, initialize
    config = config_for_start(MyConfig(), "coco:maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth")
    model = MaskRCNN(config)
    report = initialize(model, "coco:maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth")
    print(report.summary())
    model.compile(); model.fit(...)

Starts (FILE is read without torch, see :mod:`mrcnn.checkpoint.foreign`):

- ``imagenet:FILE``: the ResNet only, from a torchvision classification
  checkpoint (``resnet50-0676ba61.pth``), Detectron2's MSRA ImageNet ``.pkl``
  (``R-50.pkl``, Caffe2 names; needs ``STRIDE_IN_1X1=True`` and BGR inputs, as
  :class:`mrcnn.configs.Detectron2COCO`), or the backbone of any torchvision /
  Detectron2 detection checkpoint (``.pth``/``.pkl``), or the backbone of this
  project's ``.weights.h5``. FPN, RPN and the heads keep their initialisation.
- ``coco:FILE``: a whole COCO-trained model: torchvision ``maskrcnn_resnet50_fpn``
  ``.pth``, Detectron2 ``.pkl``/``.pth`` (format told from the key names), or this
  project's ``.weights.h5``. With another ``NUM_CLASSES`` than the checkpoint's,
  the class-specific predictors (box ``cls_score`` + ``bbox_pred``, the mask
  logits; the keypoint logits when the keypoint counts differ) keep their
  initialisation and everything else is loaded; heads the checkpoint does not have
  (keypoints from an instance-segmentation model) keep theirs too.
- ``none``: random initialisation. Refused with ``BACKBONE_NORM="frozen_bn"``:
  frozen batch norm with random statistics is an identity, and the ResNet would
  train with no normalisation at all.

``FREEZE_BACKBONE_STAGES = None`` (the default) means: freeze the stem and the
first residual stage (2, what torchvision's ``trainable_backbone_layers=3`` and
Detectron2's ``FREEZE_AT=2`` do) when the backbone comes from a pretrained start
(imagenet or coco), and nothing (0) when training from scratch. An integer is
used as given.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mrcnn.checkpoint.foreign import (
    CheckpointError,
    caffe2_to_detectron2,
    detect_source,
    is_caffe2,
    read_checkpoint,
)
from mrcnn.checkpoint.weights_file import WeightsFile
from mrcnn.config import Config

__all__ = [
    "FROZEN_BN_WITHOUT_WEIGHTS", "KINDS", "StartReport", "check_start", "config_for_start", "freeze_backbone",
    "frozen_stages_for", "initialize", "parse_init",
]

KINDS = ("imagenet", "coco", "none")
PRETRAINED_FREEZE_STAGES = 2  # stem + C2, as torchvision and Detectron2 fine-tune

FROZEN_BN_WITHOUT_WEIGHTS = (
    "BACKBONE_NORM='frozen_bn' needs pretrained backbone weights: with random weights frozen batch norm "
    "is an identity and the ResNet trains with no normalisation at all. Load backbone weights "
    "(`--init imagenet:FILE` with e.g. torchvision's resnet50-0676ba61.pth, `--init coco:FILE`, or "
    "`--weights FILE`), or train from scratch with BACKBONE_NORM='gn' (or 'bn')."
)


@dataclass
class StartReport:
    """What :func:`initialize` did: Keras weight paths loaded and left at their initialisation."""

    kind: str
    path: str | None = None
    source: str | None = None  # "torchvision" | "detectron2" | "keras"
    loaded: list[str] = field(default_factory=list)
    reinitialised: list[str] = field(default_factory=list)
    frozen_stages: int = 0
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """A few lines for the training log: counts per stage, and every re-initialised weight."""
        if self.kind == "none":
            head = "start: random initialisation"
        else:
            head = f"start: {self.kind} weights from {self.path} ({self.source} format)"
        lines = [head, f"  loaded {len(self.loaded)} weights: {_by_stage(self.loaded)}"]
        if self.reinitialised:
            lines.append(f"  re-initialised {len(self.reinitialised)} weights: {_by_stage(self.reinitialised)}")
            if self.kind == "coco":  # (an imagenet start re-initialises every stage after the backbone)
                lines += [f"    {p}" for p in self.reinitialised]
        lines.append(f"  frozen backbone stages: {self.frozen_stages} (FREEZE_BACKBONE_STAGES)")
        lines += [f"  {n}" for n in self.notes]
        return "\n".join(lines)


def _by_stage(paths: list[str]) -> str:
    counts: dict[str, int] = {}
    for p in paths:
        counts[p.split("/")[0]] = counts.get(p.split("/")[0], 0) + 1
    return ", ".join(f"{k} {v}" for k, v in counts.items()) or "none"


def parse_init(spec: str | None) -> tuple[str, str | None]:
    """``"imagenet:FILE"`` / ``"coco:FILE"`` / ``"none"`` (or None) -> (kind, path); ValueError otherwise."""
    if spec is None or spec == "none":
        return "none", None
    kind, sep, path = spec.partition(":")
    if kind not in KINDS[:2] or not sep or not path:
        raise ValueError(f"--init must be imagenet:FILE, coco:FILE or none, got {spec!r}")
    return kind, path


def frozen_stages_for(config: Config, kind: str) -> int:
    """The effective FREEZE_BACKBONE_STAGES for a start ``kind`` (None -> 2 pretrained, 0 from scratch)."""
    if config.FREEZE_BACKBONE_STAGES is not None:
        return int(config.FREEZE_BACKBONE_STAGES)
    return PRETRAINED_FREEZE_STAGES if kind in ("imagenet", "coco") else 0


def check_start(config: Config, spec: str | None, weights_loaded: bool = False) -> None:
    """Refuse a start that cannot train: ``frozen_bn`` without loaded backbone weights (ValueError
    with the fix). ``weights_loaded``: the caller loads a full checkpoint itself (``--weights``)."""
    kind, path = parse_init(spec)
    if kind == "none" and not weights_loaded and config.BACKBONE_NORM == "frozen_bn":
        raise ValueError(FROZEN_BN_WITHOUT_WEIGHTS)
    if path is not None and not os.path.isfile(path):
        raise FileNotFoundError(f"--init {spec}: file not found: {path}")


def config_for_start(config: Config, spec: str | None, weights_loaded: bool = False) -> Config:
    """Check the start (:func:`check_start`) and return a copy of ``config`` with
    FREEZE_BACKBONE_STAGES resolved for it, so the model is built (and config.json written)
    with the stages that will actually be frozen."""
    check_start(config, spec, weights_loaded)
    kind, _ = parse_init(spec)
    out = copy.copy(config)
    # --weights FILE (a same-shape resume) counts as "none" here: set the field to freeze then.
    out.FREEZE_BACKBONE_STAGES = frozen_stages_for(config, kind)
    out.validate()
    return out


def freeze_backbone(model, stages: int) -> None:
    """``ResNet.freeze(stages)`` on ``model``'s backbone (the freezing lives in the ResNet).
    Call before ``compile()``."""
    from mrcnn.checkpoint.convert import component

    component(model, "backbone").freeze(stages)


# ----- this project's .weights.h5 ----------------------------------------------------------------
def _load_keras_h5(model, path: str, only: set[int] | None, groups: dict[str, list[Any]],
                   lacking_heads: dict[str, set[int]]) -> tuple[set[int], list[str]]:
    """Copy datasets of a ``.weights.h5`` into ``model`` by path and shape.

    ``only``: ids of the variables to load (None: all). ``groups``: class-specific
    variable groups, left at their initialisation when any of their shapes differ.
    ``lacking_heads``: {name: ids} of heads that may be absent from the file.
    Returns (ids of the variables loaded, notes); CheckpointError names the first weight
    that does not fit.
    """
    variables = [v for v in model.weights if only is None or id(v) in only]
    try:
        weights_file = WeightsFile(model, path)
    except OSError as exc:
        raise CheckpointError(f"{path}: not a readable .weights.h5 ({exc})") from exc
    with weights_file as f:
        source = f.get
        skip: set[int] = set()
        notes = []
        for name, members in groups.items():
            mismatched = [v for v in members if (d := source(v)) is None or tuple(d.shape) != tuple(v.shape)]
            if members and mismatched and (only is None or any(id(v) in only for v in members)):
                skip |= {id(v) for v in members}
                d = source(mismatched[0])
                notes.append(f"{name} predictor re-initialised: {mismatched[0].path} is "
                             f"{tuple(mismatched[0].shape)} here, {None if d is None else tuple(d.shape)} in the file")
        absent_heads = set()
        for name, ids in lacking_heads.items():
            if ids and all(source(v) is None for v in model.weights if id(v) in ids):
                absent_heads |= ids
                notes.append(f"{name}: not in the file, re-initialised")
        values = []
        for v in variables:
            if id(v) in skip or id(v) in absent_heads:
                continue
            d = source(v)
            if d is None:
                raise CheckpointError(f"{path}: no value for Keras weight {v.path} "
                                      f"(a model with another architecture or config?)")
            if tuple(d.shape) != tuple(v.shape):
                raise CheckpointError(f"{path}: {f.location(v)} has shape {tuple(d.shape)} but Keras weight "
                                      f"{v.path} is {tuple(v.shape)} (the config does not match the file)")
            values.append((v, np.asarray(d[()])))
        used = {f.location(v) for v, _ in values} | {f.location(v) for v in model.weights if id(v) in skip}
        if only is None:
            # Heads this model does not have (a mask model's file into a keypoint-only model) are skipped.
            absent = [h for h in ("mask_head", "keypoint_head") if h not in lacking_heads]
            extra = [n for n in f.dataset_names()
                     if n not in used and not any(h in n.split("/") for h in absent)]
            if extra:
                raise CheckpointError(f"{path}: {len(extra)} weight(s) with no place in this model, e.g. "
                                      f"{extra[:3]} (another architecture?)")
    for v, value in values:
        v.assign(value)
    return {id(v) for v, _ in values}, notes


# ----- the entry point ---------------------------------------------------------------------------
def initialize(model, spec: str | None) -> StartReport:
    """Load a pretrained start into a built :class:`~mrcnn.model.MaskRCNN` (before ``compile()``).

    Args:
        model: the model to initialise (its Config decides classes, norms, freezing).
        spec: ``"imagenet:FILE"``, ``"coco:FILE"`` or ``"none"`` (see the module docstring).

    Returns:
        a :class:`StartReport` (``print(report.summary())`` lists what was loaded and
        what was re-initialised).

    Raises:
        ValueError (:class:`~mrcnn.checkpoint.foreign.CheckpointError` for files) naming the
        key, file or field: a frozen_bn model without loaded backbone weights, a file
        that does not fit the model, an unknown spec; FileNotFoundError.
    """
    from mrcnn.checkpoint.convert import class_specific_layers, component, convert_state_dict
    from mrcnn.checkpoint.imagenet import load_backbone_state

    config = model.config
    kind, path = parse_init(spec)
    check_start(config, spec)
    stages = frozen_stages_for(config, kind)
    report = StartReport(kind=kind, path=path, frozen_stages=stages)
    if kind == "none":
        report.reinitialised = [v.path for v in model.weights]
        return report

    backbone = component(model, "backbone")
    backbone_ids = {id(v) for v in backbone.weights}
    if path.endswith(".h5"):
        report.source = "keras"
        groups = {g: [v for layer in layers for v in layer.weights]
                  for g, layers in class_specific_layers(model).items()}
        if kind == "imagenet":
            loaded_ids, notes = _load_keras_h5(model, path, backbone_ids, {}, {})
        else:
            heads = {name: {id(v) for v in h.weights} for name in ("mask_head", "keypoint_head")
                     if (h := component(model, name)) is not None}
            loaded_ids, notes = _load_keras_h5(model, path, None, groups, heads)
        report.notes += notes
    else:
        state = read_checkpoint(path)
        if is_caffe2(state):  # Detectron2's MSRA ImageNet backbones (R-50.pkl)
            from mrcnn.layers.norm import BN_EPSILON

            state = caffe2_to_detectron2(state, BN_EPSILON)
            report.notes.append("Caffe2 (MSRA) names converted as Detectron2 does; running stats 0 / 1 - eps")
        report.source = detect_source(state)
        if kind == "imagenet":
            result = load_backbone_state(model, state, report.source, path)
            loaded_ids = {id(v) for v in result["variables"]}
        else:
            result = convert_state_dict(model, state, report.source, path, fine_tune=True)
            loaded_ids = {id(v) for v in result["variables"]}
            report.notes += [f"{g} predictor re-initialised: {why}" for g, why in result["why"].items()]
            if component(model, "keypoint_head") is not None:
                report.notes.append("keypoint head: not in the checkpoint, re-initialised")
    report.loaded = [v.path for v in model.weights if id(v) in loaded_ids]
    report.reinitialised = [v.path for v in model.weights if id(v) not in loaded_ids]
    if config.FREEZE_BACKBONE_STAGES is None:  # the model was built with 0: apply the start's default
        freeze_backbone(model, stages)
    return report
