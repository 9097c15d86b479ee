"""matterport's own Keras 2 ``.h5`` weights give matterport's numbers here (issue #25, items 2-3).

The reference is matterport/Mask_RCNN's ``model.py`` itself, run on TF 2.21 with tf-keras by
``scripts/record_matterport_fixtures.py`` (tests/fixtures/matterport/README.md): a ResNet-50
model with seeded random weights, 4 classes, 256x256 inputs, on two tiny_coco photos (a
landscape and a portrait one, so the image sits in the middle of matterport's square with
padding above and below, or left and right). The weight file itself (180 MB) is rebuilt by
``tests.matterport_reference.write_keras2_h5`` in tf-keras' layout; no tf-keras here.

Measured 2026-12-07 (2-core x86 CPU), largest differences over both photos: FPN maps 2.4e-5
(of values up to 11), anchors 1.2e-7 (normalised), RPN foreground probabilities 7.4e-6, RPN
deltas 2.6e-5, the 200 proposals 6.3e-7 (normalised), class probabilities 1.1e-5, box deltas
7.3e-5; detections: the same 13 and 14, boxes 1.1e-6 (normalised), scores 4.5e-6, masks
2.7e-5; matterport's ``detect()`` through a matterport script: the same integer boxes, class
ids and every mask pixel, scores 4.8e-6.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from mrcnn.checkpoint.foreign import CheckpointError
from mrcnn.config import Config
from mrcnn.configs import MatterportConfig, has_matterport_architecture
from tests import matterport_reference as ref

PHOTOS = ("000000391895", "000000483108")
# matterport's exclude list in samples/balloon/balloon.py (--weights=coco).
BALLOON_EXCLUDE = ["mrcnn_class_logits", "mrcnn_bbox_fc", "mrcnn_bbox", "mrcnn_mask"]


class ParityConfig(MatterportConfig):
    """The recorded model (manifest.json "config"): matterport's defaults but these."""

    NAME = "parity"
    BACKBONE = "resnet50"
    NUM_CLASSES = 4
    IMAGES_PER_GPU = 1
    IMAGE_MIN_DIM = 256
    IMAGE_MAX_DIM = 256
    POST_NMS_ROIS_INFERENCE = 200
    DETECTION_MAX_INSTANCES = 20
    DETECTION_MIN_CONFIDENCE = 0.35


class ScriptConfig(Config):
    """The same model as a matterport script writes its Config: on mrcnn.config.Config, with
    matterport's field names, everything else left at the defaults."""

    NAME = "parity"
    BACKBONE = "resnet50"
    NUM_CLASSES = 4
    IMAGES_PER_GPU = 1
    GPU_COUNT = 1
    IMAGE_MIN_DIM = 256
    IMAGE_MAX_DIM = 256
    POST_NMS_ROIS_INFERENCE = 200
    DETECTION_MAX_INSTANCES = 20
    DETECTION_MIN_CONFIDENCE = 0.35


@pytest.fixture(scope="module")
def weights_h5(tmp_path_factory):
    return ref.write_keras2_h5(str(tmp_path_factory.mktemp("matterport") / "mask_rcnn_parity.h5"))


@pytest.fixture(scope="module")
def model(weights_h5):
    from mrcnn import MaskRCNN
    from mrcnn.checkpoint.matterport import load_weights

    m = MaskRCNN(ParityConfig())
    report = load_weights(m, weights_h5, by_name=False)
    assert len(report.loaded) == len(m.weights) and not report.missing
    return m


def _photo(name: str) -> dict:
    with np.load(f"{ref.FIXTURE_DIR}/{name}.npz") as f:
        return {k: f[k] for k in f.files}


def _reference_masks(f: dict) -> np.ndarray:
    shape = tuple(f["masks_shape"])
    return np.unpackbits(f["masks_packed"])[: int(np.prod(shape))].reshape(shape).astype(bool)


@pytest.mark.parametrize("name", PHOTOS)
def test_every_stage_computes_what_matterport_computes(model, name):
    f = _photo(name)
    mean = np.array(ParityConfig.MEAN_PIXEL, np.float32)
    images = tf.constant((f["molded_image"] + mean)[None])  # matterport's molded image, 0-255 again
    canvas = tf.constant([[256, 256]])
    span = 255.0  # matterport's normalised frame is ours / (256 - 1)

    features = model.features(images, canvas)
    for level, p in enumerate(features, start=2):
        np.testing.assert_allclose(p.numpy()[0, ..., :8], f[f"P{level}"], atol=1e-4, err_msg=f"P{level}")
    anchors = model.anchor_generator(images, features)
    np.testing.assert_allclose(tf.concat(anchors, 0).numpy() / span, f["anchors"], atol=1e-6)
    logits, deltas = model.rpn.head(features)
    foreground = tf.sigmoid(tf.concat(logits, 1)).numpy()[0]
    np.testing.assert_allclose(foreground, f["rpn_class"][:, 1], atol=5e-5)
    np.testing.assert_allclose(tf.concat(deltas, 1).numpy()[0], f["rpn_bbox"], atol=2e-4)
    proposals, valid, _ = model.rpn(features, anchors, canvas - 1)
    assert int(valid.numpy().sum()) == 200
    np.testing.assert_allclose(proposals.numpy()[0] / span, f["rpn_rois"], atol=1e-5)
    class_logits, box_deltas = model.roi_heads.box_forward(features, proposals)
    np.testing.assert_allclose(tf.nn.softmax(class_logits).numpy()[0], f["mrcnn_class"], atol=1e-4)
    np.testing.assert_allclose(box_deltas.numpy()[0], f["mrcnn_bbox"], atol=5e-4)

    # Detections, with the image where matterport put it (centred on the square).
    y1, x1, y2, x2 = f["window"]
    out = model({"images": images, "image_sizes": tf.constant([[y2 - y1, x2 - x1]]),
                 "image_offsets": tf.constant([[y1, x1]])})
    expected = f["mrcnn_detection"]
    n = int(out["num_detections"][0])
    assert n == int((expected[:, 4] > 0).sum()) >= 10
    boxes = (out["boxes"].numpy()[0, :n] - [0, 0, 1, 1]) / span  # the output's pixel-edge frame
    np.testing.assert_allclose(boxes, expected[:n, :4], atol=1e-5)
    np.testing.assert_array_equal(out["class_ids"].numpy()[0, :n], expected[:n, 4].astype(int))
    np.testing.assert_allclose(out["scores"].numpy()[0, :n], expected[:n, 5], atol=5e-5)
    masks = np.stack([f["mrcnn_mask"][i, :, :, c] for i, c in enumerate(expected[:n, 4].astype(int))])
    np.testing.assert_allclose(out["masks"].numpy()[0, :n], masks, atol=2e-4)


def test_a_matterport_script_gets_matterports_detections(weights_h5, capsys):
    """``MaskRCNN(mode="inference", config=<a Config written for matterport>)``, then
    ``load_weights(<matterport .h5>, by_name=True)`` and ``detect([image])``: what matterport's
    ``detect()`` returned for the same file."""
    from mrcnn import model as modellib

    script = modellib.MaskRCNN(mode="inference", config=ScriptConfig(), model_dir="unused")
    assert not has_matterport_architecture(script.config)
    report = script.load_weights(weights_h5, by_name=True)
    assert "using matterport's architecture" in capsys.readouterr().out
    assert has_matterport_architecture(script.config) and script.config.NAME == "parity"
    assert script.config.DETECTION_NMS_THRESHOLD == 0.3  # matterport's default, not this Config's 0.5
    assert len(report.loaded) == len(script.keras_model.weights)
    for name in PHOTOS:
        f = _photo(name)
        result = script.detect([f["image"]])[0]
        expected_masks = _reference_masks(f)
        molded, metas, windows = script.mold_inputs([f["image"]])  # matterport's molding, 0-255
        np.testing.assert_allclose(molded[0] - np.array(ParityConfig.MEAN_PIXEL), f["molded_image"], atol=1e-4)
        np.testing.assert_array_equal(windows[0], f["window"])
        print(f"{name}: {len(result['rois'])} detections (matterport {len(f['rois'])}); "
              f"largest box difference {np.abs(result['rois'] - f['rois']).max()} px; mask pixels that differ "
              f"{int((result['masks'] != expected_masks).sum())} of {int(expected_masks.sum())}")
        assert len(result["rois"]) == len(f["rois"])
        assert np.abs(result["rois"] - f["rois"]).max() <= 1
        np.testing.assert_array_equal(result["class_ids"], f["class_ids"])
        np.testing.assert_allclose(result["scores"], f["scores"], atol=5e-5)
        assert result["masks"].shape == expected_masks.shape
        assert (result["masks"] != expected_masks).sum() <= 0.005 * expected_masks.sum()


def test_balloon_exclude_list_fine_tunes_other_classes(weights_h5, model):
    """balloon.py's ``--weights=coco`` form: another NUM_CLASSES loads everything but the class
    layers it excludes; without the exclude the class layer is a one-line error naming it."""
    import keras

    from mrcnn import MaskRCNN
    from mrcnn import model as modellib
    from mrcnn.configs import with_matterport_architecture

    class TwoClasses(ScriptConfig):
        NUM_CLASSES = 2

    script = modellib.MaskRCNN(mode="training", config=TwoClasses(), model_dir="unused")
    before = script.keras_model
    with pytest.raises(CheckpointError, match=r"layer mrcnn_class_logits gives .*exclude=\['mrcnn_class_logits'\]"):
        script.load_weights(weights_h5, by_name=True)
    assert script.keras_model is before and not has_matterport_architecture(script.config)  # a failed load
    # The same seed builds the same initial weights: those the load must leave as they are.
    keras.utils.set_random_seed(11)
    initial = {v.path: v.numpy() for v in MaskRCNN(with_matterport_architecture(TwoClasses())).weights}
    keras.utils.set_random_seed(11)
    report = script.load_weights(weights_h5, by_name=True, exclude=BALLOON_EXCLUDE)
    assert sorted(report.excluded) == sorted(
        f"roi_heads/{p}" for p in ("box_head/cls_score/kernel", "box_head/cls_score/bias", "box_head/bbox_pred/kernel",
                                   "box_head/bbox_pred/bias", "mask_head/mask_fcn_logits/kernel",
                                   "mask_head/mask_fcn_logits/bias"))
    assert len(report.loaded) == len(script.keras_model.weights) - 6
    full = {v.path: v.numpy() for v in model.weights}
    for v in script.keras_model.weights:
        if v.path in report.excluded:
            np.testing.assert_array_equal(v.numpy(), initial[v.path])  # kept at its initial value
        else:
            np.testing.assert_array_equal(v.numpy(), full[v.path])


def test_convert_weights_cli_writes_the_same_model(weights_h5, model, tmp_path):
    from mrcnn import MaskRCNN
    from mrcnn.cli import main

    out = tmp_path / "parity.weights.h5"
    assert main(["convert-weights", "--from", "matterport", weights_h5, "--out", str(out)]) == 0
    converted = MaskRCNN(ParityConfig())
    converted.load_weights(str(out))
    for a, b in zip(converted.weights, model.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)


def test_a_torn_file_and_a_missing_layer_are_errors(weights_h5, tmp_path):
    import h5py

    from mrcnn import MaskRCNN
    from mrcnn.checkpoint.matterport import load_weights

    torn = tmp_path / "torn.h5"
    with h5py.File(weights_h5, "r") as src, h5py.File(torn, "w") as dst:
        for key, value in src.attrs.items():
            dst.attrs[key] = value
        for name in list(src.keys())[:50]:  # the file stops a quarter of the way in
            src.copy(name, dst)
    m = MaskRCNN(ParityConfig())
    with pytest.raises(CheckpointError, match=r"torn\.h5: layer .* is listed in the file's layer_names but its "
                                              r"weights are not there"):
        load_weights(m, str(torn), by_name=True)
    short = tmp_path / "short.h5"
    with h5py.File(weights_h5, "r") as src, h5py.File(short, "w") as dst:
        names = [n for n in ref.load_manifest()["layer_names"] if n != "mrcnn_mask"]
        dst.attrs["layer_names"] = [n.encode() for n in names]
        for key in ("backend", "keras_version"):
            dst.attrs[key] = src.attrs[key]
        for name in names + ["top_level_model_weights"]:
            src.copy(name, dst)
    with pytest.raises(CheckpointError, match=r"short\.h5: 2 weight\(s\) of this model are not in the file.*"
                                              r"mask_fcn_logits"):
        load_weights(m, str(short), by_name=False)
    report = load_weights(m, str(short), by_name=True)
    assert report.missing == ["roi_heads/mask_head/mask_fcn_logits/kernel", "roi_heads/mask_head/mask_fcn_logits/bias"]


@pytest.mark.slow
def test_matterports_architecture_trains(tiny_config):
    """Fine-tuning in matterport's frame (anchors and targets one pixel in, crop_and_resize
    pooling, argmax detection) learns: one shapes picture overfitted in 300 steps is detected
    with its classes and masks, by this project's ``detect()`` and by matterport's."""
    import keras

    from mrcnn import MaskRCNN
    from mrcnn.compat.matterport import matterport_detect
    from mrcnn.configs import with_matterport_architecture
    from mrcnn.data import build_dataset
    from mrcnn.data.synthetic import ShapesDataset

    config = with_matterport_architecture(tiny_config(
        IMAGES_PER_GPU=1, TRAIN_FLIP_PROB=0.0, WARMUP_STEPS=10, LR_STEPS=(220,), DETECTION_MIN_CONFIDENCE=0.5))
    assert has_matterport_architecture(config) and config.BACKBONE == "resnet18" and config.STD_PIXEL == (1, 1, 1)
    keras.utils.set_random_seed(3)
    ds = ShapesDataset()
    ds.load_shapes(1, seed=5)
    masks, class_ids = ds.load_mask(0)
    model = MaskRCNN(config)
    model.compile()
    first = model.evaluate(build_dataset(ds, config, training=False), steps=1, verbose=0, return_dict=True)
    model.fit(build_dataset(ds, config, training=True, seed=0), epochs=1, steps_per_epoch=300, verbose=0)
    last = model.evaluate(build_dataset(ds, config, training=False), steps=1, verbose=0, return_dict=True)
    print(f"loss {first['loss']:.3f} -> {last['loss']:.3f}")
    assert last["loss"] < 0.25 * first["loss"], (first, last)
    image = ds.load_image(0)
    for result in (model.detect([image])[0], matterport_detect(model, image)):
        for i, cls in enumerate(class_ids):
            ious = [(masks[..., i] & result["masks"][..., j]).sum() / (masks[..., i] | result["masks"][..., j]).sum()
                    for j in range(len(result["scores"]))]
            best = int(np.argmax(ious))
            assert ious[best] > 0.7 and result["class_ids"][best] == cls, (i, ious)


def test_balloon_py_splash_with_matterport_coco_weights(weights_h5, tmp_path, monkeypatch):
    """balloon.py's ``--weights=coco`` path, unchanged: its own InferenceConfig form (on its
    BalloonConfig), ``load_weights(COCO_WEIGHTS_PATH, by_name=True, exclude=[...])`` of a
    matterport file, and its ``detect_and_color_splash``."""
    import argparse
    import glob
    import importlib.util
    import os

    import skimage.io

    from mrcnn import model as modellib

    spec = importlib.util.spec_from_file_location(
        "matterport_balloon_coco", os.path.join(os.path.dirname(__file__), "matterport_samples", "balloon.py"))
    balloon = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(balloon)

    class InferenceConfig(balloon.BalloonConfig):
        GPU_COUNT = 1
        IMAGES_PER_GPU = 1
        # The fixture's network (matterport's mask_rcnn_coco.h5 is its default ResNet-101).
        BACKBONE = "resnet50"
        IMAGE_MIN_DIM = 256
        IMAGE_MAX_DIM = 256
        DETECTION_MIN_CONFIDENCE = 0.3

    image_path = str(tmp_path / "photo.png")
    skimage.io.imsave(image_path, _photo(PHOTOS[0])["image"])
    balloon.config = InferenceConfig()
    balloon.args = argparse.Namespace(image=image_path, video=None, logs=str(tmp_path / "logs"))
    model = modellib.MaskRCNN(mode="inference", config=balloon.config, model_dir=str(tmp_path / "logs"))
    model.load_weights(weights_h5, by_name=True, exclude=BALLOON_EXCLUDE)
    assert has_matterport_architecture(model.config) and model.config.NUM_CLASSES == 2
    monkeypatch.chdir(tmp_path)
    balloon.detect_and_color_splash(model, image_path=image_path)
    (splash_path,) = glob.glob(str(tmp_path / "splash_*.png"))
    image = skimage.io.imread(image_path)
    result = model.detect([image])[0]
    print(f"balloon splash: {len(result['class_ids'])} detections")
    np.testing.assert_array_equal(skimage.io.imread(splash_path), balloon.color_splash(image, result["masks"]))


def test_saved_model_export_of_matterports_model(model, tmp_path):
    """A matterport model exports as a SavedModel (CropAndResize is a stock op) giving
    ``detect()``'s detections; the runtime formats, which cannot carry CropAndResize, are a
    one-line error."""
    from mrcnn.export import saved_model as export
    from mrcnn.export.graph import export_config
    from tests.export.test_export import assert_parity

    with pytest.raises(ValueError, match=r"ROI_POOLER='crop_and_resize'.*onnx export cannot carry.*saved_model"):
        export_config(model.config, "onnx")
    path = export.export_saved_model(model, tmp_path / "model")
    serving = tf.saved_model.load(path).signatures[export.SIGNATURE_IMAGE]
    image = _photo(PHOTOS[1])["image"]
    out = {f"p/{k}": v.numpy() for k, v in serving(input_tensor=tf.constant(image[None])).items()}
    expected = model.detect([image])[0]
    assert len(expected["scores"]) >= 5
    assert_parity(out, "p", 0, image, expected, model.config)
