"""Reading foreign checkpoints, and the key maps between them and this project's layers.

One module serves every reader of torchvision / Detectron2 files:
:mod:`mrcnn.checkpoint.imagenet` (ImageNet backbones), :mod:`mrcnn.checkpoint.convert` (whole COCO
models) and :mod:`mrcnn.checkpoint.pretrained` (``mrcnn train --init``).

Reading (no PyTorch needed, and no code from the file is ever run):

- :func:`read_pth`: a ``torch.save`` zip (PyTorch >= 1.6): ``<root>/data.pkl`` is
  unpickled with a restricted unpickler (tensors, storages, dicts; any other
  global is refused); every tensor's size/stride/offset is checked against its
  storage, and every storage against the archive member that holds it, before a
  single element is read (a crafted file raises :class:`CheckpointError` naming
  the key, it cannot read out of bounds).
- :func:`read_pkl`: a Detectron2 ``.pkl`` (a pickled dict of NumPy arrays),
  restricted to NumPy arrays, scalars and dicts.
- :func:`read_checkpoint`: either of them by content, plus unwrapping of
  ``{"model": ...}`` / ``{"state_dict": ...}``. The legacy (pre-1.6, not zip)
  torch format (recognised by its magic number; no other file reaches torch) is
  only read through ``torch.load(weights_only=True)`` and only on torch >= 2.6 (older versions' ``weights_only`` can be made to run code);
  otherwise it is refused with the fix (re-save it with a recent torch).

Key maps: :func:`backbone_key` is the one mapping from a ResNet layer name of
``mrcnn/layers/backbone.py`` (``conv1_conv``, ``layer2_0_3_norm``,
``layer3_0_downsample_conv``) to the source's module name;
:func:`source_to_keras_name` is its inverse (parsed, then checked against the
forward map) and :data:`NORM_FIELDS` the batch-norm field names.
"""

from __future__ import annotations

import importlib
import importlib.util
import io
import math
import os
import pickle
import re
import zipfile
from collections import OrderedDict
from typing import Any

import numpy as np

__all__ = [
    "BACKBONE_PREFIX", "NORM_FIELDS", "SOURCES", "CheckpointError", "backbone_field", "backbone_key",
    "caffe2_to_detectron2", "conv_kernel", "conv_transpose_kernel", "dense_kernel", "detect_source",
    "is_caffe2", "is_legacy_torch", "read_checkpoint", "read_pkl", "read_pth", "source_to_keras_name",
    "strip_prefixes",
]

SOURCES = ("torchvision", "detectron2")

# torch BatchNorm / FrozenBatchNorm2d field -> Keras norm-layer weight.
NORM_FIELDS: tuple[tuple[str, str], ...] = (
    ("weight", "gamma"), ("bias", "beta"), ("running_mean", "moving_mean"), ("running_var", "moving_variance"),
)
_NORM_TO_KERAS = dict(NORM_FIELDS)

# Where the ResNet sits inside a detection checkpoint of each source.
BACKBONE_PREFIX: dict[str, str] = {"torchvision": "backbone.body.", "detectron2": "backbone.bottom_up."}
# Wrappers stripped before looking up backbone keys in a classification checkpoint.
_STRIP_PREFIXES = ("module.", "backbone.body.", "backbone.bottom_up.", "backbone.")

# Limits against crafted files (far above any real checkpoint).
MAX_PICKLE_BYTES = 256 << 20
MAX_TENSOR_DIMS = 16


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit: the message names the file and key."""


# ----- key maps ----------------------------------------------------------------------------------
_LAYER_RE = re.compile(r"layer(\d)_(\d+)_(\d|downsample)_(conv|norm)")


def backbone_key(layer_name: str, source: str = "torchvision") -> str | None:
    """ResNet layer name (``mrcnn/layers/backbone.py``) -> the source's module name, relative
    to the backbone (prepend :data:`BACKBONE_PREFIX` for a detection checkpoint); None for
    layers that are not a conv or a norm.

    >>> backbone_key("layer2_0_downsample_norm")
    'layer2.0.downsample.1'
    >>> backbone_key("layer2_0_3_conv", "detectron2")
    'res3.0.conv3'
    """
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    tv = source == "torchvision"
    if layer_name == "conv1_conv":
        return "conv1" if tv else "stem.conv1"
    if layer_name == "conv1_norm":
        return "bn1" if tv else "stem.conv1.norm"
    m = _LAYER_RE.fullmatch(layer_name)
    if not m:
        return None
    stage, block, which, kind = int(m[1]), m[2], m[3], m[4]
    if tv:
        base = f"layer{stage}.{block}"
        if which == "downsample":
            return f"{base}.downsample.{0 if kind == 'conv' else 1}"
        return f"{base}.{'conv' if kind == 'conv' else 'bn'}{which}"
    base = f"res{stage + 1}.{block}"  # Detectron2 counts the stem as res1
    name = "shortcut" if which == "downsample" else f"conv{which}"
    return f"{base}.{name}" if kind == "conv" else f"{base}.{name}.norm"


def backbone_field(layer_name: str, keras_field: str) -> str:
    """Keras weight name of a backbone layer -> the torch parameter name (``kernel`` -> ``weight``)."""
    if keras_field == "kernel":
        return "weight"
    for torch_field, keras in NORM_FIELDS:
        if keras == keras_field:
            return torch_field
    raise ValueError(f"{layer_name}: no torch counterpart for weight {keras_field!r}")


_TV_KEY_RE = re.compile(
    r"(?:(conv1)|(bn1)|layer(\d)\.(\d+)\.(?:conv(\d)|bn(\d)|downsample\.([01])))\.(\w+)")
_D2_KEY_RE = re.compile(
    r"(?:stem\.conv1(\.norm)?|res(\d)\.(\d+)\.(?:conv(\d)|shortcut)(\.norm)?)\.(\w+)")


def strip_prefixes(key: str) -> str:
    """Drop one wrapper prefix (``module.``, ``backbone.body.``, ``backbone.bottom_up.``, ``backbone.``)."""
    if key.startswith("module."):
        key = key[len("module."):]
    for p in _STRIP_PREFIXES[1:]:
        if key.startswith(p):
            return key[len(p):]
    return key


def source_to_keras_name(key: str, source: str = "torchvision") -> tuple[str, str] | None:
    """Backbone key of a source checkpoint -> (ResNet layer name, Keras weight name); None when
    the key is not a backbone conv/norm weight (``fc.*``, ``num_batches_tracked``, heads).

    The inverse of :func:`backbone_key`: the key is parsed, and the layer name it gives must
    map back to the same key.
    """
    key = strip_prefixes(key)
    if source == "torchvision":
        m = _TV_KEY_RE.fullmatch(key)
        if not m:
            return None
        if m[1]:
            layer = "conv1_conv"
        elif m[2]:
            layer = "conv1_norm"
        elif m[5]:
            layer = f"layer{m[3]}_{m[4]}_{m[5]}_conv"
        elif m[6]:
            layer = f"layer{m[3]}_{m[4]}_{m[6]}_norm"
        else:
            layer = f"layer{m[3]}_{m[4]}_downsample_{'conv' if m[7] == '0' else 'norm'}"
        field = m[8]
    elif source == "detectron2":
        m = _D2_KEY_RE.fullmatch(key)
        if not m:
            return None
        norm = bool(m[1] or m[5])
        kind = "norm" if norm else "conv"
        if m[2] is None:
            layer = f"conv1_{kind}"
        else:
            which = m[4] if m[4] else "downsample"
            layer = f"layer{int(m[2]) - 1}_{m[3]}_{which}_{kind}"
        field = m[6]
    else:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    if layer.endswith("_conv"):
        if field != "weight":
            return None
        keras_field = "kernel"
    elif field in _NORM_TO_KERAS:
        keras_field = _NORM_TO_KERAS[field]
    else:
        return None  # num_batches_tracked
    if f"{backbone_key(layer, source)}.{field}" != key:  # the forward map is the definition
        return None
    return layer, keras_field


def is_caffe2(state: dict[str, Any]) -> bool:
    """True for MSRA/Detectron1 Caffe2 blob names (``res2_0_branch2a_w``, ``res_conv1_bn_s``), the
    format of Detectron2's ImageNet backbones (``detectron2://ImageNetPretrained/MSRA/R-50.pkl``)."""
    return any(re.fullmatch(r"res\d_\d+_branch2a_w|res_conv1_bn_s", k) for k in state)


def caffe2_to_detectron2(state: dict[str, np.ndarray], epsilon: float = 1e-5) -> dict[str, np.ndarray]:
    """Caffe2 blob names -> Detectron2 module names (Detectron2's ``convert_basic_c2_names`` for
    the backbone): ``res2_0_branch2a_w`` -> ``res2.0.conv1.weight``, ``_bn_s``/``_bn_b`` ->
    ``.norm.weight``/``.norm.bias``, ``branch1`` -> ``shortcut``, ``conv1_w`` -> ``stem.conv1.weight``;
    ``*_momentum`` and ``fc1000_*`` are dropped.

    The MSRA files fold the batch statistics into the affine terms and carry none, so
    ``running_mean = 0`` and ``running_var = 1 - epsilon`` are added: the frozen norm's scale
    ``gamma / sqrt(running_var + epsilon)`` is then ``gamma`` itself, as Detectron2 computes
    (``epsilon``: the norm layer's, ``mrcnn.layers.norm.BN_EPSILON``).
    """
    out: dict[str, np.ndarray] = {}
    for key, value in state.items():
        if key.endswith("_momentum") or key.startswith("fc1000"):
            continue
        k = key.replace("_", ".")
        k = re.sub(r"\.b$", ".bias", re.sub(r"\.w$", ".weight", k))
        k = re.sub(r"bn\.s$", "norm.weight", re.sub(r"bn\.bias$", "norm.bias", k))
        k = re.sub(r"^res\.conv1\.norm\.", "conv1.norm.", k)
        k = re.sub(r"^conv1\.", "stem.conv1.", k)
        k = k.replace(".branch1.", ".shortcut.").replace(".branch2a.", ".conv1.")
        k = k.replace(".branch2b.", ".conv2.").replace(".branch2c.", ".conv3.")
        out[k] = value
    for key in [k for k in out if k.endswith(".norm.weight")]:
        base, n = key[: -len("weight")], out[key].shape
        out.setdefault(f"{base}running_mean", np.zeros(n, np.float32))
        out.setdefault(f"{base}running_var", np.full(n, 1.0 - epsilon, np.float32))
    return out


def detect_source(state: dict[str, Any]) -> str:
    """"torchvision" or "detectron2", from the key names of a state dict (CheckpointError if neither)."""
    keys = [strip_prefixes(k) for k in state]
    if any(k.startswith(("stem.conv1.", "res2.", "proposal_generator.")) for k in keys):
        return "detectron2"
    if any(k.startswith(("conv1.", "layer1.", "rpn.head.")) for k in keys):
        return "torchvision"
    raise CheckpointError("cannot tell the checkpoint's format: neither torchvision (conv1/layer1/rpn.head) "
                          "nor Detectron2 (stem/res2/proposal_generator) key names")


# ----- layout conversions (torch -> Keras) -------------------------------------------------------
def conv_kernel(w: np.ndarray) -> np.ndarray:
    """torch Conv2d weight [O, I/g, kh, kw] -> Keras Conv2D kernel [kh, kw, I/g, O]."""
    return np.ascontiguousarray(np.transpose(w, (2, 3, 1, 0)))


def conv_transpose_kernel(w: np.ndarray) -> np.ndarray:
    """torch ConvTranspose2d weight [in, out, kh, kw] -> Keras Conv2DTranspose [kh, kw, out, in]."""
    return np.ascontiguousarray(np.transpose(w, (2, 3, 1, 0)))


def dense_kernel(w: np.ndarray) -> np.ndarray:
    """torch Linear weight [out, in] -> Keras Dense kernel [in, out]."""
    return np.ascontiguousarray(w.T)


# ----- .pth (torch zip format) -------------------------------------------------------------------
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
        self.itemsize = 2 if self.dtype == "bfloat16" else np.dtype(self.dtype).itemsize


class _StorageRef:
    """A storage named by the pickle; its bytes are read (and checked) only when a tensor needs them."""

    def __init__(self, storage_type: _StorageType, key: str, numel: int) -> None:
        self.type, self.key, self.numel = storage_type, key, numel


class _TensorRef:
    """A tensor as the pickle describes it; materialised by :func:`_materialise` once its key is known."""

    def __init__(self, storage, offset, size, stride) -> None:
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *state):
    return data


def _rebuild_from_type_v2(func, new_type, args, state):
    return func(*args)


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): lambda storage, offset, size, stride: _TensorRef(
        storage, offset, size, stride),
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("torch.nn.parameter", "Parameter"): lambda data=None, requires_grad=True: data,
}


class _PthUnpickler(pickle.Unpickler):
    def __init__(self, file, path: str):
        super().__init__(file)
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        if (module, name) in _ALLOWED_GLOBALS:
            return _ALLOWED_GLOBALS[(module, name)]
        raise pickle.UnpicklingError(
            f"{self._path}: refusing to load global {module}.{name} (only tensors, storages and "
            "dicts are read from a state_dict file)"
        )

    def persistent_load(self, pid: Any) -> _StorageRef:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType)):
            raise pickle.UnpicklingError(f"{self._path}: unknown persistent id {pid!r}")
        _, storage_type, key, _location, numel = pid
        if not _is_int(numel) or numel < 0:
            raise pickle.UnpicklingError(f"{self._path}: storage {key!r} has element count {numel!r}")
        return _StorageRef(storage_type, str(key), int(numel))


def _is_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


class _Archive:
    """The zip, with every storage read once, bounded by its declared size."""

    def __init__(self, archive: zipfile.ZipFile, prefix: str, byteorder: str, path: str) -> None:
        self.archive, self.prefix, self.byteorder, self.path = archive, prefix, byteorder, path
        self.storages: dict[str, np.ndarray] = {}

    def storage(self, ref: _StorageRef, key: str) -> np.ndarray:
        if ref.key in self.storages:
            cached = self.storages[ref.key]
            if cached.size != ref.numel:
                raise CheckpointError(f"{self.path}: tensor {key!r}: storage data/{ref.key} is declared with "
                                      f"{ref.numel} elements here and {cached.size} elsewhere")
            return cached
        member = f"{self.prefix}data/{ref.key}"
        try:
            info = self.archive.getinfo(member)
        except KeyError as exc:
            raise CheckpointError(f"{self.path}: tensor {key!r}: storage {member} missing from the archive") from exc
        nbytes = ref.numel * ref.type.itemsize
        if info.file_size != nbytes:
            raise CheckpointError(
                f"{self.path}: tensor {key!r}: storage {member} holds {info.file_size} bytes but the pickle "
                f"declares {ref.numel} x {ref.type.itemsize}-byte elements ({nbytes} bytes): corrupt or crafted file"
            )
        with self.archive.open(info) as f:
            raw = f.read(nbytes + 1)  # never more than declared, even if the zip directory lies
        if len(raw) != nbytes:
            raise CheckpointError(f"{self.path}: tensor {key!r}: storage {member} has {len(raw)} bytes, "
                                  f"expected {nbytes}")
        order = "<" if self.byteorder == "little" else ">"
        if ref.type.dtype == "bfloat16":
            bits = np.frombuffer(raw, dtype=np.dtype(f"{order}u2"))
            array = (bits.astype(np.uint32) << 16).view(np.float32)
        else:
            dtype = np.dtype(ref.type.dtype)
            array = np.frombuffer(raw, dtype=dtype.newbyteorder(order)).astype(dtype, copy=False)
        self.storages[ref.key] = array
        return array


def _check_view(t: _TensorRef, key: str, path: str) -> tuple[tuple[int, ...], tuple[int, ...], int]:
    """Validate a tensor's size/stride/offset against its storage's element count (CheckpointError)."""
    where = f"{path}: tensor {key!r}"
    if not isinstance(t.storage, _StorageRef):
        raise CheckpointError(f"{where}: its storage is a {type(t.storage).__name__}, not a storage")
    size, stride, offset = t.size, t.stride, t.offset
    if not isinstance(size, (tuple, list)) or not isinstance(stride, (tuple, list)):
        raise CheckpointError(f"{where}: size {size!r} / stride {stride!r} are not tuples")
    if len(size) != len(stride) or len(size) > MAX_TENSOR_DIMS:
        raise CheckpointError(f"{where}: size {tuple(size)} and stride {tuple(stride)} do not match")
    if not all(_is_int(v) and v >= 0 for v in (*size, *stride)) or not _is_int(offset) or offset < 0:
        raise CheckpointError(f"{where}: size {tuple(size)}, stride {tuple(stride)} and offset {offset!r} "
                              "must be non-negative integers")
    size, stride, offset = tuple(int(v) for v in size), tuple(int(v) for v in stride), int(offset)
    numel = math.prod(size)
    storage_numel = t.storage.numel
    if numel == 0:
        if offset > storage_numel:
            raise CheckpointError(f"{where}: offset {offset} beyond its storage of {storage_numel} elements")
        return size, stride, offset
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= storage_numel:
        raise CheckpointError(
            f"{where}: size {size}, stride {stride}, offset {offset} reach element {last} but its storage "
            f"data/{t.storage.key} has {storage_numel} elements (tensor larger than its storage)"
        )
    if numel > storage_numel:
        # Overlapping or broadcast (stride 0) views: never in a state_dict, and a way to blow up memory.
        raise CheckpointError(f"{where}: {numel} elements from a storage of {storage_numel} "
                              "(overlapping/broadcast views are not read)")
    return size, stride, offset


def _materialise(obj: Any, archive: _Archive, key: str = "") -> Any:
    """Replace every _TensorRef in a nested dict/list by a checked NumPy copy."""
    if isinstance(obj, _TensorRef):
        size, stride, offset = _check_view(obj, key, archive.path)
        storage = archive.storage(obj.storage, key)
        if math.prod(size) == 0:
            return np.zeros(size, storage.dtype)
        item = storage.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            storage[offset:], shape=size, strides=tuple(s * item for s in stride), writeable=False)
        return np.array(view)  # contiguous copy, independent of the storage
    if isinstance(obj, dict):
        return {k: _materialise(v, archive, f"{key}.{k}" if key else str(k)) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialise(v, archive, f"{key}[{i}]") for i, v in enumerate(obj))
    if isinstance(obj, _StorageRef):
        raise CheckpointError(f"{archive.path}: {key!r} is a bare storage, not a tensor")
    return obj


def _unwrap_state(obj: Any) -> Any:
    for key in ("state_dict", "model", "model_state_dict", "blobs"):  # "blobs": Caffe2/Detectron1 pickles
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    return obj


def read_pth(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a ``torch.save``\\ d state_dict (zip format) into {name: np.ndarray}, without torch.

    A ``.pth`` of PyTorch >= 1.6 is a zip holding ``<root>/data.pkl`` (a pickle
    whose tensors point, through persistent ids ``("storage", type, key, ...)``,
    to raw storages ``<root>/data/<key>``), ``<root>/byteorder`` and
    ``<root>/version``. Nested dicts ({"model": state_dict}, {"state_dict": ...})
    are unwrapped. Every tensor is checked (its last element must lie inside its
    storage, the storage must be exactly the archive member's size) before it is read.

    Raises:
        FileNotFoundError; ValueError (not a zip .pth / legacy format / no tensors);
        :class:`CheckpointError` (a ValueError naming the key) for a tensor or storage that
        does not fit; pickle.UnpicklingError for a global other than tensors and dicts.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file {path!r} does not exist")
    if not zipfile.is_zipfile(path):
        raise ValueError(
            f"{path!r} is not a zip-format PyTorch checkpoint. The legacy (PyTorch < 1.6) format "
            "is not supported: re-save it with torch.save(torch.load(f), g) on a machine with torch."
        )
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            pkl = [n for n in names if n == "data.pkl" or n.endswith("/data.pkl")]
            if not pkl:
                raise ValueError(f"{path!r}: zip without data.pkl, not a torch.save file")
            name = min(pkl, key=len)
            prefix = name[: -len("data.pkl")]
            if archive.getinfo(name).file_size > MAX_PICKLE_BYTES:
                raise CheckpointError(f"{path!r}: {name} is larger than {MAX_PICKLE_BYTES} bytes")
            byteorder = "little"
            if f"{prefix}byteorder" in names:
                byteorder = archive.read(f"{prefix}byteorder").decode("ascii", "replace").strip() or "little"
            if byteorder not in ("little", "big"):
                raise CheckpointError(f"{path!r}: unknown byteorder {byteorder!r}")
            obj = _PthUnpickler(io.BytesIO(archive.read(name)), path).load()
            obj = _materialise(_unwrap_state(obj), _Archive(archive, prefix, byteorder, path))
    except zipfile.BadZipFile as exc:
        raise CheckpointError(f"{path!r}: damaged zip ({exc})") from exc
    except (EOFError, TypeError, AttributeError, IndexError, KeyError, RecursionError) as exc:
        raise pickle.UnpicklingError(f"{path!r}: malformed data.pkl ({type(exc).__name__}: {exc})") from exc
    if not isinstance(obj, dict):
        raise ValueError(f"{path!r} holds a {type(obj).__name__}, not a state_dict")
    out = {str(k): v for k, v in obj.items() if isinstance(v, np.ndarray)}
    if not out:
        raise ValueError(f"{path!r}: no tensors found")
    return out


# ----- .pkl (Detectron2) -------------------------------------------------------------------------
class _NumpyUnpickler(pickle.Unpickler):
    """Unpickler for Detectron2 .pkl files: NumPy arrays, scalars, dicts; nothing else."""

    _NUMPY = {
        "multiarray": ("_reconstruct", "scalar", "ndarray", "dtype"),
        "numeric": ("_frombuffer",),
    }

    def find_class(self, module: str, name: str) -> Any:
        parts = module.split(".")
        if len(parts) == 3 and parts[:2] in (["numpy", "core"], ["numpy", "_core"]) \
                and name in self._NUMPY.get(parts[2], ()):
            core = "numpy._core" if importlib.util.find_spec("numpy._core") else "numpy.core"
            return getattr(importlib.import_module(f"{core}.{parts[2]}"), name)
        if module == "numpy" and name in ("ndarray", "dtype"):
            return getattr(np, name)
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if (module, name) == ("_codecs", "encode"):  # bytes in protocol-2 pickles
            import codecs

            return codecs.encode
        raise pickle.UnpicklingError(
            f"refusing to load global {module}.{name}: a Detectron2 checkpoint holds only NumPy "
            "arrays and dicts"
        )


def read_pkl(path: str | os.PathLike) -> Any:
    """Unpickle a Detectron2 ``.pkl`` with NumPy arrays and dicts only (pickle.UnpicklingError otherwise)."""
    with open(path, "rb") as f:
        return _NumpyUnpickler(f, encoding="latin1").load()


# ----- any checkpoint ----------------------------------------------------------------------------
def _tensor_dict(obj: Any, path: str) -> dict[str, np.ndarray]:
    obj = _unwrap_state(obj)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a dict of tensors")
    out = {}
    for k, v in obj.items():
        if hasattr(v, "detach"):  # a torch tensor (legacy format through torch.load)
            v = v.detach().cpu().numpy()
        if isinstance(v, (np.ndarray, np.generic)):
            out[str(k)] = np.asarray(v)
    if not out:
        raise CheckpointError(f"{path}: no tensors found")
    return out


# torch's legacy (pre-1.6) files begin with this number, pickled (torch/serialization.py).
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def is_legacy_torch(path: str) -> bool:
    """True when ``path`` starts like a legacy ``torch.save`` file (its pickled magic number)."""
    with open(path, "rb") as f:
        head = f.read(14)
    return len(head) == 14 and head[0] == 0x80 and head[2:4] == b"\x8a\x0a" \
        and int.from_bytes(head[4:14], "little") == _LEGACY_MAGIC


def _safe_torch_load(path: str) -> Any | None:
    """``torch.load(weights_only=True)`` on torch >= 2.6 (None without torch); refuses older torch,
    whose ``weights_only`` unpickler could be made to run code (CVE-2025-32434)."""
    if importlib.util.find_spec("torch") is None:
        return None
    import torch

    version = tuple(int(p) for p in re.findall(r"\d+", torch.__version__.split("+")[0])[:2])
    if version < (2, 6):
        raise CheckpointError(
            f"{path}: a legacy (not zip) torch file can only be read with torch >= 2.6 "
            f"(installed: {torch.__version__}); upgrade torch, or re-save the file with a recent torch.save"
        )
    return torch.load(path, map_location="cpu", weights_only=True)


def read_checkpoint(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a ``.pth`` (torch zip format) or a Detectron2 ``.pkl`` into {key: np.ndarray}.

    A wrapping ``{"model": ...}`` / ``{"state_dict": ...}`` is unwrapped; non-tensor
    entries (Detectron2's ``"__author__"``, ``"iteration"``...) are dropped. A zip file
    the NumPy reader refuses is refused (no torch fallback); a legacy torch file is read
    only through :func:`_safe_torch_load`.

    Raises:
        FileNotFoundError; :class:`CheckpointError` (a ValueError) naming the file and,
        for a bad tensor, the key.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    if zipfile.is_zipfile(path):
        try:
            return _tensor_dict(read_pth(path), path)
        except CheckpointError:
            raise
        except (pickle.UnpicklingError, ValueError) as exc:
            raise CheckpointError(f"{path}: {exc}") from exc
    if is_legacy_torch(path):  # only such files reach torch; any other pickle is read by read_pkl
        try:
            obj = _safe_torch_load(path)
        except CheckpointError:
            raise
        except Exception as exc:  # noqa: BLE001 - whatever torch raises, one clear error
            raise CheckpointError(f"{path}: torch.load(weights_only=True) refused this legacy file ({exc})") from exc
        if obj is None:
            raise CheckpointError(
                f"{path}: a legacy (PyTorch < 1.6) torch.save file: reading it needs torch >= 2.6 installed "
                "(torch.load(weights_only=True)); or re-save it with torch.save on a machine that has torch"
            )
        return _tensor_dict(obj, path)
    try:
        obj = read_pkl(path)
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            KeyError, RecursionError, MemoryError) as exc:
        raise CheckpointError(f"{path}: not a Detectron2 .pkl of NumPy arrays nor a torch .pth ({exc})") from exc
    return _tensor_dict(obj, path)
