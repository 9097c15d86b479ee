"""docs/api.md is the public API: every name it lists imports, and every package's
``__all__`` is listed there."""

from __future__ import annotations

import importlib
import inspect
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"
_ENTRY = re.compile(r"^- `(mrcnn(?:\.\w+)*)` — \S")
PACKAGES = ("mrcnn", "mrcnn.data", "mrcnn.ops", "mrcnn.layers", "mrcnn.engine", "mrcnn.checkpoint", "mrcnn.export",
            "mrcnn.solver")


def documented() -> list[str]:
    names = [m.group(1) for line in DOC.read_text(encoding="utf-8").splitlines()
             if (m := _ENTRY.match(line))]
    assert len(names) == len(set(names)), "a name is listed twice in docs/api.md"
    return names


def resolve(dotted: str):
    """Import ``a.b.c``: the longest importable module prefix, then attributes."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(dotted)


def test_every_documented_name_imports():
    names = documented()
    assert len(names) > 60
    for name in names:
        resolve(name)  # raises with the name when it does not exist


def test_every_package_all_is_documented_and_importable():
    names = set(documented())
    for package in PACKAGES:
        module = importlib.import_module(package)
        for attr in module.__all__:
            getattr(module, attr)
            assert f"{package}.{attr}" in names, f"{package}.{attr} is in __all__ but not in docs/api.md"


def test_the_names_the_issue_promised():
    from mrcnn.ops import roi_align

    assert isinstance(roi_align, types.FunctionType)
    assert list(inspect.signature(roi_align).parameters) == [
        "features", "boxes", "box_indices", "output_size", "spatial_scale", "sampling_ratio",
        "aligned", "implementation"]
    from mrcnn import Config, Dataset, MaskRCNN
    from mrcnn.data import CocoDataset, build_dataset
    from mrcnn.data import Dataset as DataDataset

    assert DataDataset is Dataset and issubclass(CocoDataset, Dataset) and callable(build_dataset)
    assert issubclass(MaskRCNN, __import__("keras").Model) and isinstance(Config(), Config)
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        importlib.import_module("mrcnn.data").Nope  # noqa: B018


def test_import_mrcnn_is_light():
    """``import mrcnn`` and ``mrcnn.data`` import neither TensorFlow, Keras nor pycocotools."""
    code = ("import sys, mrcnn, mrcnn.data; c = mrcnn.Config(); "
            "print(sorted(m for m in ('tensorflow', 'keras', 'pycocotools') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=DOC.parents[1])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


@pytest.mark.parametrize("imports", [
    # "import mrcnn; import keras": tests/test_config.py's .keras round trip
    "import keras; import mrcnn",
    "import mrcnn; import tensorflow; import keras",  # TensorFlow probes for and imports Keras itself
    "import mrcnn; from mrcnn.model import MaskRCNN; import keras",
    "from mrcnn.data import build_dataset",  # TensorFlow and Keras first imported mid-mrcnn-import
])
def test_keras_finds_mrcnn_classes_after_import_mrcnn(imports):
    code = (f"{imports}\nimport keras\n"
            "print([keras.saving.get_registered_object(n) is not None "
            "for n in ('mrcnn>MaskRCNN', 'mrcnn>WarmupStepDecay')])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          cwd=DOC.parents[1])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "[True, True]"


def test_tf_startup_log_filter():
    from mrcnn._env import filter_tf_log

    text = (
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
        "I0000 00:00:1796172658.553034    9513 port.cc:153] oneDNN custom operations are on.\n"
        "W0000 00:00:1796172658.553329    9513 gpu_device.cc:2] Cannot dlopen some GPU libraries.\n"
        "E0000 00:00:1796172661.591272    9513 cuda_platform.cc:52] failed call to cuInit: INTERNAL: "
        "CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)\n"
        "E0000 00:00:1796172661.600000    9513 other.cc:7] a real error\n"
        "/x/y.py:3: UserWarning: a Python warning\n"
    )
    lines = filter_tf_log(text, level=2, gpu_found=False).splitlines()
    assert lines == [text.splitlines()[4], text.splitlines()[5]]
    # With a GPU found, a cuInit failure is news and is kept; level 0 keeps everything.
    assert len(filter_tf_log(text, level=2, gpu_found=True).splitlines()) == 3
    assert filter_tf_log(text, level=1, gpu_found=False).splitlines() == [text.splitlines()[i] for i in (2, 4, 5)]
    assert filter_tf_log(text, level=0, gpu_found=False) == text
