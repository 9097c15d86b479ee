"""Atomic file writes: a reader sees the old file or the new one, never a torn one.

Every file a training or evaluation run leaves behind (checkpoints, the backup,
``config.json``, ``final.weights.h5``, ``detections.json``, ``--json-out``) is
written through :func:`atomic_write` or :func:`atomic_save_weights`:

1. the data goes to a temporary file in the *same folder* (so the final
   ``os.replace`` is a rename within one file system, which POSIX makes atomic),
2. the temporary file is flushed and ``fsync``-ed (its bytes are on disk before
   its name is),
3. it is renamed over the target, and
4. the folder is ``fsync``-ed (the rename itself survives a power cut).

A kill, an exception or a full disk (``OSError: [Errno 28]``) before step 3
leaves the previous file untouched and removes the temporary one (a SIGKILL
leaves it behind: temporary names start with ``.tmp-`` and
:func:`remove_stale_temporaries` deletes them at the next start).

For tests of the kill-while-writing case, ``MRCNN_TEST_WRITE_DELAY=SECONDS``
sleeps between writing the temporary file and renaming it, so a test can
SIGKILL a process while a write is provably in flight.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

TMP_PREFIX = ".tmp-"
_DELAY_ENV = "MRCNN_TEST_WRITE_DELAY"


def fsync_dir(folder: str | os.PathLike) -> None:
    """fsync a folder so that a rename inside it is durable (no-op where unsupported)."""
    try:
        fd = os.open(os.fspath(folder) or ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems (and Windows) refuse fsync on a directory
        pass
    finally:
        os.close(fd)


def _test_delay() -> None:
    delay = os.environ.get(_DELAY_ENV)
    if delay:
        time.sleep(float(delay))


def _temp_path(path: str, suffix: str = "") -> str:
    folder, name = os.path.split(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{name}.", suffix=suffix, dir=folder)
    os.close(fd)
    # mkstemp makes 0600 files; give the result the permissions open() would have.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    return tmp


def _commit(tmp: str, path: str) -> None:
    _test_delay()
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(os.path.abspath(path)))


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO[Any]]:
    """Open a temporary file next to ``path``; on a clean exit it replaces ``path``.

    Usage: ``with atomic_write("out/config.json") as f: f.write(text)``. ``mode`` is
    "w" (text) or "wb" (binary). On an exception inside the block (a full disk
    included) the temporary file is removed and ``path`` keeps its old content.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write mode must be 'w' or 'wb', got {mode!r}")
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = _temp_path(path)
    try:
        with open(tmp, mode, encoding=None if mode == "wb" else encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        _commit(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def json_ready(obj: Any) -> Any:
    """``obj`` with NumPy scalars/arrays made plain and NaN/Inf replaced by None, so that
    ``json.dump(..., allow_nan=False)`` writes strict JSON (``null`` for undefined metrics)."""
    import math

    import numpy as np

    if isinstance(obj, dict):
        return {str(k): json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_ready(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    """``json.dump`` ``obj`` to ``path`` atomically."""
    with atomic_write(path, "w") as f:
        json.dump(obj, f, indent=indent)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_write(path, "w") as f:
        f.write(text)


def atomic_save_weights(model: Any, path: str | os.PathLike, include_optimizer: bool = True) -> None:
    """``model.save_weights(path)`` through a temporary ``.weights.h5`` in the same folder.

    Keras insists on the ``.weights.h5`` suffix, so the temporary name keeps it.
    The saved file holds the model's variables and, when the model is compiled and
    ``include_optimizer`` is True, the optimizer's (slots and ``iterations``, hence the
    schedule position): what a backup needs. With ``include_optimizer=False`` the
    file holds the model's variables only (half the size with SGD momentum): what a
    weights file for a new start needs (Keras' h5 layout with its ``optimizer``
    group left out; it loads with ``model.load_weights``).
    """
    path = os.fspath(path)
    if not path.endswith(".weights.h5"):
        raise ValueError(f"weights path must end in .weights.h5, got {path!r}")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = _temp_path(path, suffix=".weights.h5")
    full = _temp_path(path, suffix=".weights.h5") if not include_optimizer else tmp
    try:
        model.save_weights(full, overwrite=True)
        if full != tmp:
            _copy_without_optimizer(full, tmp)
            os.remove(full)
        _fsync_file(tmp)
        _commit(tmp, path)
    except BaseException:
        for name in {tmp, full}:
            with contextlib.suppress(OSError):
                os.remove(name)
        raise


def _copy_without_optimizer(src_path: str, dst_path: str) -> None:
    import h5py

    with h5py.File(src_path, "r") as src, h5py.File(dst_path, "w") as dst:
        for key, value in src.attrs.items():
            dst.attrs[key] = value
        for key in src.keys():
            if key != "optimizer":
                src.copy(src[key], dst, name=key)


def read_commits(folder: str | os.PathLike, prefix: str = "step_") -> list[dict[str, Any]]:
    """The intact multi-file commits in ``folder``: ``{prefix}*.json`` markers, each written
    after the file it names (``"weights"``) with that file's byte size (``"weights_bytes"``).

    Returns the markers' dicts (plus ``weights_path`` and ``state_path``) in reverse name
    order; a marker that does not parse, or whose file is missing or of another size, is a
    torn write and is skipped with a warning. (The step backups of
    :mod:`mrcnn.checkpoint.backups` are such commits; the input pipeline reads their
    position through this function.)
    """
    import warnings

    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        return []
    commits = []
    for name in sorted(os.listdir(folder), reverse=True):
        if not (name.startswith(prefix) and name.endswith(".json")):
            continue
        path = os.path.join(folder, name)
        try:
            with open(path) as f:
                state = json.load(f)
            data = os.path.join(folder, state["weights"])
            size = os.path.getsize(data)
            if size != int(state["weights_bytes"]):
                raise ValueError(f"{data} has {size} bytes, the marker recorded {state['weights_bytes']}")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            warnings.warn(f"ignoring torn backup {path}: {exc}", UserWarning, stacklevel=2)
            continue
        state["weights_path"] = data
        state["state_path"] = path
        commits.append(state)
    return commits


def append_line(path: str | os.PathLike, line: str) -> None:
    """Append one text line and fsync (a kill can lose at most the line being written)."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(line.rstrip("\n") + "\n")
        f.flush()
        os.fsync(f.fileno())


def remove_stale_temporaries(folder: str | os.PathLike) -> list[str]:
    """Delete ``.tmp-*`` files left in ``folder`` by a killed writer; returns their names.

    Call it only while holding the folder's run lock (:mod:`mrcnn.engine.runlock`), so a
    live writer's temporary file is never removed.
    """
    folder = os.fspath(folder)
    removed = []
    if not os.path.isdir(folder):
        return removed
    for name in os.listdir(folder):
        if name.startswith(TMP_PREFIX):
            with contextlib.suppress(OSError):
                os.remove(os.path.join(folder, name))
                removed.append(name)
    return removed


def download_part(url: str, dest: str | os.PathLike, timeout: float = 30.0) -> Path:
    """Fetch ``url`` into ``dest + ".part"`` (1 MiB blocks) and return that path.

    On any failure the part file is removed and the error (``urllib.error.URLError``,
    ``OSError``, ``TimeoutError``, ``ValueError`` for a bad URL) is re-raised for the caller
    to explain. The caller checks the part file and moves it into place with
    ``os.replace``, so ``dest`` is either complete or absent.
    """
    import urllib.request

    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with urllib.request.urlopen(url, timeout=timeout) as response, open(part, "wb") as out:
            while chunk := response.read(1 << 20):
                out.write(chunk)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return part
