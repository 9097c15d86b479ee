"""matterport/Mask_RCNN's Keras 2 HDF5 weights -> this project's MaskRCNN (``MatterportConfig``).

A Keras 2 file (``model.keras_model.save_weights``, matterport's checkpoints and its
``mask_rcnn_coco.h5``; or a whole-model save, under ``model_weights``) lists its layer
groups in the root attribute ``layer_names``; each group lists ``weight_names`` such as
``conv1/kernel:0``. The ``rpn_model`` group holds the RPN sub-model's three layers.

What each matterport layer becomes (R50 or R101, any ``NUM_CLASSES``):

==================================  =============================================
matterport                           here (:class:`mrcnn.configs.MatterportConfig`)
==================================  =============================================
``conv1`` + ``bn_conv1``             ``backbone/conv1``: the conv's bias folded into
``res{s}{b}_branch2{a,b,c}/1``       the frozen BN's mean, Keras' epsilon 1e-3 into its
+ ``bn{s}{b}_branch...``             variance; block letter b = block index
                                     (``layer{s-1}_{i}_{1,2,3}``, ``_downsample``)
``fpn_c{k}p{k}``, ``fpn_p{k}``       ``fpn/fpn_inner{k}``, ``fpn/fpn_layer{k}``
``rpn_conv_shared``                  ``rpn/head/rpn_conv``
``rpn_class_raw`` (2 per anchor)     ``rpn/head/rpn_cls_logits``: l1 - l0 (softmax's
                                     foreground probability is sigmoid(l1 - l0))
``rpn_bbox_pred``                    ``rpn/head/rpn_bbox_pred`` (same (dy, dx, dh, dw))
``mrcnn_class_conv1`` + ``_bn1``     ``roi_heads/box_head/fc6``: the 7x7 valid conv is a
                                     dense layer on the (h, w, c) flatten; BN folded
``mrcnn_class_conv2`` + ``_bn2``     ``roi_heads/box_head/fc7`` (BN folded)
``mrcnn_class_logits``,              ``cls_score``, ``bbox_pred`` (same [K, 4] layout)
``mrcnn_bbox_fc``
``mrcnn_mask_conv{i}`` + ``_bn{i}``  ``roi_heads/mask_head/mask_fcn{i}`` (BN folded)
``mrcnn_mask_deconv``, ``mrcnn_mask``  ``conv5_mask``, ``mask_fcn_logits``
==================================  =============================================

Folding a frozen batch norm into the conv before it computes the same function (matterport
trains with ``TRAIN_BN = False``, its default, so its BN layers are constant affine maps).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from mrcnn.checkpoint.foreign import CheckpointError

__all__ = ["KERAS_BN_EPSILON", "Keras2Weights", "matterport_assignments", "matterport_config_for",
           "name_list", "read_keras2"]

KERAS_BN_EPSILON = 1e-3  # matterport's BatchNorm: Keras' default


@dataclass
class Keras2Weights:
    """A Keras 2 file's weights: ``layers[name][field]`` (field: kernel, bias, gamma, ...)."""

    path: str
    layers: dict[str, dict[str, np.ndarray]]

    def layer(self, name: str) -> dict[str, np.ndarray]:
        return self.layers[name]


def read_keras2(path: str | os.PathLike) -> Keras2Weights:
    """Every weight of a Keras 2 HDF5 file, by layer name and field."""
    import h5py

    path = os.fspath(path)
    layers: dict[str, dict[str, np.ndarray]] = {}
    try:
        with h5py.File(path, "r") as f:
            root = f["model_weights"] if name_list(f, "layer_names") is None and "model_weights" in f else f
            layer_names = name_list(root, "layer_names")
            if layer_names is None:
                raise CheckpointError(f"{path}: not a Keras 2 weights file (no layer_names attribute)")
            for group_name in layer_names:
                if group_name not in root:
                    raise CheckpointError(f"{path}: layer {group_name!r} is listed in the file's layer_names but "
                                          "its weights are not there (a truncated or torn file?)")
                group = root[group_name]
                names = name_list(group, "weight_names") or []
                # A sub-model's group (matterport's rpn_model) holds several layers: each weight
                # name then says its layer; a plain layer's names may carry an inner name
                # (TimeDistributed), so the group's own name is used.
                owners = {n.split("/")[-2] for n in names if "/" in n}
                for name in names:
                    layer = name.split("/")[-2] if len(owners) > 1 else group_name
                    field = name.split("/")[-1].split(":")[0]
                    layers.setdefault(layer, {})[field] = np.asarray(group[name][()])
    except OSError as exc:
        raise CheckpointError(f"{path}: not a readable HDF5 file ({exc})") from exc
    return Keras2Weights(path, layers)


def name_list(obj, name: str) -> list[str] | None:
    """A list-of-names attribute as Keras 2 writes it: whole, or split into ``name0``,
    ``name1``, ... when larger than an HDF5 object header. None when absent."""
    if name in obj.attrs:
        values = list(obj.attrs[name])
    elif f"{name}0" in obj.attrs:
        values, i = [], 0
        while f"{name}{i}" in obj.attrs:
            values += list(obj.attrs[f"{name}{i}"])
            i += 1
    else:
        return None
    return [v.decode("utf8") if isinstance(v, bytes) else str(v) for v in values]


def _stage_blocks(weights: Keras2Weights) -> dict[int, int]:
    """Residual blocks per stage (2..5) from the ``res{s}{b}_branch2a`` names."""
    counts: dict[int, int] = {}
    for name in weights.layers:
        m = re.fullmatch(r"res(\d)([a-z])_branch2a", name)
        if m:
            stage, block = int(m.group(1)), ord(m.group(2)) - ord("a")
            counts[stage] = max(counts.get(stage, 0), block + 1)
    return counts


def matterport_config_for(weights: Keras2Weights, base: Any = None) -> Any:
    """A :class:`~mrcnn.configs.MatterportConfig` (or ``base``'s class) with the file's
    backbone depth and NUM_CLASSES: what ``mrcnn convert-weights --from matterport`` builds."""
    from mrcnn.configs import MatterportConfig

    blocks = _stage_blocks(weights)
    depth = {6: "resnet50", 23: "resnet101"}.get(blocks.get(4, 0))
    if depth is None:
        raise CheckpointError(f"{weights.path}: {blocks.get(4, 0)} blocks in stage 4 (res4*): neither "
                              "matterport's resnet50 (6) nor resnet101 (23)")
    overrides: dict[str, Any] = {"BACKBONE": depth}
    if "mrcnn_class_logits" in weights.layers:
        overrides["NUM_CLASSES"] = int(weights.layers["mrcnn_class_logits"]["kernel"].shape[-1])
    cls = type(base) if base is not None else MatterportConfig
    return cls(**overrides)


def _fold_bn_into_frozen(conv: dict, bn: dict, epsilon: float) -> dict[str, np.ndarray]:
    """conv bias + BN(eps) -> the frozen BN's four vectors at ``epsilon`` (the same map)."""
    bias = conv.get("bias")
    mean = bn["moving_mean"] - (bias if bias is not None else 0.0)
    return {"gamma": bn["gamma"], "beta": bn["beta"], "moving_mean": mean.astype(np.float32),
            "moving_variance": (bn["moving_variance"] + KERAS_BN_EPSILON - epsilon).astype(np.float32)}


def _fold_bn_into_conv(conv: dict, bn: dict) -> dict[str, np.ndarray]:
    """conv (kernel [..., out], bias) then BN -> one conv/dense with the BN folded in."""
    scale = bn["gamma"] / np.sqrt(bn["moving_variance"] + KERAS_BN_EPSILON)
    bias = conv.get("bias", np.zeros_like(scale))
    return {"kernel": (conv["kernel"] * scale).astype(np.float32),
            "bias": ((bias - bn["moving_mean"]) * scale + bn["beta"]).astype(np.float32)}


def matterport_sources(model: Any) -> dict[str, tuple[tuple[str, ...], Any]]:
    """For each weight path of ``model``: (the matterport layers it is made from, a function of
    their weights giving its value)."""
    from mrcnn.layers.norm import FrozenBatchNorm

    table: dict[str, tuple[tuple[str, ...], Any]] = {}

    def add(prefix: str, sources: tuple[str, ...], make) -> None:
        for field in ("kernel", "bias", "gamma", "beta", "moving_mean", "moving_variance"):
            table[f"{prefix}/{field}"] = (sources, lambda w, make=make, field=field: make(w)[field])

    backbone = model.backbone
    eps = backbone.stem.norm.epsilon if isinstance(backbone.stem.norm, FrozenBatchNorm) else None
    if eps is None:
        raise CheckpointError("matterport weights need BACKBONE_NORM='frozen_bn' (MatterportConfig)")
    add("backbone/conv1/conv1_conv", ("conv1",), lambda w: {"kernel": w["conv1"]["kernel"]})
    add("backbone/conv1/conv1_norm", ("conv1", "bn_conv1"),
        lambda w: _fold_bn_into_frozen(w["conv1"], w["bn_conv1"], eps))
    for s, blocks in enumerate(backbone.stages):
        for i, _ in enumerate(blocks):
            letter = chr(ord("a") + i)
            ours = f"backbone/layer{s + 1}_{i}/layer{s + 1}_{i}"
            parts = {"1": "branch2a", "2": "branch2b", "3": "branch2c", "downsample": "branch1"}
            for part, theirs in parts.items():
                conv, bn = f"res{s + 2}{letter}_{theirs}", f"bn{s + 2}{letter}_{theirs}"
                base = f"{ours}_{part}/layer{s + 1}_{i}_{part}"
                add(f"{base}_conv", (conv,), lambda w, c=conv: {"kernel": w[c]["kernel"]})
                add(f"{base}_norm", (conv, bn), lambda w, c=conv, b=bn: _fold_bn_into_frozen(w[c], w[b], eps))
    for k in (2, 3, 4, 5):
        add(f"fpn/fpn_inner{k}", (f"fpn_c{k}p{k}",), lambda w, k=k: w[f"fpn_c{k}p{k}"])
        add(f"fpn/fpn_layer{k}", (f"fpn_p{k}",), lambda w, k=k: w[f"fpn_p{k}"])
    add("rpn/head/rpn_conv", ("rpn_conv_shared",), lambda w: w["rpn_conv_shared"])
    add("rpn/head/rpn_cls_logits", ("rpn_class_raw",), lambda w: {
        "kernel": w["rpn_class_raw"]["kernel"][..., 1::2] - w["rpn_class_raw"]["kernel"][..., 0::2],
        "bias": w["rpn_class_raw"]["bias"][1::2] - w["rpn_class_raw"]["bias"][0::2]})
    add("rpn/head/rpn_bbox_pred", ("rpn_bbox_pred",), lambda w: w["rpn_bbox_pred"])

    def flat_fc(conv, bn):
        def make(w):
            folded = _fold_bn_into_conv(w[conv], w[bn])
            return {**folded, "kernel": folded["kernel"].reshape(-1, folded["kernel"].shape[-1])}
        return make

    add("roi_heads/box_head/fc6", ("mrcnn_class_conv1", "mrcnn_class_bn1"), flat_fc("mrcnn_class_conv1",
                                                                                    "mrcnn_class_bn1"))
    add("roi_heads/box_head/fc7", ("mrcnn_class_conv2", "mrcnn_class_bn2"), flat_fc("mrcnn_class_conv2",
                                                                                    "mrcnn_class_bn2"))
    add("roi_heads/box_head/cls_score", ("mrcnn_class_logits",), lambda w: w["mrcnn_class_logits"])
    add("roi_heads/box_head/bbox_pred", ("mrcnn_bbox_fc",), lambda w: w["mrcnn_bbox_fc"])
    if model.roi_heads.mask_head is not None:
        for i in range(1, len(model.roi_heads.mask_head.convs) + 1):
            conv, bn = f"mrcnn_mask_conv{i}", f"mrcnn_mask_bn{i}"
            add(f"roi_heads/mask_head/mask_fcn{i}", (conv, bn),
                lambda w, c=conv, b=bn: _fold_bn_into_conv(w[c], w[b]))
        add("roi_heads/mask_head/conv5_mask", ("mrcnn_mask_deconv",), lambda w: w["mrcnn_mask_deconv"])
        add("roi_heads/mask_head/mask_fcn_logits", ("mrcnn_mask",), lambda w: w["mrcnn_mask"])
    return table


def matterport_assignments(model: Any, weights: Keras2Weights, *, exclude: tuple[str, ...] = (),
                           by_name: bool = True) -> tuple[list[tuple[Any, np.ndarray]], list[str], list[str]]:
    """(variable, value) pairs for ``model`` from a matterport file, the weights excluded (their
    matterport layers named in ``exclude``) and the weights whose layers the file lacks.

    Raises CheckpointError naming the file and the layer on a shape mismatch, on a model that
    is not built with matterport's stage options, or (``by_name=False``) on a missing layer.
    """
    config = model.config
    if config.BOX_COORDINATES != "matterport" or config.ROI_POOLER != "crop_and_resize":
        raise CheckpointError(f"{weights.path} is a matterport Keras 2 file: build the model from "
                              "mrcnn.configs.MatterportConfig (or a subclass) to load it (docs/matterport.md)")
    table = matterport_sources(model)
    pairs, excluded, missing = [], [], []
    for v in model.weights:
        entry = table.get(v.path)
        if entry is None:
            raise CheckpointError(f"{weights.path}: this model's weight {v.path} has no matterport counterpart "
                                  "(a model built from MatterportConfig has none such)")
        sources, make = entry
        if any(s in exclude for s in sources):
            excluded.append(v.path)
            continue
        absent = [s for s in sources if s not in weights.layers]
        if absent:
            missing.append(v.path)
            continue
        try:
            value = np.asarray(make(weights.layers), np.float32)
        except (KeyError, ValueError) as exc:
            raise CheckpointError(f"{weights.path}: layer {sources[0]} cannot give {v.path} ({exc})") from exc
        if tuple(value.shape) != tuple(v.shape):
            raise CheckpointError(
                f"{weights.path}: layer {sources[0]} gives {v.path} the shape {tuple(value.shape)}, this model has "
                f"{tuple(v.shape)} (another NUM_CLASSES or BACKBONE?); pass exclude=[{sources[0]!r}] to keep it "
                "at its initialisation")
        pairs.append((v, value))
    if not by_name and missing:
        raise CheckpointError(f"{weights.path}: {len(missing)} weight(s) of this model are not in the file, e.g. "
                              f"{missing[:5]}; load with by_name=True to keep them as they are")
    if not pairs:
        raise CheckpointError(f"{weights.path}: no weight of this model matches the file (matched 0 of "
                              f"{len(model.weights)}); first names in the file: {list(weights.layers)[:5]}")
    return pairs, excluded, missing
