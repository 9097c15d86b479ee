"""matterport's ``modellib.MaskRCNN(mode=..., config=..., model_dir=...)`` (#25): the dispatch,
``load_weights(by_name, exclude)`` and its errors, ``find_last``, ``set_trainable`` presets,
``mold_inputs``, the mode checks, and a resumed ``train`` in matterport's run folder."""

from __future__ import annotations

import glob
import os
import time
import warnings

import h5py
import numpy as np
import pytest
from conftest import TinyConfig

from mrcnn import model as modellib
from mrcnn.checkpoint.foreign import CheckpointError
from mrcnn.compat.matterport import MatterportMaskRCNN
from mrcnn.engine import matterport as runs

HEAD_NAMES = ["mrcnn_class_logits", "mrcnn_bbox_fc", "mrcnn_bbox", "mrcnn_mask"]


class ThreeClasses(TinyConfig):
    NAME = "three"
    NUM_CLASSES = 3


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    """A TinyConfig model (4 classes) and its saved weights."""
    model = modellib.MaskRCNN(TinyConfig())
    path = str(tmp_path_factory.mktemp("w") / "tiny.weights.h5")
    model.save_weights(path)
    return model, path


@pytest.fixture(scope="module")
def inference(tmp_path_factory):
    return modellib.MaskRCNN(mode="inference", config=ThreeClasses(),
                             model_dir=str(tmp_path_factory.mktemp("logs")))


def test_matterport_form_dispatches_and_config_form_is_unchanged(tmp_path, tiny_weights):
    model, _ = tiny_weights
    assert type(model) is modellib.MaskRCNN
    by_keyword = modellib.MaskRCNN(mode="training", config=TinyConfig(), model_dir=str(tmp_path))
    by_position = modellib.MaskRCNN("inference", TinyConfig(), str(tmp_path))
    assert isinstance(by_keyword, MatterportMaskRCNN) and by_keyword.mode == "training"
    assert isinstance(by_position, MatterportMaskRCNN) and by_position.mode == "inference"
    assert type(by_keyword.keras_model) is modellib.MaskRCNN
    assert by_keyword.log_dir.startswith(os.path.join(str(tmp_path), "tiny20"))
    with pytest.raises(ValueError, match="mode must be 'training' or 'inference'"):
        modellib.MaskRCNN(mode="train", config=TinyConfig(), model_dir=str(tmp_path))
    with pytest.raises(RuntimeError, match="inference mode"):
        by_keyword.detect([np.zeros((64, 64, 3), np.uint8)])
    with pytest.raises(RuntimeError, match="training mode"):
        by_position.train(None, None, 0.001, 1, "heads")


def test_load_by_name_with_matterports_exclude_list(inference, tiny_weights):
    source, path = tiny_weights
    target = inference.keras_model
    # Other NUM_CLASSES: without exclude the class-specific layers do not fit.
    with pytest.raises(CheckpointError, match=r"cls_score/kernel is \(64, 4\) in the file.*exclude=\['cls_score'\]"):
        inference.load_weights(path, by_name=True)
    report = inference.load_weights(path, by_name=True, exclude=HEAD_NAMES)
    src = {v.path: v.numpy() for v in source.weights}
    heads = ("roi_heads/box_head/cls_score/", "roi_heads/box_head/bbox_pred/", "roi_heads/mask_head/mask_fcn_logits/")
    assert sorted(report.excluded) == sorted(v.path for v in target.weights if v.path.startswith(heads))
    assert len(report.excluded) == 6 and len(report.loaded) == len(target.weights) - 6
    for v in target.weights:
        if not v.path.startswith(heads):
            np.testing.assert_array_equal(v.numpy(), src[v.path])


def test_load_weights_that_match_nothing_is_an_error(inference, tmp_path):
    unrelated = tmp_path / "other.h5"
    with h5py.File(unrelated, "w") as f:
        f["dense/kernel"] = np.zeros((3, 3))
    with pytest.raises(CheckpointError, match=r"other\.h5: no weight of this model matches.*0 of \d+.*dense/kernel"):
        inference.load_weights(str(unrelated), by_name=True)


def test_keras2_and_missing_weights_are_errors(inference, tmp_path):
    keras2 = tmp_path / "mask_rcnn_coco.h5"
    with h5py.File(keras2, "w") as f:
        f.attrs["layer_names"] = [b"conv1", b"bn_conv1"]
        f.attrs["keras_version"] = b"2.2.4"
    with pytest.raises(CheckpointError, match=r"mask_rcnn_coco\.h5: layer 'conv1' is listed .* not there"):
        inference.load_weights(str(keras2), by_name=True)
    with pytest.raises(FileNotFoundError, match="nothing.h5"):
        inference.load_weights(str(tmp_path / "nothing.h5"))


def test_by_name_false_needs_every_weight(tmp_path):
    source = modellib.MaskRCNN(ThreeClasses(MASK_HEAD_NUM_CONVS=1))
    path = str(tmp_path / "short.weights.h5")
    source.save_weights(path)
    target = modellib.MaskRCNN(mode="inference", config=ThreeClasses(), model_dir=str(tmp_path))
    with pytest.raises(CheckpointError, match=r"2 weight\(s\) of this model are not in the file.*mask_fcn2"):
        target.load_weights(path)
    report = target.load_weights(path, by_name=True)
    assert sorted(report.missing) == ["roi_heads/mask_head/mask_fcn2/bias", "roi_heads/mask_head/mask_fcn2/kernel"]


def test_find_last_sees_matterport_and_project_run_folders(tmp_path):
    config = ThreeClasses()
    with pytest.raises(FileNotFoundError, match="Could not find weight files"):
        runs.find_last(tmp_path, config)
    old = tmp_path / "three20240101T0000" / "mask_rcnn_three_0003.h5"
    old.parent.mkdir()
    old.write_bytes(b"x")
    project = tmp_path / "my_run" / "checkpoints" / "epoch_002.weights.h5"
    project.parent.mkdir(parents=True)
    project.write_bytes(b"x")
    other_name = tmp_path / "shapes20990101T0000" / "mask_rcnn_shapes_0009.h5"
    other_name.parent.mkdir()
    other_name.write_bytes(b"x")
    now = time.time()
    os.utime(old, (now - 100, now - 100))
    os.utime(project, (now - 50, now - 50))
    os.utime(other_name, (now, now))  # another NAME's run is not this config's
    assert runs.find_last(tmp_path, config) == str(project)
    os.utime(old, (now + 10, now + 10))
    assert runs.find_last(tmp_path, config) == str(old)
    assert runs.epoch_of(old, config) == (str(old.parent), 3)
    assert runs.epoch_of(project, config) is None


def test_set_trainable_presets_and_regex(inference):
    model = inference.keras_model

    def trainable_stages():
        return {v.path.split("/")[1] if v.path.startswith("backbone/") else v.path.split("/")[0]
                for v in model.trainable_weights}

    inference.set_trainable("heads", verbose=0)
    assert trainable_stages() == {"fpn", "rpn", "roi_heads"}
    inference.set_trainable("4+", verbose=0)
    assert {s for s in trainable_stages() if s.startswith("layer")} == {"layer3_0", "layer3_1", "layer4_0", "layer4_1"}
    inference.set_trainable("all", verbose=0)
    assert len(model.trainable_weights) == len([v for v in model.weights if v.trainable])
    assert "conv1" in trainable_stages()
    inference.set_trainable(r"roi_heads/mask_head/.*", verbose=0)
    assert {v.path.split("/")[1] for v in model.trainable_weights} == {"mask_head"}
    with pytest.raises(ValueError, match="selects no layer"):
        inference.set_trainable("mrcnn_.*", verbose=0)
    inference.set_trainable("all", verbose=0)


def test_mold_inputs_and_detect(inference):
    images = [np.zeros((100, 80, 3), np.uint8), np.zeros((60, 128, 3), np.uint8)]
    molded, metas, windows = inference.mold_inputs(images)
    assert molded.shape == (2, 128, 128, 3)
    assert windows.tolist() == [[0, 0, 128, 102], [0, 0, 60, 128]]
    assert metas.shape == (2, 12 + 3)
    np.testing.assert_allclose(metas[0, :12], [0, 100, 80, 3, 128, 128, 3, 0, 0, 128, 102, 1.28])
    results = inference.detect(images)
    assert [r["masks"].shape[:2] for r in results] == [(100, 80), (60, 128)]


def test_learning_rate_note_names_both_rules():
    per16 = TinyConfig(LR_REFERENCE_BATCH=16)  # the project's default rule
    assert runs.learning_rate_note(per16, 0.001) is None  # a number of the script's own
    note = runs.learning_rate_note(per16, per16.LEARNING_RATE)
    assert "as given" in note and "meant for 16 images" in note and "0.0025" in note
    assert runs.learning_rate_note(TinyConfig(), TinyConfig().LEARNING_RATE) is None  # LR_REFERENCE_BATCH None


class QuickConfig(TinyConfig):
    NAME = "quick"
    IMAGES_PER_GPU = 1
    STEPS_PER_EPOCH = 2
    VALIDATION_STEPS = 1
    LEARNING_RATE = 0.001
    BACKUP_EVERY_STEPS = 0
    TRAIN_ROIS_PER_IMAGE = 32
    TRAINING_CONV_ALGORITHM = "direct"


@pytest.mark.slow
def test_train_then_resume_from_last_in_the_same_run_folder(tmp_path):
    from mrcnn.data.synthetic import ShapesDataset

    train = ShapesDataset()
    train.load_shapes(4, seed=1)
    train.prepare()
    model = modellib.MaskRCNN(mode="training", config=QuickConfig(), model_dir=str(tmp_path))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.train(train, train, learning_rate=QuickConfig.LEARNING_RATE, epochs=1, layers="heads")
    assert not [w for w in caught if "learning_rate" in str(w.message)]  # TinyConfig: LR_REFERENCE_BATCH None
    run = model.log_dir
    assert sorted(os.listdir(run)) == ["engine", "mask_rcnn_quick_0001.h5"]
    assert model.epoch == 1

    # A new process: `--weights=last`, then train to epoch 2 with all layers.
    again = modellib.MaskRCNN(mode="training", config=QuickConfig(), model_dir=str(tmp_path))
    again.load_weights(again.find_last(), by_name=True)
    assert (again.log_dir, again.epoch) == (run, 1)
    backbone_before = again.keras_model.backbone.weights[0].numpy().copy()
    again.train(train, train, learning_rate=0.0005, epochs=2, layers="all")
    assert sorted(glob.glob(os.path.join(run, "mask_rcnn_quick_*.h5"))) == [
        os.path.join(run, "mask_rcnn_quick_0001.h5"), os.path.join(run, "mask_rcnn_quick_0002.h5")]
    assert not np.array_equal(backbone_before, again.keras_model.backbone.weights[0].numpy())
    assert sorted(os.listdir(os.path.join(run, "engine"))) == ["all-to-0002", "heads-to-0001"]
    # The same call once more has nothing to do.
    again.train(train, train, learning_rate=0.0005, epochs=2, layers="all")
    assert again.epoch == 2


def test_get_imagenet_weights_offline_names_the_url(inference, tmp_path, monkeypatch):
    import urllib.error

    from mrcnn.checkpoint import imagenet

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(imagenet, "DEFAULT_CACHE_DIR", tmp_path)
    monkeypatch.setattr("urllib.request.urlopen", offline)
    with pytest.raises(imagenet.ImageNetWeightsUnavailable, match=imagenet.TORCHVISION_URLS["resnet18"]):
        inference.get_imagenet_weights()
    cached = tmp_path / imagenet.TORCHVISION_URLS["resnet18"].rsplit("/", 1)[1]
    cached.write_bytes(b"x")  # a file put there by hand is used as is
    assert inference.get_imagenet_weights() == str(cached)
