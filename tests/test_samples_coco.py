"""COCO sample config, ImageNet backbone loading from .pth without torch, offline download errors."""

from __future__ import annotations

import importlib.util
import io
import os
import pickle
import urllib.error
import zipfile
from collections import OrderedDict

import numpy as np
import pytest

from mrcnn.checkpoint import imagenet as W
from samples.coco.coco import CocoConfig
from tests.pth_writer import write_pth


# ----- read_pth -------------------------------------------------------------------------------------
def test_read_pth_hand_written(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((3, 4)).astype(np.float32)
    state = {"a": a, "n": np.array(7, np.int64), "h": rng.standard_normal(5).astype(np.float16)}
    path = tmp_path / "x.pth"
    # "t" is a strided, offset view of a's storage: a[1:, ::2] -> offset 4, size (2, 2), stride (4, 2)
    write_pth(path, state, root="resnet_fake", views={"t": ("a", 4, (2, 2), (4, 2))})
    out = W.read_pth(path)
    assert set(out) == {"a", "n", "h", "t"}
    np.testing.assert_array_equal(out["a"], a)
    assert out["n"].shape == () and int(out["n"]) == 7 and out["n"].dtype == np.int64
    np.testing.assert_array_equal(out["h"], state["h"])
    np.testing.assert_array_equal(out["t"], a[1:, ::2])


def test_read_pth_refuses_code_and_bad_files(tmp_path):
    evil = tmp_path / "evil.pth"
    buf = io.BytesIO()
    buf.write(pickle.PROTO + b"\x02" + pickle.GLOBAL + b"os\nsystem\n" + pickle.MARK
              + pickle.BINUNICODE + (4).to_bytes(4, "little") + b"true" + pickle.TUPLE + pickle.REDUCE
              + pickle.STOP)
    with zipfile.ZipFile(evil, "w") as z:
        z.writestr("archive/data.pkl", buf.getvalue())
    with pytest.raises(pickle.UnpicklingError, match="os.system"):
        W.read_pth(evil)
    legacy = tmp_path / "legacy.pth"
    legacy.write_bytes(b"\x80\x02not a zip")
    with pytest.raises(ValueError, match="legacy"):
        W.read_pth(legacy)
    with pytest.raises(FileNotFoundError):
        W.read_pth(tmp_path / "missing.pth")


TORCH_SAVED = os.path.join(os.path.dirname(__file__), "fixtures", "torch_saved")


def test_read_pth_of_a_file_torch_wrote(tmp_path):
    """A state dict written by torch.save (torch 2.13, committed with the arrays it holds):
    strided views, 0-d, Parameter and float16 tensors read back without torch. Where torch
    is installed, a file written now is read back too."""
    out = W.read_pth(os.path.join(TORCH_SAVED, "state.pth"))
    with np.load(os.path.join(TORCH_SAVED, "state_expected.npz")) as want:
        assert list(out) == list(want.files)
        for k in want.files:
            assert out[k].dtype == want[k].dtype, k
            np.testing.assert_array_equal(out[k], want[k])
    if importlib.util.find_spec("torch") is None:
        return
    import torch

    state = OrderedDict(
        w=torch.randn(4, 3, 3, 3), b=torch.tensor(5), v=torch.arange(12.0).reshape(3, 4).t()[1:],
        p=torch.nn.Parameter(torch.ones(2)), h=torch.randn(3).half(),
    )
    torch.save(state, tmp_path / "t.pth")
    out = W.read_pth(tmp_path / "t.pth")
    for k, v in state.items():
        np.testing.assert_array_equal(out[k], v.detach().numpy())


# ----- name mapping + loading ---------------------------------------------------------------------
def torchvision_resnet_state(arch: str, base: int, rng) -> dict[str, np.ndarray]:
    """Random state_dict with torchvision's key names and OIHW shapes (written independently of
    the Keras model) for a ResNet with stem width ``base``."""
    kind, depths = {"resnet18": ("basic", (2, 2, 2, 2)), "resnet50": ("bottleneck", (3, 4, 6, 3))}[arch]
    state: dict[str, np.ndarray] = {}

    def conv(name, o, i, k):
        state[f"{name}.weight"] = rng.standard_normal((o, i, k, k)).astype(np.float32)

    def bn(name, c):
        state[f"{name}.weight"] = rng.uniform(0.5, 2, c).astype(np.float32)
        state[f"{name}.bias"] = rng.standard_normal(c).astype(np.float32)
        state[f"{name}.running_mean"] = rng.standard_normal(c).astype(np.float32)
        state[f"{name}.running_var"] = rng.uniform(0.5, 2, c).astype(np.float32)
        state[f"{name}.num_batches_tracked"] = np.array(100, np.int64)

    conv("conv1", base, 3, 7)
    bn("bn1", base)
    cin = base
    expansion = 1 if kind == "basic" else 4
    for i, depth in enumerate(depths):
        planes = base * 2**i
        for b in range(depth):
            p = f"layer{i + 1}.{b}"
            if kind == "basic":
                conv(f"{p}.conv1", planes, cin, 3), bn(f"{p}.bn1", planes)
                conv(f"{p}.conv2", planes, planes, 3), bn(f"{p}.bn2", planes)
            else:
                conv(f"{p}.conv1", planes, cin, 1), bn(f"{p}.bn1", planes)
                conv(f"{p}.conv2", planes, planes, 3), bn(f"{p}.bn2", planes)
                conv(f"{p}.conv3", planes * 4, planes, 1), bn(f"{p}.bn3", planes * 4)
            if b == 0 and (i > 0 or cin != planes * expansion):
                conv(f"{p}.downsample.0", planes * expansion, cin, 1)
                bn(f"{p}.downsample.1", planes * expansion)
            cin = planes * expansion
    state["fc.weight"] = rng.standard_normal((10, cin)).astype(np.float32)
    state["fc.bias"] = np.zeros(10, np.float32)
    return state


def _resnet(arch, base, norm="frozen_bn"):
    import tensorflow as tf

    from mrcnn.layers.backbone import ResNet

    net = ResNet(arch, norm=norm, base_width=base, gn_groups=4)
    net(tf.zeros([1, 64, 64, 3]))
    return net


def test_name_mapping_examples():
    assert W.torchvision_to_keras_name("conv1.weight") == ("conv1_conv", "kernel")
    assert W.torchvision_to_keras_name("bn1.running_var") == ("conv1_norm", "moving_variance")
    assert W.torchvision_to_keras_name("layer3.5.conv2.weight") == ("layer3_5_2_conv", "kernel")
    assert W.torchvision_to_keras_name("layer1.0.bn3.bias") == ("layer1_0_3_norm", "beta")
    assert W.torchvision_to_keras_name("backbone.body.layer2.0.downsample.0.weight") == (
        "layer2_0_downsample_conv", "kernel")
    assert W.torchvision_to_keras_name("module.layer4.0.downsample.1.weight") == (
        "layer4_0_downsample_norm", "gamma")
    assert W.torchvision_to_keras_name("fc.weight") is None
    assert W.torchvision_to_keras_name("layer1.0.bn1.num_batches_tracked") is None


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_load_imagenet_backbone_synthetic(tmp_path, arch):
    rng = np.random.default_rng(1)
    state = torchvision_resnet_state(arch, 8, rng)
    path = tmp_path / f"{arch}.pth"
    write_pth(path, state)
    net = _resnet(arch, 8)
    report = W.load_imagenet_backbone(net, path)
    assert report["missing"] == []
    assert "fc.weight" in report["ignored"] and "bn1.num_batches_tracked" in report["ignored"]
    layers = {layer.name: layer for layer in net._flatten_layers(include_self=False)}
    checked = 0
    for key, value in state.items():
        target = W.torchvision_to_keras_name(key)
        if target is None:
            continue
        name, field = target
        got = np.asarray(getattr(layers[name], field))
        want = value.transpose(2, 3, 1, 0) if field == "kernel" else value
        np.testing.assert_array_equal(got, want, err_msg=key)
        checked += 1
    assert checked == report["loaded"] == sum(W.torchvision_to_keras_name(k) is not None for k in state)


def test_load_imagenet_backbone_errors(tmp_path):
    rng = np.random.default_rng(2)
    state = torchvision_resnet_state("resnet18", 8, rng)
    path = tmp_path / "r18.pth"
    write_pth(path, state)
    with pytest.raises(ValueError, match="conv1.weight"):  # width 16 network, width 8 file
        W.load_imagenet_backbone(_resnet("resnet18", 16), path)
    with pytest.raises(ValueError, match="GroupNorm"):
        W.load_imagenet_backbone(_resnet("resnet18", 8, norm="gn"), path)
    del state["layer4.1.conv2.weight"]
    partial = tmp_path / "partial.pth"
    write_pth(partial, state)
    with pytest.raises(ValueError, match="layer4_1_2_conv.kernel"):
        W.load_imagenet_backbone(_resnet("resnet18", 8), partial)
    with pytest.raises(ValueError, match="not supported"):
        W.load_imagenet_backbone(_resnet("resnet18", 8), tmp_path / "resnet50_weights.h5")


# ----- download -----------------------------------------------------------------------------------
def test_download_fails_clearly_without_network(tmp_path, monkeypatch):
    calls = []

    def offline(url, timeout=None):
        calls.append(url)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr("urllib.request.urlopen", offline)
    dest = tmp_path / "w" / "resnet50.pth"
    with pytest.raises(W.ImageNetWeightsUnavailable) as info:
        W.download_imagenet_weights("resnet50", dest)
    message = str(info.value)
    assert calls == [W.TORCHVISION_URLS["resnet50"]]
    assert W.TORCHVISION_URLS["resnet50"] in message and str(dest) in message
    assert "internet" in message and "--imagenet-weights" in message
    assert not dest.exists() and not dest.with_name(dest.name + ".part").exists()
    with pytest.raises(ValueError, match="resnet50"):
        W.download_imagenet_weights("vgg16", dest)


def test_download_returns_existing_file_without_network(tmp_path, monkeypatch):
    def no_network(*a, **k):
        raise AssertionError("must not touch the network")

    monkeypatch.setattr("urllib.request.urlopen", no_network)
    dest = tmp_path / "r.pth"
    dest.write_bytes(b"x")
    assert W.download_imagenet_weights("resnet50", dest) == dest


def test_download_checks_hash(tmp_path, monkeypatch):
    class Response(io.BytesIO):
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr("urllib.request.urlopen", lambda url, timeout=None: Response(b"not the weights"))
    with pytest.raises(ValueError, match="SHA-256"):
        W.download_imagenet_weights("resnet18", tmp_path / "r18.pth")
    assert not (tmp_path / "r18.pth").exists()


# ----- COCO sample ----------------------------------------------------------------------------------
def test_coco_config_is_the_1x_schedule():
    from mrcnn.solver.optimizer import make_schedule

    c = CocoConfig()
    assert c.BATCH_SIZE == 16 and c.LEARNING_RATE == 0.02 and c.effective_lr() == pytest.approx(0.02)
    assert make_schedule(c).steps == (60000, 80000) and c.TOTAL_STEPS == 90000
    assert (c.IMAGE_MAX_DIM, c.IMAGE_RESIZE_MODE) == (1333, "pad32")
    assert tuple(c.IMAGE_MIN_DIM) == (640, 672, 704, 736, 768, 800)  # Detectron2 MIN_SIZE_TRAIN
    assert c.BACKBONE_NORM == "frozen_bn" and c.FREEZE_BACKBONE_STAGES == 2 and c.NUM_CLASSES == 81
    assert c.OPTIMIZER == "sgd" and c.WEIGHT_DECAY == 1e-4 and c.WEIGHT_DECAY_NORM == 0
    small = c.for_batch_size(2, 1)
    assert small.BATCH_SIZE == 2 and small.effective_lr() == pytest.approx(0.0025)
    assert make_schedule(small).steps == (480000, 640000) and small.TOTAL_STEPS == 720000
    assert small.WARMUP_STEPS == 8000 and small.STEPS_PER_EPOCH == 8000
    assert float(make_schedule(small)(500000)) == pytest.approx(0.00025)


def test_coco_train_without_weights_or_network_says_what_to_do(tmp_path, monkeypatch, capsys):
    import json

    from samples.coco import coco

    def offline(url, timeout=None):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr("urllib.request.urlopen", offline)
    monkeypatch.setattr(W, "DEFAULT_CACHE_DIR", tmp_path / "cache")
    ann = tmp_path / "a.json"
    ann.write_text(json.dumps({"images": [], "annotations": [], "categories": [{"id": 1, "name": "x"}]}))
    with pytest.raises(SystemExit) as info:
        coco.main(["train", "--annotations", str(ann), "--images", str(tmp_path), "--out", str(tmp_path / "o")])
    message = str(info.value.code)  # SystemExit(message): Python prints it and exits with 1
    assert info.value.code not in (0, None)
    assert "download.pytorch.org" in message and "--imagenet-weights" in message
    assert str(tmp_path / "cache") in message
