"""What a run tells its user (#22): a resumed `mrcnn train` with a changed config, the progress
bar, a finished plan run again, a non-finite stop with a plain fit, warm-up and frozen_bn
checks, and a run's own weight files as a start (`--init coco:FILE`)."""

import os
import sys

import numpy as np
import pytest

from mrcnn import MaskRCNN
from mrcnn.data.pipeline import build_dataset
from mrcnn.data.synthetic import ShapesDataset
from mrcnn.engine import default_callbacks
from mrcnn.engine.callbacks import FitStartCheck, NonFiniteGuard

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CONFIG = f'''
import sys
sys.path.insert(0, {TESTS!r})
from conftest import TinyConfig


class RunConfig(TinyConfig):
    IMAGE_MIN_DIM = 64
    IMAGE_MAX_DIM = 64
    WARMUP_STEPS = 1
    CHECKPOINT_MONITOR = None


class Changed(RunConfig):
    LEARNING_RATE = 0.01
'''


def _shapes(n=4):
    ds = ShapesDataset()
    ds.load_shapes(n, height=64, width=64, seed=2)
    return ds


@pytest.fixture
def cfg(tmp_path):
    path = tmp_path / "runcfg.py"
    path.write_text(CONFIG)
    return str(path)


def _train(cfg, out, cls="RunConfig", *extra):
    from mrcnn import cli

    return cli.main(["train", "--config", f"{cfg}:{cls}", "--dataset", "shapes", "--train-images", "4",
                     "--val-images", "1", "--out", str(out), "--steps-per-epoch", "2", "--check", "none",
                     "--seed", "1", *extra])


@pytest.mark.slow
def test_train_progress_bar_changed_config_and_a_finished_plan(tmp_path, cfg, capsys):
    out = tmp_path / "run"
    assert _train(cfg, out, "RunConfig", "--epochs", "1") == 0
    printed = capsys.readouterr().out
    assert "2/2" in printed and "/step" in printed  # Keras' per-step progress bar (--verbose 1)

    # Resuming with another config is refused, naming each change, until --force.
    assert _train(cfg, out, "Changed", "--epochs", "2") == 2
    err = capsys.readouterr().err
    assert "LEARNING_RATE: 0.02 -> 0.01" in err and "--force" in err
    assert '"LEARNING_RATE": 0.02' in (out / "config.json").read_text()  # untouched
    assert _train(cfg, out, "Changed", "--epochs", "2", "--force", "--verbose", "2") == 0
    printed = capsys.readouterr().out
    assert "resuming with a changed configuration: LEARNING_RATE: 0.02 -> 0.01" in printed
    assert "at global step 2" in printed
    assert '"LEARNING_RATE": 0.01' in (out / "config.json").read_text()

    # The finished plan: says so and how to go on.
    assert _train(cfg, out, "Changed", "--epochs", "2") == 0
    printed = capsys.readouterr().out
    assert "already completed 2 epochs" in printed and "more --epochs to continue" in printed

    # Final weights and epoch checkpoints hold no optimizer state, and both are a start.
    import h5py

    from mrcnn.checkpoint import pretrained

    sys.path.insert(0, str(tmp_path))
    from runcfg import Changed

    for name in ("final.weights.h5", os.path.join("checkpoints", "epoch_001.weights.h5")):
        path = out / name
        with h5py.File(path, "r") as f:
            assert "optimizer" not in f and "backbone" in f
        model = MaskRCNN(Changed())
        report = pretrained.initialize(model, f"coco:{path}")
        assert len(report.loaded) > 50, report.summary()
        reference = MaskRCNN(Changed())
        reference.load_weights(str(path))
        np.testing.assert_array_equal(model.backbone.get_weights()[0], reference.backbone.get_weights()[0])
    with h5py.File(out / "backup" / sorted(os.listdir(out / "backup"))[-1].replace(".json", ".weights.h5")) as f:
        assert "optimizer" in f  # the resume state stays in the backups


@pytest.mark.slow
def test_plain_fit_nonfinite_stop_leaves_the_model_at_the_last_backup(tmp_path, tiny_config, capsys):
    config = tiny_config(IMAGE_MIN_DIM=64, IMAGE_MAX_DIM=64, LEARNING_RATE=1e4, LR_REFERENCE_BATCH=None,
                         WARMUP_STEPS=0, GRADIENT_CLIP_NORM=None, BACKUP_EVERY_STEPS=1)
    model = MaskRCNN(config)
    model.compile()
    callbacks = default_callbacks(tmp_path / "run", config=config, tensorboard=False)
    model.fit(build_dataset(_shapes(), config, training=True, seed=3, run_dir=tmp_path / "run"), epochs=2,
              steps_per_epoch=5, callbacks=callbacks, verbose=0)
    guard = next(c for c in callbacks if isinstance(c, NonFiniteGuard))
    assert guard.halted
    assert "the model in memory is back at the last finite weights (the backup of global step" in guard.message
    assert all(np.isfinite(v.numpy()).all() for v in model.trainable_variables)


def test_fit_start_warns_on_a_warmup_longer_than_the_plan_and_on_frozen_bn_without_weights(tiny_config):
    config = tiny_config(IMAGE_MIN_DIM=64, IMAGE_MAX_DIM=64, BACKBONE_NORM="frozen_bn", WARMUP_STEPS=1000)
    model = MaskRCNN(config)
    check = FitStartCheck(config, steps_per_epoch=40, epochs=3)
    check.set_model(model)
    with pytest.warns(UserWarning) as caught:
        check.on_train_begin()
    messages = [str(w.message) for w in caught]
    assert any("WARMUP_STEPS=1000) is longer than the planned run (120 steps)" in m for m in messages)
    assert any("BACKBONE_NORM='frozen_bn' but no weights were loaded" in m for m in messages)
    # Loaded statistics (any non-initial value) silence the frozen_bn warning.
    for layer in model._flatten_layers():
        if type(layer).__name__ == "FrozenBatchNorm":
            layer.moving_mean.assign(layer.moving_mean.numpy() + 0.5)
    quiet = FitStartCheck(tiny_config(IMAGE_MIN_DIM=64, IMAGE_MAX_DIM=64, BACKBONE_NORM="frozen_bn",
                                      WARMUP_STEPS=10), steps_per_epoch=40, epochs=3)
    quiet.set_model(model)
    quiet.on_train_begin()
    assert quiet.warnings == []


def test_evaluation_writes_detection_pictures_to_tensorboard(tmp_path, tiny_config):
    import io

    import tensorflow as tf
    from PIL import Image

    from mrcnn.engine.callbacks import CocoEvaluationCallback

    config = tiny_config(IMAGE_MIN_DIM=64, IMAGE_MAX_DIM=64, DETECTION_MIN_CONFIDENCE=0.0)
    model = MaskRCNN(config)
    evaluation = CocoEvaluationCallback(_shapes(2), log_dir=tmp_path / "logs", images=2, image_min_score=0.0)
    evaluation.set_model(model)
    logs = {}
    evaluation.on_epoch_end(0, logs)
    evaluation.on_train_end()
    assert "val_segm_AP" in logs
    pictures = []
    for name in os.listdir(tmp_path / "logs"):
        for event in tf.compat.v1.train.summary_iterator(str(tmp_path / "logs" / name)):
            for value in event.summary.value:
                if value.tag == "val_detections":
                    assert value.metadata.plugin_data.plugin_name == "images"
                    pictures = tf.make_ndarray(value.tensor)
    assert len(pictures) == 2 + 2 and pictures[:2].tolist() == [b"64", b"64"]
    first = np.asarray(Image.open(io.BytesIO(pictures[2])))
    assert first.shape == (64, 64, 3)
    # Detections are drawn (score >= 0: every slot of a random model): the picture is not the image.
    assert not np.array_equal(first, _shapes(2).load_image(0))
