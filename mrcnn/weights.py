"""ImageNet-pretrained backbone weights from a local file (no PyTorch needed).

::

    from mrcnn.weights import load_imagenet_backbone
    report = load_imagenet_backbone(model, "resnet50-0676ba61.pth")

Supported file: a torchvision ResNet / ResNeXt ``state_dict`` saved by
``torch.save`` in the zip format (PyTorch >= 1.6, what download.pytorch.org
serves today), e.g. ``resnet50-0676ba61.pth``. It is read with :func:`read_pth`,
a small unpickler that rebuilds tensors as NumPy arrays and refuses every other
global, so no torch install is needed and the file cannot run code.

Not supported (a clear error says so): the legacy pre-1.6 torch format (re-save
it with a recent ``torch.save``), and keras.applications' ResNet50 ``.h5``
(MSRA "stride in 1x1" weights with conv biases and Caffe BGR preprocessing:
loading them would need bias folding, the BGR flip and a different
MEAN/STD_PIXEL; use the torchvision file instead).

Name mapping (torchvision -> ``model.backbone`` layers, see
``mrcnn/layers/backbone.py``)::

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
import io
import os
import pickle
import re
import urllib.error
import urllib.request
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

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


# ----- reading .pth without torch ---------------------------------------------------------------
_STORAGE_DTYPES: dict[str, Any] = {
    "DoubleStorage": np.float64,
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "BFloat16Storage": "bfloat16",  # no NumPy dtype: widened to float32 when read
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
    "UntypedStorage": np.uint8,
}


class _StorageType:
    def __init__(self, name: str) -> None:
        self.name = name
        self.dtype = _STORAGE_DTYPES[name]


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    size = tuple(int(s) for s in size)
    stride = tuple(int(s) for s in stride)
    if not size:
        return np.array(storage[storage_offset])
    itemsize = storage.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage[storage_offset:], shape=size, strides=tuple(s * itemsize for s in stride)
    )
    return np.array(view)  # contiguous copy, independent of the storage


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *state):
    return data


def _rebuild_from_type_v2(func, new_type, args, state):
    return func(*args)


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): lambda storage, offset, size, stride: _rebuild_tensor_v2(
        storage, offset, size, stride),
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("torch.nn.parameter", "Parameter"): lambda data=None, requires_grad=True: data,
}


class _PthUnpickler(pickle.Unpickler):
    def __init__(self, file, archive: zipfile.ZipFile, prefix: str, byteorder: str, path: str):
        super().__init__(file)
        self._archive = archive
        self._prefix = prefix
        self._byteorder = byteorder
        self._path = path
        self._storages: dict[str, np.ndarray] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        if (module, name) in _ALLOWED_GLOBALS:
            return _ALLOWED_GLOBALS[(module, name)]
        raise pickle.UnpicklingError(
            f"{self._path}: refusing to load global {module}.{name} (only tensors, storages and "
            "dicts are read from a state_dict file)"
        )

    def persistent_load(self, pid: Any) -> np.ndarray:
        if not isinstance(pid, tuple) or not pid or pid[0] != "storage":
            raise pickle.UnpicklingError(f"{self._path}: unknown persistent id {pid!r}")
        _, storage_type, key, _location, _numel = pid
        key = str(key)
        if key not in self._storages:
            dtype = storage_type.dtype if isinstance(storage_type, _StorageType) else np.uint8
            try:
                raw = self._archive.read(f"{self._prefix}data/{key}")
            except KeyError as exc:
                raise ValueError(f"{self._path}: storage data/{key} missing from the archive") from exc
            if dtype == "bfloat16":
                bits = np.frombuffer(raw, dtype=np.dtype("<u2") if self._byteorder == "little" else ">u2")
                array = (bits.astype(np.uint32) << 16).view(np.float32)
            else:
                dt = np.dtype(dtype).newbyteorder("<" if self._byteorder == "little" else ">")
                array = np.frombuffer(raw, dtype=dt).astype(np.dtype(dtype), copy=False)
            self._storages[key] = array
        return self._storages[key]


def read_pth(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a ``torch.save``\\ d state_dict (zip format) into {name: np.ndarray}, without torch.

    A ``.pth`` of PyTorch >= 1.6 is a zip holding ``<root>/data.pkl`` (a pickle
    whose tensors point, through persistent ids ``("storage", type, key, ...)``,
    to raw little-endian storages ``<root>/data/<key>``), ``<root>/byteorder``
    and ``<root>/version``. Nested dicts ({"model": state_dict}, {"state_dict": ...})
    are unwrapped.

    Raises:
        FileNotFoundError, ValueError (not a zip .pth / legacy format / no tensors),
        pickle.UnpicklingError (a global other than tensors and dicts).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file {path!r} does not exist")
    if not zipfile.is_zipfile(path):
        raise ValueError(
            f"{path!r} is not a zip-format PyTorch checkpoint. The legacy (PyTorch < 1.6) format "
            "is not supported: re-save it with torch.save(torch.load(f), g) on a machine with torch."
        )
    with zipfile.ZipFile(path) as archive:
        pkl = [n for n in archive.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
        if not pkl:
            raise ValueError(f"{path!r}: zip without data.pkl, not a torch.save file")
        name = min(pkl, key=len)
        prefix = name[: -len("data.pkl")]
        byteorder = "little"
        if f"{prefix}byteorder" in archive.namelist():
            byteorder = archive.read(f"{prefix}byteorder").decode("ascii").strip() or "little"
        unpickler = _PthUnpickler(io.BytesIO(archive.read(name)), archive, prefix, byteorder, path)
        obj = unpickler.load()
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise ValueError(f"{path!r} holds a {type(obj).__name__}, not a state_dict")
    out = {str(k): v for k, v in obj.items() if isinstance(v, np.ndarray)}
    if not out:
        raise ValueError(f"{path!r}: no tensors found")
    return out


# ----- name mapping -------------------------------------------------------------------------------
_PREFIXES = ("module.", "backbone.body.", "backbone.")
_NORM_FIELDS = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_variance"}
_CONV_RE = re.compile(r"^(layer\d+)\.(\d+)\.conv(\d+)\.weight$")
_BN_RE = re.compile(r"^(layer\d+)\.(\d+)\.bn(\d+)\.(weight|bias|running_mean|running_var)$")
_DS_CONV_RE = re.compile(r"^(layer\d+)\.(\d+)\.downsample\.0\.weight$")
_DS_BN_RE = re.compile(r"^(layer\d+)\.(\d+)\.downsample\.1\.(weight|bias|running_mean|running_var)$")


def torchvision_to_keras_name(key: str) -> tuple[str, str] | None:
    """torchvision state_dict key -> (backbone layer name, weight name), None if ignored.

    >>> torchvision_to_keras_name("layer2.0.downsample.1.running_var")
    ('layer2_0_downsample_norm', 'moving_variance')
    """
    for p in _PREFIXES:
        if key.startswith(p):
            key = key[len(p):]
            break
    if key == "conv1.weight":
        return "conv1_conv", "kernel"
    if key.startswith("bn1.") and key[4:] in _NORM_FIELDS:
        return "conv1_norm", _NORM_FIELDS[key[4:]]
    if m := _CONV_RE.match(key):
        return f"{m[1]}_{m[2]}_{m[3]}_conv", "kernel"
    if m := _BN_RE.match(key):
        return f"{m[1]}_{m[2]}_{m[3]}_norm", _NORM_FIELDS[m[4]]
    if m := _DS_CONV_RE.match(key):
        return f"{m[1]}_{m[2]}_downsample_conv", "kernel"
    if m := _DS_BN_RE.match(key):
        return f"{m[1]}_{m[2]}_downsample_norm", _NORM_FIELDS[m[3]]
    return None


def _ignored(key: str) -> bool:
    return key.endswith("num_batches_tracked") or key.split(".")[-2:-1] == ["fc"] or key.startswith("fc.")


def _backbone_layers(backbone) -> dict[str, Any]:
    layers = {}
    for layer in backbone._flatten_layers(include_self=False, recursive=True):
        if layer.name.endswith("_conv") or layer.name.endswith("_norm"):
            layers[layer.name] = layer
    return layers


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
    if getattr(backbone, "norm", None) == "gn":
        raise ValueError("ImageNet BN statistics cannot go into a GroupNorm backbone: use "
                         "BACKBONE_NORM='frozen_bn' (or 'bn')")
    if getattr(backbone, "stride_in_1x1", False):
        raise ValueError("torchvision checkpoints put the stride on the 3x3 conv: set STRIDE_IN_1X1=False")
    state = read_pth(path)
    layers = _backbone_layers(backbone)

    assigned: set[tuple[str, str]] = set()
    ignored: list[str] = []
    for key, value in state.items():
        target = torchvision_to_keras_name(key)
        if target is None:
            ignored.append(key)
            continue
        layer_name, weight_name = target
        layer = layers.get(layer_name)
        if layer is None:
            if _ignored(key):
                ignored.append(key)
                continue
            raise ValueError(
                f"{path!r}: {key!r} maps to backbone layer {layer_name!r}, which this backbone "
                f"({getattr(backbone, 'architecture', '?')}) does not have: wrong architecture?"
            )
        variable = getattr(layer, weight_name, None)
        if variable is None:
            raise ValueError(f"{path!r}: layer {layer_name!r} ({type(layer).__name__}) has no {weight_name!r}")
        array = np.asarray(value, np.float32)
        if weight_name == "kernel":
            array = array.transpose(2, 3, 1, 0)  # torch OIHW -> Keras HWIO
        if tuple(variable.shape) != array.shape:
            raise ValueError(
                f"{path!r}: {key!r} has shape {array.shape} after conversion but {layer_name}.{weight_name} "
                f"is {tuple(variable.shape)} (BACKBONE_BASE_WIDTH must be 64 and the architecture must match)"
            )
        variable.assign(array)
        assigned.add((layer_name, weight_name))

    missing = []
    for name, layer in layers.items():
        fields = ("kernel",) if name.endswith("_conv") else tuple(_NORM_FIELDS.values())
        for field in fields:
            if getattr(layer, field, None) is not None and (name, field) not in assigned:
                missing.append(f"{name}.{field}")
    if strict and missing:
        raise ValueError(f"{path!r}: no value for {len(missing)} backbone weights, e.g. {missing[:5]}")
    return {"loaded": len(assigned), "ignored": sorted(ignored), "missing": missing}


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
    tmp = dest.with_name(dest.name + ".part")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as f:
            while chunk := response.read(1 << 20):
                f.write(chunk)
    except (urllib.error.URLError, OSError, TimeoutError, ValueError) as exc:
        tmp.unlink(missing_ok=True)
        raise ImageNetWeightsUnavailable(
            f"Could not download the {arch} ImageNet weights from {url} ({exc}). This machine "
            f"probably has no internet access. On a machine that has, download that URL (e.g. "
            f"`curl -LO {url}`) and copy the file to {dest} (or anywhere, and pass its path: "
            f"`--imagenet-weights FILE` / load_imagenet_backbone(model, FILE)). No torch is needed "
            f"to read it."
        ) from exc
    expected = _expected_hash_prefix(url)
    if expected and not _sha256(tmp).startswith(expected):
        tmp.unlink(missing_ok=True)
        raise ValueError(f"downloaded {url} but its SHA-256 does not start with {expected}: corrupt download")
    os.replace(tmp, dest)
    return dest
