"""The shared checkpoint reader (mrcnn/checkpoints.py) on crafted and valid files, without torch.

A crafted ``.pth`` must raise a ValueError naming the key and never read out of
bounds: the loads run in a subprocess whose exit status and stderr are checked,
so a segfault (or an out-of-bounds read that happens to succeed) fails the test.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pickle
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from mrcnn.checkpoint import foreign as C
from tests.pth_writer import write_pth

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Run in a fresh interpreter: read the file, print {"ok": ...} or {"error": type, "message": ...}.
_PROBE = """
import json, sys
from mrcnn.checkpoint.foreign import read_checkpoint
try:
    state = read_checkpoint(sys.argv[1])
    print(json.dumps({"ok": {k: [list(v.shape), float(abs(v).sum())] for k, v in state.items()}}))
except ValueError as exc:
    print(json.dumps({"error": type(exc).__name__, "message": str(exc)}))
"""


def _probe(path) -> dict:
    env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run([sys.executable, "-c", _PROBE, str(path)], capture_output=True, text=True,
                          timeout=120, env=env, cwd=ROOT)
    # A negative return code is a signal (-11: SIGSEGV): the reader must never get there.
    assert proc.returncode == 0, f"reader exited with {proc.returncode}: {proc.stderr[-2000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _state(rng):
    return {"conv.weight": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
            "conv.bias": rng.standard_normal(4).astype(np.float32)}


def test_valid_file_reads_exactly_in_a_subprocess(tmp_path):
    state = _state(np.random.default_rng(0))
    path = tmp_path / "ok.pth"
    write_pth(path, state, wrap="model")
    result = _probe(path)
    assert result["ok"]["conv.weight"][0] == [4, 3, 3, 3]
    assert result["ok"]["conv.weight"][1] == pytest.approx(float(np.abs(state["conv.weight"]).sum()), rel=1e-6)
    read = C.read_checkpoint(path)
    for k, v in state.items():
        np.testing.assert_array_equal(read[k], v)


@pytest.mark.parametrize("case, views, declared, needle", [
    # A 1e6-element view over a 4-element storage: as_strided would read ~4 MB past the buffer.
    ("larger_than_storage", {"evil.weight": ("conv.bias", 0, (1000, 1000), (1000, 1))}, None,
     "larger than its storage"),
    # In bounds by size but pushed past the end by its offset.
    ("offset_past_end", {"evil.weight": ("conv.bias", 3, (2,), (1,))}, None, "larger than its storage"),
    # A stride that walks out of the storage.
    ("stride_out", {"evil.weight": ("conv.bias", 0, (2, 2), (1, 100))}, None, "larger than its storage"),
    ("negative_stride", {"evil.weight": ("conv.bias", 0, (2,), (-1,))}, None, "non-negative"),
    ("negative_offset", {"evil.weight": ("conv.bias", -8, (2,), (1,))}, None, "non-negative"),
    ("size_stride_rank", {"evil.weight": ("conv.bias", 0, (2, 2), (1,))}, None, "do not match"),
    # Broadcast view (stride 0): more elements than the storage holds.
    ("broadcast", {"evil.weight": ("conv.bias", 0, (10**6,), (0,))}, None, "overlapping"),
    # The pickle claims a bigger storage than the archive member holds.
    ("storage_larger_than_member", None, {"conv.bias": 10**7}, "holds 16 bytes"),
])
def test_crafted_pth_raises_value_error_naming_the_key(tmp_path, case, views, declared, needle):
    state = _state(np.random.default_rng(1))
    path = tmp_path / f"{case}.pth"
    write_pth(path, state, views=views, declared_numel=declared)
    result = _probe(path)
    assert result.get("error") == "CheckpointError", result
    key = "evil.weight" if views else "conv.bias"
    assert repr(key) in result["message"] and needle in result["message"], result["message"]
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        C.read_pth(path)


def test_member_missing_and_unknown_persistent_id(tmp_path):
    path = tmp_path / "x.pth"
    write_pth(path, _state(np.random.default_rng(2)))
    torn = tmp_path / "torn.pth"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(torn, "w") as dst:
        for info in src.infolist():
            if not info.filename.endswith("data/1"):
                dst.writestr(info, src.read(info))
    with pytest.raises(ValueError, match=r"'conv\.bias'.*missing"):
        C.read_pth(torn)


def test_zip_refused_by_the_reader_is_not_retried_with_torch(tmp_path, monkeypatch):
    """A refused file never reaches torch.load (no fallback for zip files or plain pickles)."""
    if importlib.util.find_spec("torch") is not None:
        import torch

        def forbidden(*a, **k):
            raise AssertionError("torch.load must not be called")

        monkeypatch.setattr(torch, "load", forbidden)
    evil = tmp_path / "evil.pth"
    payload = (pickle.PROTO + b"\x02" + pickle.GLOBAL + b"os\nsystem\n" + pickle.MARK
               + pickle.BINUNICODE + (4).to_bytes(4, "little") + b"true" + pickle.TUPLE + pickle.REDUCE
               + pickle.STOP)
    with zipfile.ZipFile(evil, "w") as z:
        z.writestr("archive/data.pkl", payload)
    with pytest.raises(C.CheckpointError, match="os.system"):
        C.read_checkpoint(evil)
    plain = tmp_path / "evil.pkl"  # the same pickle outside a zip: refused by the NumPy reader alone
    plain.write_bytes(payload)
    with pytest.raises(C.CheckpointError, match="refusing to load global os.system"):
        C.read_checkpoint(plain)


def test_legacy_format_needs_torch_2_6(tmp_path, monkeypatch):
    legacy = tmp_path / "legacy.pth"
    # What torch < 1.6 wrote first: pickle.dump(0x1950a86a20f9469cfc6c, f, protocol=2).
    legacy.write_bytes(pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2) + b"rest of a legacy file")
    assert C.is_legacy_torch(str(legacy))
    if importlib.util.find_spec("torch") is None:
        with pytest.raises(C.CheckpointError, match="torch >= 2.6"):
            C.read_checkpoint(legacy)
        return
    import torch

    calls = []
    monkeypatch.setattr(torch, "__version__", "2.5.1+cpu")
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(k) or {})
    with pytest.raises(C.CheckpointError, match=r"torch >= 2\.6 \(installed: 2\.5\.1"):
        C.read_checkpoint(legacy)
    assert calls == []
    monkeypatch.setattr(torch, "__version__", "2.6.0")
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(k) or {"w": np.ones(2, np.float32)})
    assert list(C.read_checkpoint(legacy)) == ["w"]
    assert calls == [{"map_location": "cpu", "weights_only": True}]


def test_key_map_is_one_map_both_ways():
    """source_to_keras_name inverts backbone_key for every layer of ResNet-50 and both sources."""
    layers = ["conv1_conv", "conv1_norm"]
    for stage, depth in enumerate((3, 4, 6, 3), start=1):
        for b in range(depth):
            layers += [f"layer{stage}_{b}_{k}_{t}" for k in (1, 2, 3) for t in ("conv", "norm")]
        layers += [f"layer{stage}_0_downsample_conv", f"layer{stage}_0_downsample_norm"]
    count = 0
    for source in C.SOURCES:
        for layer in layers:
            prefix = C.backbone_key(layer, source)
            fields = ["kernel"] if layer.endswith("conv") else [k for _, k in C.NORM_FIELDS]
            for field in fields:
                key = f"{prefix}.{C.backbone_field(layer, field)}"
                assert C.source_to_keras_name(key, source) == (layer, field), key
                assert C.source_to_keras_name(C.BACKBONE_PREFIX[source] + key, source) == (layer, field)
                count += 1
    assert count == 2 * (5 + 16 * 15 + 4 * 5)  # stem + 16 bottlenecks (3 convs, 3 norms) + 4 shortcuts
    assert C.backbone_key("layer3_5_2_conv", "detectron2") == "res4.5.conv2"
    assert C.backbone_key("layer1_0_downsample_norm", "detectron2") == "res2.0.shortcut.norm"
    assert C.source_to_keras_name("layer1.0.bn1.num_batches_tracked") is None
    assert C.source_to_keras_name("fc.weight") is None
    assert C.source_to_keras_name("layer1.0.conv1.bias") is None  # the convs have no bias
    assert C.detect_source({"backbone.bottom_up.res2.0.conv1.weight": 0}) == "detectron2"
    assert C.detect_source({"layer1.0.conv1.weight": 0}) == "torchvision"
