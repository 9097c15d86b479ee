"""A ``torch.save``-compatible writer that needs no torch (test fixtures only).

Writes the zip layout torch uses since 1.6: ``<root>/data.pkl`` (a protocol-2
pickle whose tensors are ``torch._utils._rebuild_tensor_v2(storage, offset, size,
stride, ...)`` calls and whose storages are persistent ids ``("storage",
torch.FloatStorage, key, "cpu", numel)``), ``<root>/data/<key>`` raw little-endian
storages, ``<root>/byteorder`` and ``<root>/version``. ``views`` writes tensors with
any size/stride/offset over a storage, so crafted (out-of-bounds) files can be made.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from collections import OrderedDict

import numpy as np


class _Global:
    """Pickled as the GLOBAL opcode ``module.name`` (what torch's pickles reference)."""

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name

    def __call__(self, *args):  # pickle insists that reduce functions be callable
        raise NotImplementedError


class _Storage:
    def __init__(self, key: str, array: np.ndarray, numel: int | None = None) -> None:
        self.key, self.array = key, array
        self.numel = array.size if numel is None else numel


class _Tensor:
    def __init__(self, storage: _Storage, offset: int, size: tuple, stride: tuple) -> None:
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def __reduce__(self):
        return (
            _Global("torch._utils", "_rebuild_tensor_v2"),
            (self.storage, self.offset, tuple(self.size), tuple(self.stride), False, OrderedDict()),
        )


_TYPE_NAMES = {np.dtype(np.float32): "FloatStorage", np.dtype(np.int64): "LongStorage",
               np.dtype(np.float16): "HalfStorage", np.dtype(np.float64): "DoubleStorage"}


class _Writer(pickle._Pickler):  # the pure-Python pickler lets us emit raw globals
    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            return ("storage", _Global("torch", _TYPE_NAMES[obj.array.dtype]), obj.key, "cpu", int(obj.numel))
        return None

    def save(self, obj, save_persistent_id=True):
        if isinstance(obj, _Global):
            self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode("ascii"))
            return
        super().save(obj, save_persistent_id)


def write_pth(path, state: dict[str, np.ndarray], root: str = "archive",
              views: dict[str, tuple[str, int, tuple, tuple]] | None = None,
              declared_numel: dict[str, int] | None = None, wrap: str | None = None) -> None:
    """Write ``state`` ({key: array}) as torch.save would.

    ``views``: extra tensors {key: (base key, offset, size, stride)} over the storage of
    ``state[base]`` (no bounds check: that is what the reader must do).
    ``declared_numel``: {key: n} declares the storage of ``state[key]`` with n elements in
    the pickle (the bytes written stay the real ones).
    ``wrap``: nest the dict under this key (``{"model": state}``).
    """
    storages: dict[str, _Storage] = {}
    tensors = OrderedDict()
    for name, array in state.items():
        array = np.require(array, requirements="C")  # keeps 0-d arrays 0-d
        storage = _Storage(str(len(storages)), array.reshape(-1), (declared_numel or {}).get(name))
        storages[name] = storage
        stride = tuple(s // array.itemsize for s in array.strides)
        tensors[name] = _Tensor(storage, 0, array.shape, stride)
    for name, (base, offset, size, stride) in (views or {}).items():
        tensors[name] = _Tensor(storages[base], offset, size, stride)
    buf = io.BytesIO()
    _Writer(buf, protocol=2).dump({wrap: tensors} if wrap else tensors)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{root}/data.pkl", buf.getvalue())
        z.writestr(f"{root}/byteorder", "little")
        z.writestr(f"{root}/version", "3\n")
        for storage in storages.values():
            a = storage.array
            z.writestr(f"{root}/data/{storage.key}", a.astype(a.dtype.newbyteorder("<")).tobytes())
