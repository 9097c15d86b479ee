"""Process set-up done by ``import mrcnn`` before TensorFlow or Keras are imported.

Two things, both installed as one-shot import hooks so that ``import mrcnn`` itself stays
light (no TensorFlow import):

1. **A quiet TensorFlow start-up.** TensorFlow's C++ runtime logs through absl; the
   messages it emits while its shared libraries load (``WARNING: All log messages before
   absl::InitializeLog() is called are written to STDERR``, the oneDNN and "Could not find
   cuda drivers" INFO lines, and on a machine without a usable GPU ``failed call to cuInit:
   ... (303)``) are printed before ``TF_CPP_MIN_LOG_LEVEL`` takes effect. The hook imports
   TensorFlow and probes its GPUs with file descriptor 2 captured, then re-emits every
   captured line except those below the log level (``TF_CPP_MIN_LOG_LEVEL``, default 2 =
   errors only, as TensorFlow numbers it) and the cuInit failure when no GPU was found
   (that failure *is* "no GPU", which the probe has just established). Anything else
   (Python warnings, real errors) is passed through unchanged. ``TF_CPP_MIN_LOG_LEVEL=0``
   shows everything.
2. **Keras deserialization of mrcnn objects.** ``keras.models.load_model("m.keras")`` finds
   custom classes only through ``@keras.saving.register_keras_serializable``, which runs
   when the defining module is imported. After ``import mrcnn``, the first import of Keras
   also imports :mod:`mrcnn.model` and :mod:`mrcnn.solver.optimizer` (the model class and its
   learning-rate schedule), so a saved ``MaskRCNN`` loads with nothing else imported.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import os
import re
import sys
import tempfile
from collections.abc import Callable

# Modules whose import registers mrcnn's Keras-serializable classes.
_KERAS_MODULES = ("mrcnn.model", "mrcnn.solver.optimizer")
# Documented module paths of the flat layout before the packages (docs/api.md keeps them
# importable): old name -> the module that holds those names now. The alias is the same
# module object, so `mrcnn.training.make_optimizer is mrcnn.engine.training.make_optimizer`.
MOVED_MODULES = {
    "mrcnn.training": "mrcnn.engine.training",
    "mrcnn.callbacks": "mrcnn.engine.callbacks",
    "mrcnn.convert": "mrcnn.checkpoint.convert",
}
_ABSL_PREINIT = "WARNING: All log messages before absl::InitializeLog() is called"
# absl/glog line header: severity letter, MMDD, time, thread id, file:line]
_LOG_LINE = re.compile(r"^([IWEF])\d{4} [\d:.]+\s+\d+ \S+:\d+\] ")
_SEVERITY = {"I": 0, "W": 1, "E": 2, "F": 3}
_CUINIT = "failed call to cuInit"


def min_log_level() -> int:
    """The effective ``TF_CPP_MIN_LOG_LEVEL`` (0 = all, 1 = no INFO, 2 = errors only, 3 = none)."""
    try:
        return int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))
    except ValueError:
        return 2


def filter_tf_log(text: str, level: int, gpu_found: bool) -> str:
    """The lines of ``text`` (captured TensorFlow start-up output) a user should see.

    Drops absl's pre-initialisation banner, C++ log lines whose severity is below ``level``
    (TensorFlow's ``TF_CPP_MIN_LOG_LEVEL`` semantics) and, when ``gpu_found`` is False, the
    ``failed call to cuInit`` error. Every other line is kept.
    """
    if level <= 0:
        return text
    kept = []
    for line in text.splitlines(keepends=True):
        if line.startswith(_ABSL_PREINIT):
            continue
        match = _LOG_LINE.match(line)
        if match:
            if _SEVERITY[match.group(1)] < level:
                continue
            if not gpu_found and _CUINIT in line:
                continue
        kept.append(line)
    return "".join(kept)


def _import_tensorflow_quietly(exec_module: Callable, module) -> None:
    """Run TensorFlow's module body and its GPU probe with fd 2 captured and filtered."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no real fd 2 (embedded interpreters)
        exec_module(module)
        return
    gpu_found = True
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            exec_module(module)
            try:
                gpu_found = bool(module.config.list_physical_devices("GPU"))
            except Exception:  # noqa: BLE001 - the probe is best effort; keep every line then
                gpu_found = True
        finally:
            try:
                sys.stderr.flush()
            except (OSError, ValueError):
                pass
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            text = capture.read().decode("utf-8", errors="replace")
            shown = filter_tf_log(text, min_log_level(), gpu_found)
            if shown:
                sys.stderr.write(shown)
                sys.stderr.flush()
    if _pending_registration:
        _try_register(tensorflow_done=True)


_pending_registration = False


def _initializing(name: str) -> bool:
    module = sys.modules.get(name)
    return bool(getattr(getattr(module, "__spec__", None), "_initializing", False))


def _register_keras_objects(exec_module: Callable, module) -> None:
    exec_module(module)
    _try_register()


def _try_register(tensorflow_done: bool = False) -> None:
    """Import the modules that register mrcnn's Keras classes, unless that is unsafe now."""
    global _pending_registration
    # TensorFlow imports Keras from inside its own import: wait until TensorFlow's module body
    # has run (the TensorFlow hook calls back with tensorflow_done=True).
    if not tensorflow_done and _initializing("tensorflow"):
        _pending_registration = True
        return
    _pending_registration = False
    for name in _KERAS_MODULES:
        if name in sys.modules:
            continue  # imported, or mid-import (then it registers itself when it finishes)
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - it needs a mrcnn module that is mid-import now
            # e.g. `import mrcnn.layers` imports Keras before mrcnn.layers is complete. No
            # later retry (imports run from inside another import's lookup could execute a
            # module twice); importing mrcnn.model or using mrcnn.MaskRCNN registers it.
            continue


class _AfterImport(importlib.abc.MetaPathFinder):
    """Finder that wraps the loader of one top-level module so ``wrapper`` runs its body.

    It stays on ``sys.meta_path`` until that body has run successfully once: a bare
    ``importlib.util.find_spec`` probe (TensorFlow probes for Keras) or a failed import does
    not use it up.
    """

    def __init__(self, name: str, wrapper: Callable) -> None:
        self.name = name
        self.wrapper = wrapper
        self._busy = False

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.name or self._busy:
            return None
        self._busy = True  # the lookup below must not come back to this finder
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self._busy = False
        loader = getattr(spec, "loader", None) if spec is not None else None
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        original = loader.exec_module
        wrapper = self.wrapper

        def exec_module(module):
            loader.exec_module = original  # later reloads run the plain body
            if self in sys.meta_path:
                sys.meta_path.remove(self)
            try:
                wrapper(original, module)
            except BaseException:
                # The module's own import failed (TensorFlow tries `import keras` while it is
                # half-initialised and carries on without it): stay armed for the next try.
                if self not in sys.meta_path:
                    sys.meta_path.insert(0, self)
                raise

        loader.exec_module = exec_module
        return spec


class _AliasLoader(importlib.abc.Loader):
    """Loads an old module path (``MOVED_MODULES``) as the module that replaced it."""

    def __init__(self, target: str) -> None:
        self.target = target
        self._module = None

    def create_module(self, spec):
        self._module = importlib.import_module(self.target)
        self._target_spec = self._module.__spec__
        return self._module

    def exec_module(self, module) -> None:
        # importlib set __spec__ to the alias' spec; the module keeps its own name and spec.
        module.__spec__ = self._target_spec


class _MovedModules(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        new = MOVED_MODULES.get(fullname)
        if new is None:
            return None
        return importlib.util.spec_from_loader(fullname, _AliasLoader(new))


def install() -> None:
    """Install the hooks (idempotent); when TF/Keras are already imported, act at once."""
    if os.environ.get("TF_CPP_MIN_LOG_LEVEL") is None:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    if not any(isinstance(h, _MovedModules) for h in sys.meta_path):
        sys.meta_path.append(_MovedModules())
    installed = {h.name for h in sys.meta_path if isinstance(h, _AfterImport)}
    if "tensorflow" not in sys.modules and "tensorflow" not in installed:
        sys.meta_path.insert(0, _AfterImport("tensorflow", _import_tensorflow_quietly))
    if "keras" in sys.modules:
        _try_register()
    elif "keras" not in installed:
        sys.meta_path.insert(0, _AfterImport("keras", _register_keras_objects))
