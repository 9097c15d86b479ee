"""The package as a user installs it: a wheel, installed into a fresh folder, used from
outside the checkout, builds the custom RoIAlign op from the sources it ships."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Run in a fresh interpreter with only the installed wheel and the venv's third-party
# packages on the path: -S skips site-packages' .pth files (the editable install's finder),
# the current directory is a temporary one outside the checkout.
_PROBE = r"""
import json, os, sys
import numpy as np
import mrcnn
from mrcnn.ops import custom_roi_align, roi_align
import tensorflow as tf

rng = np.random.default_rng(0)
features = tf.constant(rng.random((2, 24, 32, 5), dtype=np.float32))
boxes = tf.constant([[2.0, 3.5, 40.0, 60.0], [0.0, 0.0, 95.0, 127.0], [10.2, 50.7, 30.1, 90.3]])
indices = tf.constant([0, 1, 1], tf.int32)
kwargs = dict(output_size=(7, 7), spatial_scale=0.25, sampling_ratio=2, aligned=True)

@tf.function
def custom(f):
    return roi_align(f, boxes, indices, implementation="custom", **kwargs)

ops = {op.type for op in custom.get_concrete_function(features).graph.get_operations()}
out_custom = custom(features).numpy()
out_portable = roi_align(features, boxes, indices, implementation="portable", **kwargs).numpy()
print(json.dumps({
    "mrcnn_file": mrcnn.__file__,
    "source_dir": str(custom_roi_align.SOURCE_DIR),
    "library": str(custom_roi_align.library_path(cuda=False)),
    "cache_root": str(custom_roi_align.cache_root()),
    "op_types": sorted(ops),
    "max_abs_diff": float(np.abs(out_custom - out_portable).max()),
    "max_abs": float(np.abs(out_portable).max()),
}))
"""


def _site_packages() -> list[str]:
    paths = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    return [p for p in paths if os.path.isdir(p)]


@pytest.mark.slow
def test_wheel_install_builds_the_custom_op_from_package_data(tmp_path):
    wheel_dir, target, cache, work, src = (tmp_path / n for n in ("wheels", "target", "cache", "work", "src"))
    for d in (wheel_dir, cache, work):
        d.mkdir()
    # Build from a copy: setuptools' in-tree build/ folder would keep stale files between runs.
    shutil.copytree(ROOT / "mrcnn", src / "mrcnn", ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    for name in ("setup.cfg", "pyproject.toml", "README.md", "requirements.txt", "MANIFEST.in"):
        shutil.copy2(ROOT / name, src / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheel_dir), str(src)],
                   check=True, cwd=work)
    (wheel,) = wheel_dir.glob("mrcnn-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for source in ("roi_align_op.cc", "roi_align_math.h", "roi_align_kernels.cu.cc"):
        assert f"mrcnn/ops/kernels/{source}" in names
    assert not any(n.startswith(("samples/", "tests/", "custom_ops/")) for n in names)
    subprocess.run([*pip, "install", "--no-deps", "--target", str(target), str(wheel)], check=True, cwd=work)

    env = dict(os.environ)
    env.update(
        PYTHONPATH=os.pathsep.join([str(target), *_site_packages()]),
        MRCNN_OPS_CACHE=str(cache),
        MRCNN_CUSTOM_OPS_CUDA="0",  # the CPU kernel: what the editable install builds here too
        TF_CPP_MIN_LOG_LEVEL="2",
    )
    env.pop("MRCNN_DISABLE_CUSTOM_OPS", None)
    proc = subprocess.run([sys.executable, "-S", "-c", _PROBE], cwd=work, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])

    assert Path(result["mrcnn_file"]).is_relative_to(target)
    assert Path(result["source_dir"]) == target / "mrcnn" / "ops" / "kernels"
    assert Path(result["cache_root"]) == cache
    library = Path(result["library"])
    assert library.is_file() and library.is_relative_to(cache)
    assert "MrcnnRoiAlign" in result["op_types"]
    assert result["max_abs"] > 0.1 and result["max_abs_diff"] < 1e-5

    # The command line from the installed wheel (entry point module and package metadata).
    version = subprocess.run([sys.executable, "-S", "-m", "mrcnn", "--version"], cwd=work, env=env,
                             capture_output=True, text=True, timeout=300)
    assert version.returncode == 0, version.stderr[-2000:]
    assert version.stdout.startswith("mrcnn 0.1.0 (TensorFlow ")
    assert (target / "bin" / "mrcnn").is_file()

    # Same sources, flags and TensorFlow: the same cache key as the editable install's build.
    from mrcnn.ops import custom_roi_align

    assert library.relative_to(cache) == custom_roi_align.library_path(cuda=False).relative_to(
        custom_roi_align.cache_root())


def test_nothing_under_mrcnn_imports_samples():
    offenders = []
    for path in (ROOT / "mrcnn").rglob("*.py"):
        for line in path.read_text(encoding="utf-8").splitlines():
            stripped = line.strip()
            if stripped.startswith(("import samples", "from samples")):
                offenders.append(f"{path.relative_to(ROOT)}: {stripped}")
    assert offenders == []
