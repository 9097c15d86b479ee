"""Builds, caches and loads the custom RoIAlign op (C++ CPU kernel, CUDA GPU kernel).

The sources ship inside the package, in ``mrcnn/ops/kernels/`` (package data, so an
editable install, ``pip install .`` and a wheel all find them). On first use the op
is compiled with the system C++ compiler against the installed TensorFlow
(``tf.sysconfig`` flags: headers, ``_GLIBCXX_USE_CXX11_ABI``, libtensorflow_framework)
into a cache directory keyed by the TensorFlow version and a hash of the sources and
flags::

    $MRCNN_OPS_CACHE (default ~/.cache/mrcnn/ops)/<tf-version>-<hash>/mrcnn_roi_align.so

The build is atomic (compiled to a temporary name, then renamed) and serialised across
processes with a file lock, so parallel test workers or training processes do not clash.
The CUDA kernel is compiled in as well when ``nvcc`` is found (``$NVCC``, ``$PATH``,
``$CUDA_HOME/bin``, ``/usr/local/cuda/bin``), TensorFlow is built with CUDA and a GPU is
visible; ``MRCNN_CUSTOM_OPS_CUDA=0`` turns that off.

``MRCNN_DISABLE_CUSTOM_OPS=1`` forces the stock-ops path. When the op cannot be built or
loaded (no compiler, a build error, ...) :func:`is_available` returns False and, with
``warn=True``, warns once with the reason; ``implementation="auto"`` then falls back to the
stock-ops path.

The op has no XLA kernel: a ``tf.function(jit_compile=True)`` or a Keras model compiled
with ``jit_compile=True`` that contains it fails to compile. Models that use it must be
compiled with ``jit_compile=False``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings
from pathlib import Path

import tensorflow as tf

# Package data next to this module (setup.cfg [options.package_data]); docs/design.md says why.
SOURCE_DIR = Path(__file__).resolve().parent / "kernels"
LIBRARY_NAME = "mrcnn_roi_align.so"
_CXX_SOURCES = ("roi_align_op.cc",)
_CUDA_SOURCES = ("roi_align_kernels.cu.cc",)
_HEADERS = ("roi_align_math.h",)
_CXX_FLAGS = ("-std=c++17", "-O3", "-fopenmp-simd", "-fPIC", "-Wno-deprecated-declarations")
_NVCC_FLAGS = ("-x", "cu", "-std=c++17", "-O2", "-Xcompiler", "-fPIC")

_lock = threading.Lock()
_module = None  # the loaded op library
_error: str | None = None  # why it is not available (once known)
_warned = False


class BuildError(RuntimeError):
    """The custom op could not be compiled."""


# ------------------------------------------------------------------------------ public


def disabled() -> bool:
    return os.environ.get("MRCNN_DISABLE_CUSTOM_OPS", "").strip().lower() not in ("", "0", "false")


def is_available(warn: bool = False) -> bool:
    """Whether the custom op is built (building it on first use) and loaded.

    With ``warn=True`` a RuntimeWarning saying why is issued the first time it is not
    (not when disabled on purpose with MRCNN_DISABLE_CUSTOM_OPS).
    """
    global _warned
    if disabled():
        return False
    try:
        _load()
        return True
    except Exception as err:  # noqa: BLE001 - any failure means "use the portable path"
        if warn and not _warned:
            _warned = True
            warnings.warn(
                f"mrcnn: the custom RoIAlign op is unavailable ({err}); "
                "using the stock-ops path (set MRCNN_DISABLE_CUSTOM_OPS=1 to silence this)",
                RuntimeWarning,
                stacklevel=3,
            )
        return False


def unavailable_reason() -> str | None:
    """Why the op is not available, or None (after :func:`is_available` was called)."""
    if disabled():
        return "disabled by MRCNN_DISABLE_CUSTOM_OPS"
    return _error


def cache_root() -> Path:
    return Path(os.environ.get("MRCNN_OPS_CACHE") or Path.home() / ".cache" / "mrcnn" / "ops")


def library_path(cuda: bool | None = None) -> Path:
    """Where the library for the current sources, flags and TensorFlow lives."""
    if cuda is None:
        cuda = _cuda_wanted()
    return cache_root() / f"{tf.__version__}-{_build_key(cuda)}" / LIBRARY_NAME


def build(force: bool = False, verbose: bool = True) -> Path:
    """Compile the op into the cache (if not there yet, or always with ``force``).

    Returns the library path. Raises :class:`BuildError` with the compiler output when
    the build fails. When the CUDA build fails, falls back to a CPU-only library (and
    says so). A library already loaded in this process is not reloaded.
    """
    cuda = _cuda_wanted()
    try:
        return _build(cuda, force, verbose)
    except BuildError as err:
        if not cuda:
            raise
        msg = f"mrcnn: CUDA build of the RoIAlign op failed, building the CPU-only op\n{err}"
        warnings.warn(msg, RuntimeWarning, stacklevel=2)
        return _build(False, force, verbose)


def load():
    """The loaded op library (building it if needed); raises if unavailable."""
    if disabled():
        raise RuntimeError("the custom RoIAlign op is disabled by MRCNN_DISABLE_CUSTOM_OPS")
    return _load()


def roi_align(features, boxes, box_indices, output_size, spatial_scale, sampling_ratio, aligned):
    """RoIAlign with the custom op; arguments as :func:`mrcnn.ops.roi_pooling.roi_align`."""
    module = load()
    ph, pw = output_size
    return module.mrcnn_roi_align(
        features=tf.cast(features, tf.float32),
        boxes=tf.cast(boxes, tf.float32),
        box_indices=tf.cast(box_indices, tf.int32),
        pooled_height=int(ph),
        pooled_width=int(pw),
        spatial_scale=float(spatial_scale),
        sampling_ratio=int(sampling_ratio),
        aligned=bool(aligned),
    )


# ---------------------------------------------------------------------------- internals


def _load():
    global _module, _error
    if _module is not None:
        return _module
    with _lock:
        if _module is not None:
            return _module
        if _error is not None:
            raise RuntimeError(_error)
        try:
            path = build(verbose=False)
            module = tf.load_op_library(str(path))
        except Exception as err:  # noqa: BLE001
            _error = _one_line(err)
            raise RuntimeError(_error) from err
        _module = module
        return module


def _one_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    first = text[0] if text else type(err).__name__
    return f"{type(err).__name__}: {first}" + (" (see the build log)" if len(text) > 1 else "")


def _find_cxx() -> str | None:
    for candidate in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    return None


def find_nvcc() -> str | None:
    candidates = [os.environ.get("NVCC"), shutil.which("nvcc")]
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home:
            candidates.append(str(Path(home) / "bin" / "nvcc"))
    for candidate in candidates:
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def _cuda_wanted() -> bool:
    if os.environ.get("MRCNN_CUSTOM_OPS_CUDA", "1").strip() in ("0", "false", "False"):
        return False
    if find_nvcc() is None or not tf.test.is_built_with_cuda():
        return False
    try:
        return bool(tf.config.list_physical_devices("GPU"))
    except Exception:  # noqa: BLE001
        return False


def _cuda_arch_flags() -> list[str]:
    arch = os.environ.get("MRCNN_CUDA_ARCH", "all-major")
    return [f"-arch={arch}"]


def _build_key(cuda: bool) -> str:
    digest = hashlib.sha256()
    names = list(_HEADERS) + list(_CXX_SOURCES) + (list(_CUDA_SOURCES) if cuda else [])
    for name in names:
        digest.update(name.encode())
        digest.update((SOURCE_DIR / name).read_bytes())
    flags = list(_CXX_FLAGS) + tf.sysconfig.get_compile_flags() + tf.sysconfig.get_link_flags()
    if cuda:
        flags += ["cuda"] + list(_NVCC_FLAGS) + _cuda_arch_flags()
    digest.update("\0".join(flags).encode())
    return ("cuda-" if cuda else "cpu-") + digest.hexdigest()[:16]


@contextlib.contextmanager
def _file_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            import fcntl

            fcntl.flock(handle, fcntl.LOCK_EX)
        except ImportError:  # pragma: no cover - non-POSIX: no cross-process lock
            pass
        yield


def _run(cmd: list[str], log, verbose: bool) -> None:
    log.write("$ " + " ".join(cmd) + "\n")
    log.flush()
    if verbose:
        print("[mrcnn build-ops] " + " ".join(cmd), file=sys.stderr)
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log.write(proc.stdout)
    log.flush()
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.strip().splitlines()[-25:])
        raise BuildError(f"`{Path(cmd[0]).name}` exited with {proc.returncode} (log: {log.name})\n{tail}")


def _untrusted_reason(path: Path) -> str | None:
    """Why a cached file or folder must not be trusted (None if it may): loading a shared
    library runs its code, so it must be ours and writable by nobody else."""
    st = path.stat()
    uid = os.getuid() if hasattr(os, "getuid") else None
    if uid is not None and st.st_uid != uid:
        return f"{path} is owned by uid {st.st_uid}, not by you (uid {uid})"
    if st.st_mode & 0o022:
        return f"{path} is group/world-writable (mode {st.st_mode & 0o777:o})"
    return None


def _refuse_untrusted(out_dir: Path, target: Path, force: bool) -> None:
    """Refuse (BuildError, so the portable RoIAlign is used) a cache folder or library this user
    did not build: not owned by the current user, or writable by group/others."""
    st = out_dir.stat()
    if st.st_uid == getattr(os, "getuid", lambda: st.st_uid)() and st.st_mode & 0o022:
        # Our own folder, made group-writable by the umask: tighten it; files others may have put
        # in it meanwhile are still refused by the owner check below.
        os.chmod(out_dir, st.st_mode & 0o755)
    reason = _untrusted_reason(out_dir)
    if reason is None and target.is_file() and not force:
        reason = _untrusted_reason(target)
    if reason is not None:
        raise BuildError(
            f"refusing the custom op cache: {reason}. Remove it and run `mrcnn build-ops --force`, or set "
            "MRCNN_OPS_CACHE to a folder of your own"
        )


def _build(cuda: bool, force: bool, verbose: bool) -> Path:
    missing = [n for n in _HEADERS + _CXX_SOURCES if not (SOURCE_DIR / n).is_file()]
    if missing:
        raise BuildError(f"custom op sources not found under {SOURCE_DIR}: {missing}")
    cxx = _find_cxx()
    if cxx is None:
        raise BuildError("no C++ compiler found (install g++ or set CXX)")
    target = library_path(cuda)
    out_dir = target.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    _refuse_untrusted(out_dir, target, force)  # before the lock: nothing is written into a folder not ours
    with _file_lock(out_dir / ".lock"):
        if target.is_file() and not force:
            if verbose:
                print(f"[mrcnn build-ops] up to date: {target}", file=sys.stderr)
            return target
        with tempfile.TemporaryDirectory(dir=out_dir, prefix=".build-") as tmp, open(
            out_dir / "build.log", "w"
        ) as log:
            objects, defines, libs = [], [], []
            if cuda:
                nvcc = find_nvcc()
                obj = str(Path(tmp) / "roi_align_kernels.o")
                _run([nvcc, *_NVCC_FLAGS, *_cuda_arch_flags(), "-I", str(SOURCE_DIR), "-c",
                      str(SOURCE_DIR / _CUDA_SOURCES[0]), "-o", obj], log, verbose)
                objects.append(obj)
                defines.append("-DMRCNN_WITH_CUDA=1")
                cuda_lib = Path(nvcc).resolve().parent.parent / "lib64"
                libs += [f"-L{cuda_lib}", "-lcudart_static", "-ldl", "-lrt", "-lpthread"]
            tmp_lib = str(Path(tmp) / LIBRARY_NAME)
            cmd = [cxx, *_CXX_FLAGS, "-shared", *defines, *tf.sysconfig.get_compile_flags(),
                   "-I", str(SOURCE_DIR), *(str(SOURCE_DIR / s) for s in _CXX_SOURCES),
                   *objects, "-o", tmp_lib, *tf.sysconfig.get_link_flags(), *libs]
            _run(cmd, log, verbose)
            os.chmod(tmp_lib, 0o755)  # whatever the umask: _refuse_untrusted rejects group-writable files
            os.replace(tmp_lib, target)  # atomic: readers see the old file or the new one
    if verbose:
        print(f"[mrcnn build-ops] built {target}", file=sys.stderr)
    return target


def _attrs(op) -> dict:
    return {
        name: op.get_attr(name)
        for name in ("pooled_height", "pooled_width", "spatial_scale", "sampling_ratio", "aligned")
    }


def _roi_align_grad(op, grad):
    """d/d(features) of MrcnnRoiAlign; no gradient to the boxes or the box indices."""
    grad_features = _module.mrcnn_roi_align_grad(
        grads=grad, boxes=op.inputs[1], box_indices=op.inputs[2], features=op.inputs[0],
        **_attrs(op),
    )
    return [grad_features, None, None]


def _roi_align_grad_grad(op, grad):
    """MrcnnRoiAlignGrad is linear in `grads` with the forward op as its adjoint."""
    grad_grads = _module.mrcnn_roi_align(
        features=grad, boxes=op.inputs[1], box_indices=op.inputs[2], **_attrs(op)
    )
    return [grad_grads, None, None, None]


for _name, _fn in (("MrcnnRoiAlign", _roi_align_grad), ("MrcnnRoiAlignGrad", _roi_align_grad_grad)):
    with contextlib.suppress(KeyError):  # already registered (module reloaded)
        tf.RegisterGradient(_name)(_fn)
