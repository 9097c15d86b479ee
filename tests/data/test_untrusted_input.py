"""Untrusted files: the custom-op cache refuses a library this user did not build.

Loading a shared library runs its code, so a library in the op cache that is
owned by another user, or that others can write, must never be loaded: ``build()``
refuses it with a clear message (and the "auto" RoIAlign then uses the portable
ops). The crafted-``.pth`` tests are in tests/test_weights_reader.py.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
pytestmark = pytest.mark.skipif(not hasattr(os, "getuid"), reason="POSIX file ownership")

# In a fresh interpreter (the op module caches its load result), with the cache at
# $MRCNN_OPS_CACHE: plant a library file, make it (or its folder) someone else's, and
# report what build()/is_available() do. As root, chown does it; as another user (CI),
# a symlink to a root-owned file / folder does.
_PROBE = """
import os, sys
from mrcnn.ops import custom_roi_align as c
target = c.library_path()
mode, case = int(sys.argv[1], 8), sys.argv[2]
root = os.getuid() == 0
if case == "other_dir" and not root:
    target.parent.parent.mkdir(parents=True, exist_ok=True)
    os.symlink("/", target.parent)  # a folder owned by root
else:
    target.parent.mkdir(parents=True, exist_ok=True)
    if case == "other_file" and not root:
        os.symlink(sys.executable if os.stat(sys.executable).st_uid == 0 else "/bin/sh", target)
    else:
        target.write_bytes(b"not a library: loading it would crash")
        os.chmod(target, mode)
    if root and case != "own":
        os.chown(target if case == "other_file" else target.parent, 12345, -1)
try:
    c.build(verbose=False)
    print("BUILT")
except c.BuildError as exc:
    print("REFUSED", exc)
print("AVAILABLE", c.is_available())
"""


def _probe(tmp_path, mode: str, case: str) -> str:
    env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2", "MRCNN_OPS_CACHE": str(tmp_path / "ops")}
    proc = subprocess.run([sys.executable, "-c", _PROBE, mode, case],
                          capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_world_writable_library_is_refused(tmp_path):
    out = _probe(tmp_path, "666", "own")
    assert "REFUSED" in out and "group/world-writable (mode 666)" in out and "build-ops --force" in out
    assert "AVAILABLE False" in out  # the planted file was never loaded


def test_library_of_another_user_is_refused(tmp_path):
    out = _probe(tmp_path, "755", "other_file")
    assert "REFUSED" in out and f"not by you (uid {os.getuid()})" in out
    assert "AVAILABLE False" in out


def test_cache_folder_of_another_user_is_refused(tmp_path):
    out = _probe(tmp_path, "755", "other_dir")
    assert "REFUSED" in out and "is owned by uid" in out and "MRCNN_OPS_CACHE" in out
