"""COCO-trained Mask R-CNN weights from torchvision and Detectron2 checkpoints.

::

    from mrcnn.checkpoint.convert import convert_torchvision, convert_detectron2
    convert_torchvision("maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth", "tv.weights.h5")
    convert_detectron2("model_final_f10217.pkl", "d2.weights.h5")

or ``mrcnn convert-weights --from torchvision|detectron2 CHECKPOINT --out FILE.weights.h5``
(its arguments are parsed in :mod:`mrcnn.cli`). The result loads into ``MaskRCNN(config)`` for the matching
preset (:class:`mrcnn.configs.TorchvisionCOCO`, :class:`mrcnn.configs.Detectron2COCO`).

Reading needs no PyTorch and is done by :mod:`mrcnn.checkpoint.foreign` (shared with the
ImageNet loader :mod:`mrcnn.checkpoint.imagenet` and ``mrcnn train --init``): a ``.pth`` (a zip
of ``data.pkl`` plus raw tensor storages) with a restricted unpickler that rebuilds
tensors as NumPy arrays after checking each against its storage; a Detectron2
``.pkl`` (a pickled dict of NumPy arrays, usually under ``"model"``) with one that
only accepts NumPy arrays and dicts. torch is never used for zip files; a legacy
pre-1.6 file is read with ``torch.load(weights_only=True)`` only on torch >= 2.6.

Strictness: the conversion is a table built from the Keras model, one entry per
Keras weight naming the source key it comes from. Every source tensor is used
exactly once or matches :data:`IGNORED` (``num_batches_tracked``, Detectron2's
``pixel_mean``/``pixel_std``/anchor buffers); a missing key, an unexpected key or a
shape mismatch raises :class:`ConversionError` naming the key.

Layout conversions (each done once, here or in :mod:`mrcnn.checkpoint.foreign`):

- conv kernels OIHW -> HWIO (grouped convs alike: [O, I/g, kh, kw] -> [kh, kw, I/g, O]);
- transposed conv kernels, torch [in, out, kh, kw] -> Keras Conv2DTranspose
  [kh, kw, out, in] (the same index permutation; no spatial flip: both frameworks
  define the transposed conv as the gradient of a cross-correlation);
- Linear [out, in] -> Dense [in, out]; for the first box-head FC layer the input
  index is permuted from torch's flatten order (c, h, w) to Keras' (h, w, c);
- box deltas: torch (dx, dy, dw, dh) per anchor / per class -> (dy, dx, dh, dw);
- Detectron2 class order: background is the last class of ``cls_score`` and has
  no box-regression or mask entry; here background is class 0, so the logits are
  rotated and background gets zero box deltas and a zero mask-logit channel
  (never used at inference). Class-agnostic Detectron2 box/mask predictors
  (4 outputs / 1 mask) are tiled to every class.

Detectron2's BGR input and MSRA stride-in-1x1 are not weight conversions: the
preset sets ``INPUT_CHANNEL_ORDER="BGR"`` and ``STRIDE_IN_1X1=True``.
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from mrcnn.checkpoint.foreign import (
    BACKBONE_PREFIX,
    NORM_FIELDS,
    SOURCES,
    CheckpointError,
    backbone_key,
    conv_kernel,
    conv_transpose_kernel,
    dense_kernel,
    read_checkpoint,
)
from mrcnn.config import Config

__all__ = [
    "IGNORED", "SOURCES", "ConversionError", "background_last_to_first", "conv_kernel", "conv_transpose_kernel",
    "VARIANTS", "checkpoint_variant", "convert", "convert_detectron2", "convert_state_dict", "convert_torchvision",
    "dense_kernel", "flatten_chw_to_hwc", "preset_for", "read_checkpoint", "xy_to_yx_deltas",
]

# Source tensors that have no Keras counterpart and are skipped on purpose.
IGNORED: dict[str, tuple[str, ...]] = {
    "torchvision": ("*num_batches_tracked",),
    "detectron2": (
        "*num_batches_tracked",
        "pixel_mean",  # the preset's MEAN_PIXEL / STD_PIXEL (checked when present)
        "pixel_std",
        "proposal_generator.anchor_generator.cell_anchors.*",  # generated from the Config
        "anchor_generator.cell_anchors.*",
    ),
}

# A checkpoint that cannot be read or does not fit the model; the message names the key.
ConversionError = CheckpointError


# ----- layout conversions ----------------------------------------------------------------------
def flatten_chw_to_hwc(w: np.ndarray, channels: int, height: int, width: int) -> np.ndarray:
    """Linear weight [out, C*H*W] over a (c, h, w)-flattened input -> Dense kernel [H*W*C, out]
    over an (h, w, c)-flattened one."""
    out = w.shape[0]
    if w.shape[1] != channels * height * width:
        raise ValueError(f"expected {channels * height * width} inputs, got {w.shape[1]}")
    w = w.reshape(out, channels, height, width).transpose(2, 3, 1, 0)
    return np.ascontiguousarray(w.reshape(height * width * channels, out))


def xy_to_yx_deltas(x: np.ndarray) -> np.ndarray:
    """Reorder the leading axis, groups of 4 (dx, dy, dw, dh) -> (dy, dx, dh, dw)."""
    if x.shape[0] % 4:
        raise ValueError(f"leading axis {x.shape[0]} is not a multiple of 4")
    index = (np.arange(x.shape[0]).reshape(-1, 4)[:, [1, 0, 3, 2]]).reshape(-1)
    return x[index]


def background_last_to_first(x: np.ndarray) -> np.ndarray:
    """Rotate the leading (class) axis: Detectron2's [fg_1..fg_K, bg] -> [bg, fg_1..fg_K]."""
    return np.concatenate([x[-1:], x[:-1]], axis=0)


def _per_class_with_background(x: np.ndarray, num_classes: int, group: int) -> np.ndarray:
    """Detectron2 per-foreground-class rows (or one class-agnostic group) -> num_classes groups,
    background (class 0) zero. Leading axis: groups of ``group`` rows."""
    fg = num_classes - 1
    groups = x.shape[0] // group
    if groups == 1 and fg != 1:  # class-agnostic: one group for every class
        x = np.concatenate([x] * fg, axis=0)
    zeros = np.zeros((group,) + x.shape[1:], x.dtype)
    return np.concatenate([zeros, x], axis=0)


# ----- the conversion table --------------------------------------------------------------------
@dataclass
class _Entry:
    variable: Any  # the Keras variable
    target: str  # "layer/weight" for messages
    key: str  # source key
    transform: Callable[[np.ndarray], np.ndarray]
    expect: Callable[[tuple[int, ...]], str | None] | None = None  # source-shape check
    predictor: str | None = None  # "box"/"mask": class-specific, re-initialised when fine-tuning


# Where each stage lives on the model (tried in order: the stage-object layout first, the
# older flat attributes second), so the table follows refactors of MaskRCNN.
_COMPONENTS: dict[str, tuple[str, ...]] = {
    "backbone": ("backbone",),
    "fpn": ("fpn",),
    "rpn_head": ("rpn.head", "rpn_head"),
    "box_head": ("roi_heads.box_head", "box_head"),
    "mask_head": ("roi_heads.mask_head", "mask_head"),
    "keypoint_head": ("roi_heads.keypoint_head", "keypoint_head"),
}


def component(model, name: str):
    """The model's stage ``name`` (a key of :data:`_COMPONENTS`), None when the model has none."""
    for path in _COMPONENTS[name]:
        obj = model
        for attr in path.split("."):
            obj = getattr(obj, attr, None)
            if obj is None:
                break
        if obj is not None:
            return obj
    return None


def class_specific_layers(model) -> dict[str, list[Any]]:
    """The layers whose outputs are per class (or per keypoint): box ``cls_score``/``bbox_pred``,
    mask ``logits``, keypoint ``deconv`` (the keypoint logits); re-initialised when fine-tuning
    to other classes. {"box": [...], "mask": [...], "keypoint": [...]} (empty for a missing head)."""
    box, mask, kp = (component(model, n) for n in ("box_head", "mask_head", "keypoint_head"))
    return {
        "box": [box.cls_score, box.bbox_pred] if box is not None else [],
        "mask": [mask.logits] if mask is not None else [],
        "keypoint": [kp.deconv] if kp is not None else [],
    }


def _layers_by_name(component) -> dict[str, Any]:
    return {layer.name: layer for layer in component._flatten_layers(include_self=False, recursive=True)}


def _get_var(layer, name: str):
    if name == "kernel":
        return layer.kernel
    if name == "bias":
        if getattr(layer, "bias", None) is None:
            raise ConversionError(f"Keras layer {layer.name} has no bias")
        return layer.bias
    return getattr(layer, name)


def _build_table(model, source: str, state: dict[str, np.ndarray]) -> list[_Entry]:
    c = model.config
    tv = source == "torchvision"
    entries: list[_Entry] = []

    predictors = {id(layer): group for group, layers in class_specific_layers(model).items() for layer in layers}

    def add(layer, weight: str, key: str, transform=lambda a: a, expect=None):
        entries.append(_Entry(_get_var(layer, weight), f"{layer.name}.{weight}", key, transform, expect,
                              predictors.get(id(layer))))

    def add_conv(layer, prefix: str, kernel=conv_kernel, transform_out=None):
        t = transform_out or (lambda a: a)
        add(layer, "kernel", f"{prefix}.weight", lambda a: kernel(t(a)))
        if getattr(layer, "bias", None) is not None:
            add(layer, "bias", f"{prefix}.bias", t)

    def add_norm(layer, prefix: str):
        # BatchNorm / FrozenBatchNorm / RoIBatchNorm: 4 fields; GroupNorm: weight and bias only.
        fields = NORM_FIELDS[:2] if isinstance(layer, keras.layers.GroupNormalization) else NORM_FIELDS
        for src_field, keras_field in fields:
            add(layer, keras_field, f"{prefix}.{src_field}")

    def add_dense(layer, prefix: str, kernel_fn=None, transform_out=None):
        t = transform_out or (lambda a: a)
        add(layer, "kernel", f"{prefix}.weight", lambda a: (kernel_fn or dense_kernel)(t(a)))
        add(layer, "bias", f"{prefix}.bias", t)

    # Backbone: convs (no bias) and norms.
    if c.BACKBONE_NORM == "gn":
        raise ConversionError("BACKBONE_NORM='gn': the checkpoint's batch-norm statistics need "
                              "BACKBONE_NORM='frozen_bn' (or 'bn' / 'syncbn')")
    for name, layer in sorted(_layers_by_name(component(model, "backbone")).items()):
        prefix = backbone_key(name, source)
        if prefix is None:
            continue
        prefix = BACKBONE_PREFIX[source] + prefix
        if name.endswith("_conv"):
            add(layer, "kernel", f"{prefix}.weight", conv_kernel)
        else:
            add_norm(layer, prefix)

    # FPN (v2 / LSJ: each conv without bias, followed by a norm: torchvision's
    # Conv2dNormActivation index 1, Detectron2's Conv2d(norm=...) ".norm").
    fpn = component(model, "fpn")
    lateral_norms = getattr(fpn, "lateral_norms", [None] * 4)
    output_norms = getattr(fpn, "output_norms", [None] * 4)
    for i, (lateral, output) in enumerate(zip(fpn.lateral, fpn.output_convs)):
        level = i + 2
        inner = f"backbone.fpn.inner_blocks.{i}" if tv else f"backbone.fpn_lateral{level}"
        outer = f"backbone.fpn.layer_blocks.{i}" if tv else f"backbone.fpn_output{level}"
        for conv, norm, prefix in ((lateral, lateral_norms[i], inner), (output, output_norms[i], outer)):
            add_conv(conv, f"{prefix}.0" if tv else prefix)
            if norm is not None:
                add_norm(norm, f"{prefix}.1" if tv else f"{prefix}.norm")

    # RPN: deltas (dx, dy, dw, dh) per anchor -> (dy, dx, dh, dw). Two convs (v2 / LSJ):
    # torchvision conv.0.0 / conv.1.0, Detectron2 conv.conv0 / conv.conv1 (one: "conv").
    rpn = component(model, "rpn_head")
    base = "rpn.head" if tv else "proposal_generator.rpn_head"
    rpn_convs = [rpn.conv, *getattr(rpn, "extra_convs", [])]
    for i, conv in enumerate(rpn_convs):
        if tv:
            add_conv(conv, f"{base}.conv.{i}.0")
        else:
            add_conv(conv, f"{base}.conv.conv{i}" if len(rpn_convs) > 1 else f"{base}.conv")
    add_conv(rpn.cls_logits, f"{base}.cls_logits" if tv else f"{base}.objectness_logits")
    add_conv(rpn.bbox_pred, f"{base}.bbox_pred" if tv else f"{base}.anchor_deltas",
             transform_out=xy_to_yx_deltas)

    # Box head: fc6 input flatten order (c, h, w) -> (h, w, c).
    box = component(model, "box_head")
    pool, channels = c.POOL_SIZE, c.FPN_CHANNELS
    if hasattr(box, "fc7"):  # "2fc"
        add_dense(box.fc6, "roi_heads.box_head.fc6" if tv else "roi_heads.box_head.fc1",
                  kernel_fn=lambda a: flatten_chw_to_hwc(a, channels, pool, pool))
        add_dense(box.fc7, "roi_heads.box_head.fc7" if tv else "roi_heads.box_head.fc2")
    else:  # "4conv1fc": torchvision Sequential(Conv2dNormActivation x4, Flatten, Linear, ReLU)
        for i, (conv, norm) in enumerate(zip(box.convs, box.norms)):
            prefix = f"roi_heads.box_head.{i}" if tv else f"roi_heads.box_head.conv{i + 1}"
            add_conv(conv, f"{prefix}.0" if tv else prefix)
            if norm is not None:
                add_norm(norm, f"{prefix}.1" if tv else f"{prefix}.norm")
        conv_channels = box.conv_channels
        add_dense(box.fc6, f"roi_heads.box_head.{len(box.convs) + 1}" if tv else "roi_heads.box_head.fc1",
                  kernel_fn=lambda a: flatten_chw_to_hwc(a, conv_channels, pool, pool))
    k = c.NUM_CLASSES
    if tv:
        add_dense(box.cls_score, "roi_heads.box_predictor.cls_score")
        add_dense(box.bbox_pred, "roi_heads.box_predictor.bbox_pred", transform_out=xy_to_yx_deltas)
    else:
        def expect_rows(valid: tuple[int, ...], what: str):
            def check(shape):
                return None if shape[0] in valid else f"{shape[0]} {what}, expected one of {valid}"
            return check

        add(box.cls_score, "kernel", "roi_heads.box_predictor.cls_score.weight",
            lambda a: dense_kernel(background_last_to_first(a)))
        add(box.cls_score, "bias", "roi_heads.box_predictor.cls_score.bias", background_last_to_first)
        d2_box = lambda a: _per_class_with_background(xy_to_yx_deltas(a), k, 4)  # noqa: E731
        rows = expect_rows((4 * (k - 1), 4), "box-regression outputs (4 x foreground classes or "
                           "4 class-agnostic)")
        add(box.bbox_pred, "kernel", "roi_heads.box_predictor.bbox_pred.weight",
            lambda a: dense_kernel(d2_box(a)), rows)
        add(box.bbox_pred, "bias", "roi_heads.box_predictor.bbox_pred.bias", d2_box, rows)

    # Mask head (a model without one takes no mask weights).
    mask = component(model, "mask_head")
    if mask is None:
        return entries
    for i, (conv, norm) in enumerate(zip(mask.convs, getattr(mask, "norms", [None] * len(mask.convs)))):
        prefix = f"roi_heads.mask_head.{i}" if tv else f"roi_heads.mask_head.mask_fcn{i + 1}"
        add_conv(conv, f"{prefix}.0" if tv else prefix)
        if norm is not None:
            add_norm(norm, f"{prefix}.1" if tv else f"{prefix}.norm")
    add_conv(mask.deconv, "roi_heads.mask_predictor.conv5_mask" if tv else "roi_heads.mask_head.deconv",
             kernel=conv_transpose_kernel)
    if tv:
        add_conv(mask.logits, "roi_heads.mask_predictor.mask_fcn_logits")
    else:
        d2_mask = lambda a: _per_class_with_background(a, k, 1)  # noqa: E731
        rows = expect_rows((k - 1, 1), "mask outputs (foreground classes or 1 class-agnostic)")
        add(mask.logits, "kernel", "roi_heads.mask_head.predictor.weight",
            lambda a: conv_kernel(d2_mask(a)), rows)
        add(mask.logits, "bias", "roi_heads.mask_head.predictor.bias", d2_mask, rows)
    return entries


# torchvision < 0.13 checkpoints (e.g. the published maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth)
# use the pre-Conv2dNormActivation names; torchvision itself upgrades them on load.
_TV_OLD_NAMES = (
    (re.compile(r"^backbone\.fpn\.(inner|layer)_blocks\.(\d)\.(weight|bias)$"), r"backbone.fpn.\1_blocks.\2.0.\3"),
    (re.compile(r"^rpn\.head\.conv\.(weight|bias)$"), r"rpn.head.conv.0.0.\1"),
    (re.compile(r"^roi_heads\.mask_head\.mask_fcn(\d)\.(weight|bias)$"),
     lambda m: f"roi_heads.mask_head.{int(m[1]) - 1}.0.{m[2]}"),
)


def _normalise_keys(state: dict[str, np.ndarray], source: str, path: str) -> dict[str, tuple[str, np.ndarray]]:
    """{canonical key: (key as in the file, array)}; strips "module." and upgrades old names."""
    out: dict[str, tuple[str, np.ndarray]] = {}
    for original, value in state.items():
        key = original[len("module."):] if original.startswith("module.") else original
        if source == "torchvision":
            for pattern, repl in _TV_OLD_NAMES:
                key = pattern.sub(repl, key)
        if key in out:
            raise ConversionError(f"{path}: keys {out[key][0]!r} and {original!r} name the same tensor")
        out[key] = (original, value)
    return out


def _is_ignored(key: str, source: str) -> bool:
    return any(fnmatch.fnmatchcase(key, pattern) for pattern in IGNORED[source])


def _check_detectron2_pixel_stats(state, config: Config, path: str) -> None:
    for key, field in (("pixel_mean", "MEAN_PIXEL"), ("pixel_std", "STD_PIXEL")):
        if key in state:
            value = np.asarray(state[key][1], np.float64).reshape(-1)
            expected = np.asarray(getattr(config, field), np.float64)
            if value.shape != expected.shape or not np.allclose(value, expected, atol=1e-3):
                raise ConversionError(
                    f"{path}: {key}={value.tolist()} but the config's {field}={expected.tolist()} "
                    f"(in INPUT_CHANNEL_ORDER={config.INPUT_CHANNEL_ORDER}); use a config that matches"
                )


# ----- which model a checkpoint holds --------------------------------------------------------------
# (source, variant) -> (preset name in mrcnn.configs.PRESETS, what it is)
VARIANTS: dict[tuple[str, str], tuple[str, str]] = {
    ("torchvision", "v1"): ("torchvision", "torchvision v1 (maskrcnn_resnet50_fpn)"),
    ("torchvision", "v2"): ("torchvision_v2", "torchvision v2 (maskrcnn_resnet50_fpn_v2)"),
    ("detectron2", "fpn"): ("detectron2", "Detectron2 R-FPN (2fc box head, frozen BN)"),
    ("detectron2", "lsj"): ("detectron2_lsj", "Detectron2 new baselines LSJ (4conv1fc, SyncBN)"),
}


def _keys(state) -> set[str]:
    return {k[len("module."):] if k.startswith("module.") else k for k in state}


def checkpoint_variant(state: dict[str, Any], source: str) -> str:
    """Which architecture a checkpoint holds, from its key names: "v1" / "v2" for torchvision
    (v2: the conv box head ``roi_heads.box_head.0.0.weight``), "fpn" / "lsj" for Detectron2
    (lsj: ``roi_heads.box_head.conv1.weight``); see :data:`VARIANTS`."""
    keys = _keys(state)
    if source == "torchvision":
        return "v2" if "roi_heads.box_head.0.0.weight" in keys else "v1"
    if source == "detectron2":
        return "lsj" if "roi_heads.box_head.conv1.weight" in keys else "fpn"
    raise ValueError(f"source must be one of {SOURCES}, got {source!r}")


def checkpoint_depth(state: dict[str, Any], source: str) -> str:
    """"resnet101" when the third residual stage has 23 blocks, else "resnet50"."""
    keys = _keys(state)
    key = BACKBONE_PREFIX[source] + ("layer3.22.conv1.weight" if source == "torchvision" else "res4.22.conv1.weight")
    return "resnet101" if key in keys else "resnet50"


def preset_for(state: dict[str, Any], source: str) -> Config:
    """The :mod:`mrcnn.configs` preset matching a checkpoint (variant and ResNet depth)."""
    from mrcnn.configs import PRESETS

    preset = PRESETS[VARIANTS[(source, checkpoint_variant(state, source))][0]]
    depth = checkpoint_depth(state, source)
    return preset() if depth == preset.BACKBONE else preset(BACKBONE=depth)


def _check_architecture(named: dict, source: str, config: Config, path: str) -> None:
    """A one-line error when the checkpoint's variant is not the model's (before any key error)."""
    variant = checkpoint_variant(named, source)
    conv_box = variant in ("v2", "lsj")
    if conv_box != (config.BOX_HEAD == "4conv1fc"):
        preset, what = VARIANTS[(source, variant)]
        from mrcnn.configs import PRESETS

        raise ConversionError(
            f"{path}: this is a {what} checkpoint but the config has BOX_HEAD={config.BOX_HEAD!r}; "
            f"use a config derived from mrcnn.configs:{PRESETS[preset].__name__}")


# Source keys of heads a fine-tuned model may lack (ignored, and reported, with fine_tune=True).
_HEAD_PREFIXES = {
    "mask_head": ("roi_heads.mask_head.", "roi_heads.mask_predictor."),
    "keypoint_head": ("roi_heads.keypoint_head.", "roi_heads.keypoint_predictor."),
}


def convert_state_dict(model, state: dict[str, np.ndarray], source: str, path: str = "<state>",
                       fine_tune: bool = False) -> dict:
    """Assign a source state dict to ``model`` (a built :class:`~mrcnn.model.MaskRCNN`).

    Strict by default: a missing or unexpected key, a shape mismatch, or a Keras
    weight left without a value raises :class:`ConversionError` naming it, and
    nothing is assigned.

    ``fine_tune=True`` (a COCO start for another dataset, ``mrcnn train --init coco:FILE``)
    relaxes exactly three things: the class-specific predictors (box ``cls_score`` +
    ``bbox_pred`` as one group, the mask logits as another; see
    :func:`class_specific_layers`) are left at their initialisation when the
    checkpoint's class count does not fit the model's; a head the model lacks (mask,
    keypoints) has its keys ignored; and the keypoint head, which no source here
    provides, keeps its initialisation. Everything else stays strict.

    Returns {"assigned": number of Keras weights set, "ignored": source keys skipped,
    "keys": source keys used, "reinitialised": Keras weight paths left at their
    initialisation, "skipped_keys": source keys of the predictors not loaded}.
    """
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    named = _normalise_keys(state, source, path)
    _check_architecture(named, source, model.config, path)
    if source == "detectron2":
        _check_detectron2_pixel_stats(named, model.config, path)
    entries = _build_table(model, source, state)

    # Check everything before assigning anything.
    converted: dict[int, np.ndarray] = {}
    failed_groups: dict[str, str] = {}
    used: set[str] = set()
    for i, e in enumerate(entries):
        try:
            if e.key not in named:
                raise ConversionError(f"{path}: missing key {e.key!r} (needed for Keras weight {e.target})")
            if e.key in used:
                raise ConversionError(f"{path}: key {e.key!r} would be used twice")
            used.add(e.key)
            original, array = named[e.key]
            if e.expect is not None and (why := e.expect(array.shape)):
                raise ConversionError(f"{path}: {original!r} has shape {array.shape}: {why}")
            try:
                value = np.asarray(e.transform(np.asarray(array, np.float32)), np.float32)
            except ValueError as exc:
                raise ConversionError(f"{path}: {original!r} with shape {array.shape}: {exc}") from exc
            if tuple(value.shape) != tuple(e.variable.shape):
                raise ConversionError(
                    f"{path}: shape mismatch for {original!r}: {array.shape} in the checkpoint gives "
                    f"{value.shape} but Keras weight {e.target} is {tuple(e.variable.shape)} "
                    "(wrong NUM_CLASSES, backbone or head sizes in the config?)"
                )
            converted[i] = value
        except ConversionError:
            if not (fine_tune and e.predictor):
                raise
            shape = tuple(named[e.key][1].shape) if e.key in named else "absent"
            failed_groups.setdefault(e.predictor, f"{e.key} is {shape} in the checkpoint, "
                                                  f"{e.target} is {tuple(e.variable.shape)} in this model")
    keep = [i for i in converted if entries[i].predictor not in failed_groups]
    skipped_keys = sorted(e.key for e in entries if e.predictor in failed_groups)

    lacking = [h for h in _HEAD_PREFIXES if fine_tune and component(model, h) is None]
    head_keys = {k for k in named if any(k.startswith(p) for h in lacking for p in _HEAD_PREFIXES[h])}
    extra = sorted(named[k][0] for k in named
                   if k not in used and k not in head_keys and not _is_ignored(k, source))
    if extra:
        raise ConversionError(
            f"{path}: {len(extra)} unexpected key(s) with no place in the model, e.g. {extra[:5]} "
            "(a different architecture, or the wrong --from?)"
        )
    assigned = {id(entries[i].variable) for i in keep}
    planned = {id(e.variable) for e in entries}
    keypoint = component(model, "keypoint_head")
    reinit_ok = {id(v) for v in keypoint.weights} if (fine_tune and keypoint is not None) else set()
    unassigned = [v.path for v in model.weights if id(v) not in planned and id(v) not in reinit_ok]
    if unassigned:
        raise ConversionError(f"{path}: no value for Keras weights {unassigned[:5]} "
                              f"({len(unassigned)} in all): the model has parts the checkpoint lacks")
    for i in keep:
        entries[i].variable.assign(converted[i])
    ignored = sorted(named[k][0] for k in named if k not in used)
    return {"assigned": len(keep), "ignored": ignored, "keys": sorted(used - set(skipped_keys)),
            "reinitialised": [v.path for v in model.weights if id(v) not in assigned],
            "variables": [entries[i].variable for i in keep],
            "skipped_keys": skipped_keys, "why": failed_groups}


def convert(path: str | os.PathLike, out_weights_path: str | os.PathLike, source: str,
            config: Config | None = None) -> dict:
    """Read ``path``, build ``MaskRCNN(config or preset)``, assign, save ``out_weights_path``.

    Returns the report of :func:`convert_state_dict` plus "out" and "config".
    """
    from mrcnn.model import MaskRCNN

    if source == "matterport":
        return _convert_matterport(path, out_weights_path, config)
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    out = os.fspath(out_weights_path)
    if not out.endswith(".weights.h5"):
        raise ValueError(f"the output file name must end in .weights.h5 (Keras' rule), got {out!r}")
    state = read_checkpoint(path)
    variant = checkpoint_variant(state, source)
    config = config if config is not None else preset_for(state, source)
    model = MaskRCNN(config)
    report = convert_state_dict(model, state, source, os.fspath(path))
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    model.save_weights(out)
    return {**report, "out": out, "config": type(config).__name__, "variant": variant,
            "model": f"{VARIANTS[(source, variant)][1]}, {config.BACKBONE}"}


def _convert_matterport(path, out_weights_path, config: Config | None) -> dict:
    """matterport's Keras 2 ``.h5`` -> ``.weights.h5`` of a MatterportConfig model (backbone depth and
    NUM_CLASSES from the file unless ``config`` is given); the report as :func:`convert`'s."""
    from mrcnn.checkpoint.keras2 import matterport_assignments, matterport_config_for, read_keras2
    from mrcnn.model import MaskRCNN

    out = os.fspath(out_weights_path)
    if not out.endswith(".weights.h5"):
        raise ValueError(f"the output file name must end in .weights.h5 (Keras' rule), got {out!r}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file not found: {path}")
    weights = read_keras2(path)
    config = config if config is not None else matterport_config_for(weights)
    model = MaskRCNN(config)
    pairs, _, missing = matterport_assignments(model, weights, by_name=False)
    for v, value in pairs:
        v.assign(value)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    model.save_weights(out)
    keys = sorted(f"{layer}/{field}" for layer, fields in weights.layers.items() for field in fields)
    return {"assigned": len(pairs), "ignored": [], "keys": keys, "reinitialised": missing,
            "out": out, "config": type(config).__name__, "variant": "matterport",
            "model": f"matterport Mask R-CNN (Keras 2), {config.BACKBONE}, NUM_CLASSES={config.NUM_CLASSES}"}


def convert_torchvision(path, out_weights_path, config: Config | None = None) -> dict:
    """torchvision ``maskrcnn_resnet50_fpn`` or ``_v2`` state dict (.pth) -> Keras ``.weights.h5``.

    ``config`` defaults to :class:`mrcnn.configs.TorchvisionCOCO` (v1) or
    :class:`~mrcnn.configs.TorchvisionCOCOv2` (v2), recognised from the keys; for a model
    fine-tuned with another number of classes pass a config with that NUM_CLASSES.
    """
    return convert(path, out_weights_path, "torchvision", config)


def convert_detectron2(path, out_weights_path, config: Config | None = None) -> dict:
    """Detectron2 R50/R101-FPN Mask R-CNN (``model_final_*.pkl`` or a training ``.pth``) ->
    Keras ``.weights.h5``; ``config`` defaults to :class:`mrcnn.configs.Detectron2COCO`, or
    :class:`~mrcnn.configs.Detectron2LSJ` for a new-baselines LSJ checkpoint (resnet101 when
    the checkpoint is R101)."""
    return convert(path, out_weights_path, "detectron2", config)
