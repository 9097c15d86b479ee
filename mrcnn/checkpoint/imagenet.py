"""ImageNet-pretrained backbone weights from a local file (no PyTorch needed).

::

    from mrcnn.checkpoint.imagenet import load_imagenet_backbone
    report = load_imagenet_backbone(model, "resnet50-0676ba61.pth")

Supported file: a torchvision ResNet / ResNeXt ``state_dict`` saved by
``torch.save`` in the zip format (PyTorch >= 1.6, what download.pytorch.org
serves today), e.g. ``resnet50-0676ba61.pth``. It is read with
:func:`mrcnn.checkpoint.foreign.read_pth`, a small unpickler that rebuilds tensors as
NumPy arrays after checking them against their storages and refuses every other
global, so no torch install is needed and the file cannot run code.
:func:`load_backbone_state` takes any state dict (torchvision or Detectron2 key
names, classification or detection checkpoint).

Not supported (a clear error says so): the legacy pre-1.6 torch format (re-save
it with a recent ``torch.save``), and keras.applications' ResNet50 ``.h5``
(MSRA "stride in 1x1" weights with conv biases and Caffe BGR preprocessing:
loading them would need bias folding, the BGR flip and a different
MEAN/STD_PIXEL; use the torchvision file instead).

Name mapping (torchvision -> ``model.backbone`` layers, see
``mrcnn/layers/backbone.py``; defined once, in :func:`mrcnn.checkpoint.foreign.backbone_key`)::

    conv1.weight                      -> conv1_conv            kernel (OIHW -> HWIO)
    bn1.{weight,bias,running_mean,running_var}
                                      -> conv1_norm            gamma, beta, moving_mean, moving_variance
    layer{i}.{b}.conv{k}.weight       -> layer{i}_{b}_{k}_conv
    layer{i}.{b}.bn{k}.*              -> layer{i}_{b}_{k}_norm
    layer{i}.{b}.downsample.0.weight  -> layer{i}_{b}_downsample_conv
    layer{i}.{b}.downsample.1.*       -> layer{i}_{b}_downsample_norm
    fc.*, *.num_batches_tracked       -> ignored

Prefixes ``module.`` (DataParallel), ``backbone.body.`` (torchvision detection
checkpoints) and ``backbone.`` are stripped first.
"""

from __future__ import annotations

import hashlib
import os
import re
import urllib.error
from pathlib import Path
from typing import Any

import numpy as np

from mrcnn.checkpoint.foreign import (
    NORM_FIELDS,
    backbone_field,
    backbone_key,
    conv_kernel,
    read_pth,
    source_to_keras_name,
    strip_prefixes,
)
from mrcnn.fileio import download_part

__all__ = [
    "TORCHVISION_URLS", "ImageNetWeightsUnavailable", "download_imagenet_weights", "load_backbone_state",
    "load_imagenet_backbone", "read_pth", "torchvision_to_keras_name",
]

# torchvision's ImageNet checkpoints (IMAGENET1K_V1, the ones its Mask R-CNN
# backbone starts from). The 8 hex digits in each name are the start of the
# file's SHA-256.
TORCHVISION_URLS: dict[str, str] = {
    "resnet18": "https://download.pytorch.org/models/resnet18-f37072fd.pth",
    "resnet34": "https://download.pytorch.org/models/resnet34-b627a593.pth",
    "resnet50": "https://download.pytorch.org/models/resnet50-0676ba61.pth",
    "resnet101": "https://download.pytorch.org/models/resnet101-63fe2227.pth",
    "resnext101_32x8d": "https://download.pytorch.org/models/resnext101_32x8d-8ba56ff5.pth",
}

DEFAULT_CACHE_DIR = Path(os.environ.get("MRCNN_WEIGHTS_DIR", Path.home() / ".cache" / "mrcnn" / "weights"))


class ImageNetWeightsUnavailable(RuntimeError):
    """The ImageNet weights file could not be downloaded (no network) or is not there."""


# ----- loading -----------------------------------------------------------------------------------
def torchvision_to_keras_name(key: str) -> tuple[str, str] | None:
    """torchvision state_dict key -> (backbone layer name, weight name), None if ignored.

    The inverse of :func:`mrcnn.checkpoint.foreign.backbone_key` (the one key map).

    >>> torchvision_to_keras_name("layer2.0.downsample.1.running_var")
    ('layer2_0_downsample_norm', 'moving_variance')
    """
    return source_to_keras_name(key, "torchvision")


def _backbone_layers(backbone) -> dict[str, Any]:
    layers = {}
    for layer in backbone._flatten_layers(include_self=False, recursive=True):
        if backbone_key(layer.name) is not None:
            layers[layer.name] = layer
    return layers


def load_backbone_state(model, state: dict[str, np.ndarray], source: str = "torchvision",
                        path: str = "<state>", strict: bool = True) -> dict[str, Any]:
    """Assign the ResNet weights of a state dict (classification or detection checkpoint,
    torchvision or Detectron2 key names) to ``model.backbone``.

    Every backbone conv/norm weight is looked up by :func:`mrcnn.checkpoint.foreign.backbone_key`
    (prefixes ``module.``, ``backbone.body.``, ``backbone.bottom_up.`` are stripped first);
    conv kernels go OIHW -> HWIO. Nothing is assigned unless everything fits.

    Returns:
        {"loaded": number of arrays assigned, "weights": their "layer.field" names,
        "variables": the Keras variables assigned, "ignored": checkpoint keys not used (fc, num_batches_tracked, heads...),
        "missing": backbone weights not in the file (only when ``strict=False``)}.

    Raises:
        ValueError naming the key or layer: a shape mismatch, a GroupNorm backbone, a
        missing weight (strict), backbone keys the model has no layer for.
    """
    backbone = getattr(model, "backbone", model)
    if getattr(backbone, "norm", None) == "gn":
        raise ValueError(f"{path}: ImageNet BN statistics cannot go into a GroupNorm backbone: use "
                         "BACKBONE_NORM='frozen_bn' (or 'bn')")
    if source == "torchvision" and getattr(backbone, "stride_in_1x1", False):
        raise ValueError(f"{path}: torchvision checkpoints put the stride on the 3x3 conv: set STRIDE_IN_1X1=False")
    named: dict[str, tuple[str, np.ndarray]] = {}
    for original, value in state.items():
        named.setdefault(strip_prefixes(original), (original, value))
    layers = _backbone_layers(backbone)

    used: set[str] = set()
    values: list[tuple[Any, np.ndarray, str]] = []
    missing: list[str] = []
    for name, layer in sorted(layers.items()):
        prefix = backbone_key(name, source)
        fields = ("kernel",) if name.endswith("_conv") else tuple(k for _, k in NORM_FIELDS)
        for field in fields:
            variable = getattr(layer, field, None)
            if variable is None:
                continue
            key = f"{prefix}.{backbone_field(name, field)}"
            if key not in named:
                missing.append(f"{name}.{field}")
                continue
            original, array = named[key]
            array = np.asarray(array, np.float32)
            if field == "kernel":
                if array.ndim != 4:
                    raise ValueError(f"{path}: {original!r} has shape {array.shape}, expected a 4-d conv weight")
                array = conv_kernel(array)
            if tuple(variable.shape) != array.shape:
                raise ValueError(
                    f"{path}: {original!r} has shape {array.shape} after conversion but {name}.{field} is "
                    f"{tuple(variable.shape)} (BACKBONE_BASE_WIDTH must be 64 and the architecture must match)"
                )
            used.add(key)
            values.append((variable, array, f"{name}.{field}"))
    if strict and missing:
        raise ValueError(f"{path}: no value for {len(missing)} backbone weights, e.g. {missing[:5]}")
    unplaced = sorted(orig for key, (orig, _) in named.items()
                      if key not in used and source_to_keras_name(key, source) is not None)
    if unplaced:
        raise ValueError(
            f"{path}: {len(unplaced)} backbone key(s), e.g. {unplaced[:3]}, have no layer in this backbone "
            f"({getattr(backbone, 'architecture', '?')}): wrong architecture?"
        )
    for variable, array, _ in values:
        variable.assign(array)
    ignored = sorted(orig for key, (orig, _) in named.items() if key not in used)
    return {"loaded": len(values), "weights": [w for _, _, w in values], "variables": [v for v, _, _ in values],
            "ignored": ignored, "missing": missing}


def load_imagenet_backbone(model, path: str | os.PathLike, strict: bool = True) -> dict[str, Any]:
    """Load a torchvision ImageNet ResNet checkpoint (local ``.pth``) into ``model.backbone``.

    Args:
        model: a :class:`~mrcnn.model.MaskRCNN` (anything with a ``backbone``
            attribute, or a ResNet layer itself). Its backbone must match the
            checkpoint: same architecture, ``BACKBONE_BASE_WIDTH=64``,
            ``STRIDE_IN_1X1=False`` and a BN-type norm ("frozen_bn" or "bn";
            GroupNorm has no place for running statistics).
        path: the ``.pth`` file.
        strict: raise if a backbone weight gets no value from the file.

    Returns:
        {"loaded": number of arrays assigned, "ignored": checkpoint keys not used
        (fc, num_batches_tracked, ...), "missing": backbone weights not in the file}.

    Raises:
        ValueError naming the layer on shape mismatches, a GroupNorm backbone, a
        missing weight (strict), or an unsupported file (.h5, legacy .pth).
    """
    path = os.fspath(path)
    if path.endswith((".h5", ".keras")):
        raise ValueError(
            f"{path!r}: keras.applications ResNet .h5 weights are not supported (MSRA stride-in-1x1 "
            "layout with conv biases and Caffe BGR inputs). Use torchvision's checkpoint, e.g. "
            f"{TORCHVISION_URLS['resnet50']}"
        )
    backbone = getattr(model, "backbone", model)
    if getattr(backbone, "norm", None) == "gn":  # before reading a large file
        raise ValueError("ImageNet BN statistics cannot go into a GroupNorm backbone: use "
                         "BACKBONE_NORM='frozen_bn' (or 'bn')")
    return load_backbone_state(model, read_pth(path), "torchvision", path, strict)


# ----- download -----------------------------------------------------------------------------------
def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _expected_hash_prefix(url: str) -> str | None:
    m = re.search(r"-([0-9a-f]{8,})\.pth$", url)
    return m[1] if m else None


def download_imagenet_weights(
    arch: str = "resnet50", dest: str | os.PathLike | None = None, timeout: float = 30.0
) -> Path:
    """Return a local copy of torchvision's ImageNet checkpoint for ``arch``, downloading it if needed.

    Args:
        arch: one of :data:`TORCHVISION_URLS`.
        dest: file to write (default ``$MRCNN_WEIGHTS_DIR`` or
            ``~/.cache/mrcnn/weights``, plus the URL's file name). An existing
            file is returned as is.
        timeout: seconds for the connection.

    Raises:
        ImageNetWeightsUnavailable: the download failed (e.g. no internet access),
            with the URL and where to put the file by hand.
        ValueError: unknown ``arch``, or a download whose SHA-256 does not match.
    """
    if arch not in TORCHVISION_URLS:
        raise ValueError(f"no ImageNet weights known for {arch!r}; choose one of {sorted(TORCHVISION_URLS)}")
    url = TORCHVISION_URLS[arch]
    dest = Path(dest) if dest is not None else DEFAULT_CACHE_DIR / url.rsplit("/", 1)[1]
    if dest.is_file():
        return dest
    try:
        tmp = download_part(url, dest, timeout)
    except (urllib.error.URLError, OSError, TimeoutError, ValueError) as exc:
        raise ImageNetWeightsUnavailable(
            f"Could not download the {arch} ImageNet weights from {url} ({exc}). This machine "
            f"probably has no internet access. On a machine that has, download that URL (e.g. "
            f"`curl -LO {url}`) and copy the file to {dest} (or anywhere, and pass its path: "
            f"`mrcnn train --init imagenet:FILE`, `--imagenet-weights FILE` / "
            f"load_imagenet_backbone(model, FILE)). No torch is needed to read it."
        ) from exc
    expected = _expected_hash_prefix(url)
    if expected and not _sha256(tmp).startswith(expected):
        tmp.unlink(missing_ok=True)
        raise ValueError(f"downloaded {url} but its SHA-256 does not start with {expected}: corrupt download")
    os.replace(tmp, dest)
    return dest
