"""Pretrained starts (mrcnn/pretrained.py, ``mrcnn train --init``) with generated checkpoints only.

No download, no network, no torch: the torchvision-format ``.pth`` files are
written by tests/pth_writer.py, the Detectron2 ``.pkl`` with pickle, the
``.weights.h5`` by this project. Every check compares weights exactly:
fine-tuning to another NUM_CLASSES must load every other weight bit for bit
and leave the class-specific predictors at their initial values.
"""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from mrcnn.checkpoint import pretrained
from mrcnn.checkpoint.convert import class_specific_layers, component, convert_state_dict
from mrcnn.checkpoint.foreign import conv_kernel
from mrcnn.config import Config
from mrcnn.configs import TorchvisionCOCO
from mrcnn.model import MaskRCNN
from tests.checkpoint.test_convert import (
    SMALL,
    detectron2_from_torchvision,
    small_config,
    torchvision_state_dict,
)
from tests.conftest import TinyConfig
from tests.pth_writer import write_pth


def _values(model) -> dict[str, np.ndarray]:
    return {v.path: np.array(v.numpy()) for v in model.weights}


def _predictor_paths(model) -> set[str]:
    return {v.path for layers in class_specific_layers(model).values() for layer in layers for v in layer.weights}


def _check_fine_tuned(model, before, reference, report):
    """Everything but the predictors equals ``reference``; the predictors equal ``before``."""
    after = _values(model)
    predictors = _predictor_paths(model)
    assert len(predictors) == 6  # cls_score, bbox_pred, mask logits: kernel + bias each
    assert set(report.reinitialised) == predictors
    assert set(report.loaded) == set(after) - predictors
    for path, value in after.items():
        if path in predictors:
            np.testing.assert_array_equal(value, before[path], err_msg=path)
        else:
            np.testing.assert_array_equal(value, reference[path], err_msg=path)
    text = report.summary()
    assert f"loaded {len(after) - 6} weights" in text and "re-initialised 6 weights" in text
    assert all(p in text for p in predictors)


@pytest.mark.parametrize("source", ["torchvision", "detectron2"])
def test_coco_start_with_other_classes_loads_all_but_the_predictors(tmp_path, source):
    tv = torchvision_state_dict(np.random.default_rng(3), num_classes=7)  # a "COCO" model with 7 classes
    state = tv if source == "torchvision" else detectron2_from_torchvision(tv)
    # The reference: the same checkpoint converted strictly into a 7-class model.
    reference_model = MaskRCNN(small_config(source).__class__(**{**SMALL, "NUM_CLASSES": 7}))
    convert_state_dict(reference_model, state, source)
    reference = _values(reference_model)

    if source == "torchvision":
        path = tmp_path / "coco.pth"
        write_pth(path, state, wrap="model")
    else:
        path = tmp_path / "model_final.pkl"
        with open(path, "wb") as f:
            pickle.dump({"model": state, "__author__": "test"}, f, protocol=2)
    model = MaskRCNN(small_config(source))  # 5 classes
    before = _values(model)
    report = pretrained.initialize(model, f"coco:{path}")
    assert report.source == source and report.kind == "coco"
    _check_fine_tuned(model, before, reference, report)
    assert any("box predictor re-initialised" in n for n in report.notes)
    assert report.frozen_stages == 2  # the preset's explicit value


def test_coco_start_with_same_classes_loads_everything(tmp_path):
    state = torchvision_state_dict(np.random.default_rng(4), num_classes=5)
    path = tmp_path / "coco.pth"
    write_pth(path, state)
    model = MaskRCNN(small_config("torchvision"))
    report = pretrained.initialize(model, f"coco:{path}")
    assert report.reinitialised == [] and len(report.loaded) == len(model.weights)
    reference = MaskRCNN(small_config("torchvision"))
    convert_state_dict(reference, state, "torchvision")
    got = _values(model)
    for path_, value in _values(reference).items():
        np.testing.assert_array_equal(got[path_], value, err_msg=path_)


def test_coco_start_still_strict_outside_the_predictors(tmp_path):
    state = torchvision_state_dict(np.random.default_rng(5), num_classes=7, fc=16)  # fc6/fc7 width differs
    path = tmp_path / "coco.pth"
    write_pth(path, state)
    model = MaskRCNN(small_config("torchvision"))
    before = _values(model)
    with pytest.raises(ValueError, match=r"roi_heads\.box_head\.fc6\.weight"):
        pretrained.initialize(model, f"coco:{path}")
    for p, v in _values(model).items():  # nothing assigned
        np.testing.assert_array_equal(v, before[p], err_msg=p)


def test_coco_start_from_weights_h5(tmp_path):
    source_model = MaskRCNN(TinyConfig(NUM_CLASSES=6))
    for i, v in enumerate(source_model.weights):  # distinct values, so a mix-up cannot pass
        v.assign(np.random.default_rng(i).normal(size=v.shape).astype(np.float32))
    path = tmp_path / "coco.weights.h5"
    source_model.save_weights(str(path))
    model = MaskRCNN(TinyConfig(NUM_CLASSES=3))
    before = _values(model)
    report = pretrained.initialize(model, f"coco:{path}")
    assert report.source == "keras"
    _check_fine_tuned(model, before, _values(source_model), report)
    assert report.frozen_stages == 2  # FREEZE_BACKBONE_STAGES=None with a pretrained start
    backbone = component(model, "backbone")
    assert not backbone.stem.trainable and all(not b.trainable for b in backbone.stages[0])
    assert all(b.trainable for b in backbone.stages[1])


def test_imagenet_start_from_torchvision_classification_checkpoint(tmp_path):
    full = torchvision_state_dict(np.random.default_rng(6))
    prefix = "backbone.body."
    state = {k[len(prefix):]: v for k, v in full.items() if k.startswith(prefix)}
    state["fc.weight"] = np.ones((10, 256), np.float32)  # ImageNet classifier: ignored
    state["fc.bias"] = np.zeros(10, np.float32)
    path = tmp_path / "resnet50-fake.pth"
    write_pth(path, state)
    config = TorchvisionCOCO(**{**SMALL, "FREEZE_BACKBONE_STAGES": None})
    config = pretrained.config_for_start(config, f"imagenet:{path}")
    assert config.FREEZE_BACKBONE_STAGES == 2
    model = MaskRCNN(config)
    before = _values(model)
    report = pretrained.initialize(model, f"imagenet:{path}")
    backbone = component(model, "backbone")
    backbone_paths = {v.path for v in backbone.weights}
    assert set(report.loaded) == backbone_paths
    assert set(report.reinitialised) == set(before) - backbone_paths
    layers = {layer.name: layer for layer in backbone._flatten_layers(include_self=False)}
    np.testing.assert_array_equal(np.asarray(layers["conv1_conv"].kernel), conv_kernel(state["conv1.weight"]))
    np.testing.assert_array_equal(np.asarray(layers["layer3_2_2_norm"].moving_variance),
                                  state["layer3.2.bn2.running_var"])
    for p, v in _values(model).items():
        if p not in backbone_paths:
            np.testing.assert_array_equal(v, before[p], err_msg=p)
    assert not backbone.stem.trainable and not any(b.trainable for b in backbone.stages[0])
    assert all(b.trainable for b in backbone.stages[1])


def test_frozen_bn_without_weights_is_refused_with_the_fix():
    with pytest.raises(ValueError) as info:
        pretrained.config_for_start(Config(BACKBONE_NORM="frozen_bn"), "none")
    message = str(info.value)
    assert "frozen_bn" in message and "--init imagenet:FILE" in message and "'gn'" in message
    model = MaskRCNN(small_config("torchvision"))
    with pytest.raises(ValueError, match="BACKBONE_NORM='gn'"):
        pretrained.initialize(model, "none")
    # With loaded weights, or another norm, it is fine; from scratch nothing is frozen.
    assert pretrained.config_for_start(Config(BACKBONE_NORM="frozen_bn"), None, weights_loaded=True)
    assert pretrained.config_for_start(Config(BACKBONE_NORM="gn"), "none").FREEZE_BACKBONE_STAGES == 0
    assert pretrained.config_for_start(Config(FREEZE_BACKBONE_STAGES=3), f"imagenet:{__file__}"
                                       ).FREEZE_BACKBONE_STAGES == 3  # an explicit value is kept
    with pytest.raises(ValueError, match="imagenet:FILE, coco:FILE or none"):
        pretrained.parse_init("cityscapes:x.pth")


def test_cli_train_refuses_frozen_bn_and_reports_a_coco_start(tmp_path, capsys):
    from mrcnn.cli import main

    frozen = tmp_path / "frozen.json"
    frozen.write_text(TinyConfig(BACKBONE_NORM="frozen_bn").to_json())
    code = main(["train", "--config", str(frozen), "--dataset", "shapes", "--train-images", "2",
                 "--val-images", "1", "--out", str(tmp_path / "refused"), "--epochs", "1", "--check", "none"])
    assert code == 2
    assert "frozen_bn" in capsys.readouterr().err

    source_model = MaskRCNN(TinyConfig(NUM_CLASSES=6))
    weights = tmp_path / "coco.weights.h5"
    source_model.save_weights(str(weights))
    config = tmp_path / "config.json"
    config.write_text(TinyConfig(STEPS_PER_EPOCH=1).to_json())
    out = tmp_path / "run"
    code = main(["train", "--config", str(config), "--dataset", "shapes", "--train-images", "2",
                 "--val-images", "1", "--out", str(out), "--epochs", "1", "--check", "none",
                 "--init", f"coco:{weights}"])
    assert code == 0
    printed = capsys.readouterr().out
    assert f"start: coco weights from {weights} (keras format)" in printed
    assert "re-initialised 6 weights" in printed and "cls_score" in printed
    assert json.loads((out / "config.json").read_text())["FREEZE_BACKBONE_STAGES"] == 2


def _caffe2_names(d2: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Detectron2 backbone names -> the MSRA/Caffe2 blob names of ``ImageNetPretrained/MSRA/R-50.pkl``
    (written out here independently of the library's converter); no running statistics."""
    out = {}
    for key, value in d2.items():
        if not key.startswith("backbone.bottom_up.") or "running_" in key:
            continue
        k = key[len("backbone.bottom_up."):]
        k = {"stem.conv1.weight": "conv1_w", "stem.conv1.norm.weight": "res_conv1_bn_s",
             "stem.conv1.norm.bias": "res_conv1_bn_b"}.get(k, k)
        for torch_name, c2 in (("conv1", "branch2a"), ("conv2", "branch2b"), ("conv3", "branch2c"),
                               ("shortcut", "branch1")):
            k = k.replace(f".{torch_name}.norm.weight", f"_{c2}_bn_s").replace(f".{torch_name}.norm.bias", f"_{c2}_bn_b")
            k = k.replace(f".{torch_name}.weight", f"_{c2}_w")
        out[k.replace(".", "_")] = value
    return out


def test_imagenet_start_from_detectron2_msra_caffe2_pkl(tmp_path):
    from mrcnn.configs import Detectron2COCO
    from mrcnn.layers.norm import BN_EPSILON

    d2 = detectron2_from_torchvision(torchvision_state_dict(np.random.default_rng(7)))
    blobs = _caffe2_names(d2)
    assert "res3_0_branch2b_bn_s" in blobs and "res5_0_branch1_w" in blobs and "res_conv1_bn_b" in blobs
    blobs["res2_0_branch2a_w_momentum"] = np.zeros(1, np.float32)  # optimizer state, dropped
    blobs["fc1000_w"] = np.zeros((10, 256), np.float32)
    path = tmp_path / "R-50.pkl"
    with open(path, "wb") as f:
        pickle.dump({"blobs": blobs}, f, protocol=2)
    model = MaskRCNN(Detectron2COCO(**{**SMALL, "FREEZE_BACKBONE_STAGES": None}))
    report = pretrained.initialize(model, f"imagenet:{path}")
    assert report.source == "detectron2" and report.frozen_stages == 2
    layers = {layer.name: layer for layer in component(model, "backbone")._flatten_layers(include_self=False)}
    assert len(report.loaded) == len(component(model, "backbone").weights)
    np.testing.assert_array_equal(np.asarray(layers["conv1_conv"].kernel), conv_kernel(blobs["conv1_w"]))
    np.testing.assert_array_equal(np.asarray(layers["layer4_0_downsample_conv"].kernel),
                                  conv_kernel(blobs["res5_0_branch1_w"]))
    norm = layers["layer2_0_2_norm"]  # res3.0.conv2.norm
    np.testing.assert_array_equal(np.asarray(norm.gamma), blobs["res3_0_branch2b_bn_s"])
    np.testing.assert_array_equal(np.asarray(norm.moving_mean), 0.0)
    # The folded scale comes out as the file's: gamma / sqrt(var + eps) == gamma.
    scale = np.asarray(norm.gamma) / np.sqrt(np.asarray(norm.moving_variance) + BN_EPSILON)
    np.testing.assert_allclose(scale, blobs["res3_0_branch2b_bn_s"], rtol=1e-6)


class _KeypointConfig(TinyConfig):
    NAME = "kp"
    NUM_CLASSES = 2
    NUM_KEYPOINTS = 7
    KEYPOINT_HEAD_CONV_CHANNELS = 16
    KEYPOINT_HEAD_NUM_CONVS = 1


def _randomised(model):
    for i, v in enumerate(model.weights):
        v.assign(np.random.default_rng(100 + i).normal(size=v.shape).astype(np.float32))
    return model


def test_keypoint_logits_reinitialised_only_when_the_counts_differ(tmp_path):
    source = _randomised(MaskRCNN(_KeypointConfig()))
    path = tmp_path / "kp7.weights.h5"
    source.save_weights(str(path))
    model = MaskRCNN(_KeypointConfig(NUM_KEYPOINTS=5))
    before, want = _values(model), _values(source)
    report = pretrained.initialize(model, f"coco:{path}")
    logits = {v.path for v in component(model, "keypoint_head").deconv.weights}
    assert set(report.reinitialised) == logits and len(logits) == 2
    for p, v in _values(model).items():
        np.testing.assert_array_equal(v, before[p] if p in logits else want[p], err_msg=p)
    # Same count: everything loads.
    same = MaskRCNN(_KeypointConfig())
    assert pretrained.initialize(same, f"coco:{path}").reinitialised == []


def test_keypoint_head_missing_from_the_file_keeps_its_initialisation(tmp_path):
    source = _randomised(MaskRCNN(_KeypointConfig(NUM_KEYPOINTS=0)))  # an instance-segmentation model
    path = tmp_path / "mask.weights.h5"
    source.save_weights(str(path))
    model = MaskRCNN(_KeypointConfig())
    before, want = _values(model), _values(source)
    report = pretrained.initialize(model, f"coco:{path}")
    head = {v.path for v in component(model, "keypoint_head").weights}
    assert set(report.reinitialised) == head and any("keypoint_head" in n for n in report.notes)
    for p, v in _values(model).items():
        np.testing.assert_array_equal(v, before[p] if p in head else want[p], err_msg=p)
