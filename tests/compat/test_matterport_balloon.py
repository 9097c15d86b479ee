"""Done-when of #25: matterport's samples/balloon/balloon.py, unchanged (a copy with its MIT
license in matterport_samples/), trains the heads and writes a colour splash on a tiny
generated VIA dataset.

balloon.py is imported as a module, as its docstring offers ("import the module"), and its
own ``train(model)`` and ``detect_and_color_splash(model, ...)`` run against this package;
the test sets the module globals its ``__main__`` block would set (``args``, ``config``),
with a small subclass of its BalloonConfig so that its 30 epochs fit a 2-core CPU.
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import os
import warnings

import numpy as np
import pytest
from matterport_balloon_data import make_via_dataset

HERE = os.path.dirname(os.path.abspath(__file__))
BALLOON = os.path.join(HERE, "matterport_samples", "balloon.py")


@pytest.fixture(scope="module")
def balloon():
    spec = importlib.util.spec_from_file_location("matterport_balloon", BALLOON)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _small(base):
    class SmallBalloonConfig(base):
        # The network and the run shrunk to CPU-test size; everything else is balloon.py's.
        IMAGES_PER_GPU = 1
        STEPS_PER_EPOCH = 1
        VALIDATION_STEPS = 1
        BACKBONE = "resnet18"
        BACKBONE_NORM = "gn"
        BACKBONE_BASE_WIDTH = 16
        GROUP_NORM_GROUPS = 8
        FPN_CHANNELS = 32
        FPN_FC_LAYERS_SIZE = 64
        MASK_HEAD_CONV_CHANNELS = 32
        MASK_HEAD_NUM_CONVS = 2
        RPN_ANCHOR_SCALES = (16, 32, 64, 128, 256)
        IMAGE_MIN_DIM = 128
        IMAGE_MAX_DIM = 128
        TRAIN_ROIS_PER_IMAGE = 64
        BACKUP_EVERY_STEPS = 0
        TRAINING_CONV_ALGORITHM = "direct"
        # What docs/matterport.md tells a matterport user to set: matterport's rate per step
        # (train() uses it as given; no scaling by the batch) and its gradient clipping.
        LEARNING_RATE = 0.001
        LR_REFERENCE_BATCH = None
        GRADIENT_CLIP_NORM = 5.0

    return SmallBalloonConfig


@pytest.mark.slow
def test_balloon_py_unchanged_trains_heads_and_writes_a_splash(balloon, tmp_path, monkeypatch):
    from mrcnn import model as modellib

    data = tmp_path / "balloon"
    make_via_dataset(data)
    logs = tmp_path / "logs"
    config = _small(balloon.BalloonConfig)()
    balloon.config = config
    balloon.args = argparse.Namespace(dataset=str(data), logs=str(logs), image=None, video=None)

    model = modellib.MaskRCNN(mode="training", config=config, model_dir=str(logs))
    before = {v.path: np.array(v.numpy()) for v in model.keras_model.weights}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        balloon.train(model)
    assert not [w for w in caught if "learning_rate" in str(w.message)]  # the rate rule is settled

    # Heads trained, backbone untouched (layers='heads').
    after = {v.path: np.array(v.numpy()) for v in model.keras_model.weights}
    changed = {p for p in before if not np.array_equal(before[p], after[p])}
    assert not [p for p in changed if p.startswith("backbone/")]
    for stage in ("fpn/", "rpn/", "roi_heads/box_head/", "roi_heads/mask_head/"):
        assert any(p.startswith(stage) for p in changed), stage
    # matterport's checkpoints: <logs>/balloon<YYYYmmddTHHMM>/mask_rcnn_balloon_0001..0030.h5
    checkpoints = sorted(glob.glob(str(logs / "balloon2*" / "mask_rcnn_balloon_*.h5")))
    assert [os.path.basename(c) for c in checkpoints] == [f"mask_rcnn_balloon_{e:04d}.h5" for e in range(1, 31)]
    assert model.epoch == 30

    # Splash, as `balloon.py splash --weights=last --image=...` does it.
    class InferenceConfig(type(config)):
        GPU_COUNT = 1
        IMAGES_PER_GPU = 1

    infer = modellib.MaskRCNN(mode="inference", config=InferenceConfig(), model_dir=str(logs))
    last = infer.find_last()
    assert last == os.path.abspath(checkpoints[-1])
    report = infer.load_weights(last, by_name=True)
    assert len(report.loaded) == len(infer.keras_model.weights)
    for v in infer.keras_model.weights:
        np.testing.assert_array_equal(v.numpy(), after[v.path])

    image_path = str(data / "val" / "val_000.png")
    balloon.args.image = image_path
    monkeypatch.chdir(tmp_path)
    balloon.detect_and_color_splash(infer, image_path=image_path)
    (splash_path,) = glob.glob(str(tmp_path / "splash_*.png"))
    import skimage.io

    image = skimage.io.imread(image_path)
    splash = skimage.io.imread(splash_path)
    expected = balloon.color_splash(image, infer.detect([image])[0]["masks"])
    assert splash.shape == image.shape and splash.dtype == np.uint8
    np.testing.assert_array_equal(splash, expected)


def test_balloon_dataset_loads_via_polygons(balloon, tmp_path):
    written = make_via_dataset(tmp_path)
    ds = balloon.BalloonDataset()
    ds.load_balloon(str(tmp_path), "train")
    ds.prepare()
    assert ds.num_images == len(written["train"]) == 4  # the unannotated picture is skipped
    assert ds.class_names == ["BG", "balloon"]
    for image_id, item in zip(ds.image_ids, written["train"]):
        masks, class_ids = ds.load_mask(image_id)
        assert masks.dtype == bool and masks.shape == (96, 128, len(item["polygons"]))
        assert class_ids.tolist() == [1] * len(item["polygons"])
        assert ds.image_reference(image_id).endswith(item["filename"])
        assert ds.load_image(image_id).shape == (96, 128, 3)
        # The red balloon pixels are the mask (up to the polygon's outline).
        red = (ds.load_image(image_id) == (220, 30, 40)).all(-1)
        iou = (red & masks.any(-1)).sum() / (red | masks.any(-1)).sum()
        assert iou > 0.85


@pytest.mark.slow
def test_balloon_py_command_line_splash_unchanged(balloon, tmp_path):
    """`python3 balloon.py splash --weights=FILE --image=IMG`, the script's own __main__, in a
    subprocess: its InferenceConfig (BalloonConfig's defaults, a ResNet-50 at 800/1333), its
    weight loading by name, its detect and splash."""
    import subprocess
    import sys

    from mrcnn.model import MaskRCNN

    class InferenceConfig(balloon.BalloonConfig):  # what balloon.py's __main__ builds for "splash"
        GPU_COUNT = 1
        IMAGES_PER_GPU = 1

    weights = tmp_path / "balloon.weights.h5"
    MaskRCNN(InferenceConfig()).save_weights(str(weights))
    make_via_dataset(tmp_path / "data", n_train=1, n_val=1)
    image = tmp_path / "data" / "val" / "val_000.png"
    repo = os.path.dirname(os.path.dirname(HERE))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run([sys.executable, BALLOON, "splash", f"--weights={weights}", f"--image={image}",
                          f"--logs={tmp_path / 'logs'}"], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=1200)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "DETECTION_MIN_CONFIDENCE" in run.stdout and "Saved to" in run.stdout  # config.display(), the end
    (splash,) = glob.glob(str(tmp_path / "splash_*.png"))
    import skimage.io

    assert skimage.io.imread(splash).shape == skimage.io.imread(str(image)).shape
